"""Decode graphs (worker/cpu_graph.py): replayed decode steps give exactly what eager steps give.

Each pair of engines below runs the same requests, once with graphs (the default) and once with
`enforce_eager=True`; the kernels are the same, so tokens and logprobs must be equal, not close. The requests
finish at different steps (batch sizes shrink), sample with seeds and ask for logprobs, so several batch sizes are
captured and replayed with moving block tables.
"""

from __future__ import annotations

import pathlib
import sys

import gguf
import pytest
import tokenizers
import transformers

from pagedserve import LLM, SamplingParams
from pagedserve.worker.cpu_graph import MAX_GRAPH_BATCH

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "unit" / "models"))
from test_model_gguf_moe import CONFIGS as MOE_CONFIGS  # noqa: E402
from test_model_gguf_moe import write_moe_gguf  # noqa: E402
from tiny_gguf_writer import TINY_TOKENS, write_tiny_gguf  # noqa: E402

pytestmark = pytest.mark.slow

PROMPTS = [
    "hello world",
    "the quick brown fox jumps over the lazy dog",
    "a b c d e f g h",
    "one",
    "lorem ipsum dolor sit amet, consectetur adipiscing elit",
    "zzz",
]


def _params() -> list[SamplingParams]:
    """Different lengths (the batch shrinks as requests finish), greedy and seeded sampling, logprobs."""
    params = []
    for i in range(len(PROMPTS)):
        if i % 2:
            params.append(
                SamplingParams(temperature=0.9, seed=i, max_tokens=6 + 5 * i, ignore_eos=True, logprobs=2)
            )
        else:
            params.append(SamplingParams(temperature=0.0, max_tokens=6 + 5 * i, ignore_eos=True, logprobs=3))
    return params


def _run(llm: LLM) -> list[tuple[list[int], list]]:
    outputs = llm.generate(PROMPTS, _params(), use_tqdm=False)
    return [(o.outputs[0].token_ids, o.outputs[0].logprobs) for o in outputs]


def _engines(path: pathlib.Path, **kwargs) -> tuple[LLM, LLM]:
    common = dict(dtype="float32", max_model_len=256, kv_cache_memory_bytes=8 * 1024**2, seed=0, **kwargs)
    return LLM(str(path), **common), LLM(str(path), enforce_eager=True, **common)


@pytest.fixture(scope="module")
def tiny_q4_1(tmp_path_factory) -> pathlib.Path:
    return write_tiny_gguf(
        tmp_path_factory.mktemp("graphs") / "q4_1.gguf", tensor_type=gguf.GGMLQuantizationType.Q4_1
    ).path


@pytest.fixture(scope="module")
def tiny_f32(tmp_path_factory) -> pathlib.Path:
    return write_tiny_gguf(
        tmp_path_factory.mktemp("graphs") / "f32.gguf", tensor_type=gguf.GGMLQuantizationType.F32
    ).path


@pytest.fixture(scope="module")
def tiny_qwen3_q4_1(tmp_path_factory) -> pathlib.Path:
    return write_tiny_gguf(
        tmp_path_factory.mktemp("graphs") / "qwen3.gguf", "qwen3", gguf.GGMLQuantizationType.Q4_1
    ).path


@pytest.fixture(scope="module")
def tiny_q4_k_m(tmp_path_factory) -> pathlib.Path:
    """llama.cpp's Q4_K_M mix: q|k|v and gate|up merged from parts of two types (Q4_K, Q6_K)."""
    q = gguf.GGMLQuantizationType
    overrides = {"blk.0.attn_v.weight": q.Q6_K, "blk.1.ffn_up.weight": q.Q6_K, "output.weight": q.Q6_K}
    return write_tiny_gguf(
        tmp_path_factory.mktemp("graphs") / "q4_k_m.gguf", tensor_type=q.Q4_K, tied=False, seed=5,
        type_overrides=overrides, hidden=256, ffn=512,
    ).path  # fmt: skip


@pytest.mark.parametrize("model", ["tiny_q4_1", "tiny_qwen3_q4_1", "tiny_q4_k_m"])
def test_gguf_blocks_replayed_equal_eager(model, request) -> None:
    """Qwen3 too: its q/k head norms are one in-place C call (csrc/layer_ops.c rms_norm_heads), so replayable.
    And a Q4_K_M file, whose merged layers multiply each part into its columns of one output (no concatenation)."""
    path = request.getfixturevalue(model)
    graphs, eager = _engines(path, quantization="gguf")
    assert eager.llm_engine.executor.runner.decode_graphs is None
    assert _run(graphs) == _run(eager)
    captured = graphs.llm_engine.executor.runner.decode_graphs.graphs
    # Every batch size from 6 sequences down to 1 was seen, and each was captured (GGUF GEMVs take <= 8 rows).
    assert sorted(captured) == [1, 2, 3, 4, 5, 6]
    assert all(graph is not None and len(graph.program) > 0 for graph in captured.values())
    # A second run replays every size (nothing new is captured) and still equals eager.
    assert _run(graphs) == _run(eager)


def test_graphs_of_growing_batches_share_one_arena(tiny_q4_1) -> None:
    """Batch sizes first seen in growing order: each larger graph grows the arena all graphs share and rebinds the
    smaller ones (their calls and their logits), which must still replay exactly what eager steps compute. The
    arena is the largest graph's plan, less than each graph's tensors kept one by one."""
    graphs, eager = _engines(tiny_q4_1, quantization="gguf")
    params = SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True, logprobs=2)
    for count in (1, 2, 4, 1, 2):
        got, expected = (llm.generate(PROMPTS[:count], params, use_tqdm=False) for llm in (graphs, eager))
        assert [(o.outputs[0].token_ids, o.outputs[0].logprobs) for o in got] == [
            (o.outputs[0].token_ids, o.outputs[0].logprobs) for o in expected
        ]
    decode_graphs = graphs.llm_engine.executor.runner.decode_graphs
    assert sorted(decode_graphs.graphs) == [1, 2, 4]
    plans = [graph.plan for graph in decode_graphs.graphs.values()]
    assert decode_graphs.arena.numel() == max(plan.size for plan in plans)
    assert all(plan.size < plan.allocated for plan in plans)


def test_batch_sizes_without_kernels_stay_eager(tiny_f32) -> None:
    """float32 weights: the C GEMV takes <= 4 rows; 5 and 6 sequences go through torch's GEMM, so those sizes
    must be refused at capture (and still compute the right thing)."""
    graphs, eager = _engines(tiny_f32, quantization="none")
    assert _run(graphs) == _run(eager)
    captured = graphs.llm_engine.executor.runner.decode_graphs.graphs
    assert {size for size, graph in captured.items() if graph is not None} == {1, 2, 3, 4}
    assert captured[5] is None and captured[6] is None
    assert max(captured) <= MAX_GRAPH_BATCH


def test_pytorch_attention_is_never_replayed(tiny_q4_1) -> None:
    """Attention through PyTorch (the backend's path where its kernels are not built): no graph is kept."""
    graphs, eager = _engines(tiny_q4_1, quantization="gguf")
    for engine in (graphs, eager):
        engine.llm_engine.executor.runner.model.model.layers[0].self_attn.backend.use_kernel = False
    assert _run(graphs) == _run(eager)
    assert set(graphs.llm_engine.executor.runner.decode_graphs.graphs.values()) == {None}


def test_preemption_and_prefix_hits_under_graphs(tiny_q4_1) -> None:
    """A KV cache too small for every sequence at once: sequences are preempted, recomputed and hit cached
    prefixes, so block tables change under the replayed graphs."""
    small = dict(quantization="gguf", enable_prefix_caching=True)
    graphs = LLM(str(tiny_q4_1), dtype="float32", max_model_len=256, kv_cache_memory_bytes=96 * 1024, **small)
    eager = LLM(
        str(tiny_q4_1), dtype="float32", max_model_len=256, kv_cache_memory_bytes=96 * 1024, enforce_eager=True,
        **small,
    )  # fmt: skip
    prompts = [p + " " + p for p in PROMPTS] * 2
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    got = [o.outputs[0].token_ids for o in graphs.generate(prompts, params, use_tqdm=False)]
    expected = [o.outputs[0].token_ids for o in eager.generate(prompts, params, use_tqdm=False)]
    assert got == expected
    assert graphs.llm_engine.scheduler.total_preemptions > 0


def test_tensor_parallel_ranks_replay_their_collectives(tiny_q4_1, capfd) -> None:
    """TP=2 on the CPU: each rank records its decode steps with the shared-memory all-reduces in them and replays
    them; tokens and logprobs equal the same group's eager steps exactly."""
    graphs, eager = _engines(tiny_q4_1, quantization="gguf", tensor_parallel_size=2)
    try:
        expected = _run(eager)
        assert _run(graphs) == expected
        assert _run(graphs) == expected  # every size replayed this time
    finally:
        graphs.llm_engine.shutdown()
        eager.llm_engine.shutdown()
    logs = capfd.readouterr().err
    for rank in (0, 1):
        captured = {b for b in range(1, 7) if f"tp{rank} INFO decode graphs: batch {b} captured" in logs}
        assert captured == {1, 2, 3, 4, 5, 6}, logs[-3000:]
    assert "stays eager" not in logs


@pytest.mark.parametrize("scheme", ["W8A8", "FP8", "FP8_BLOCK", "fp8"])
def test_int8_and_float8_steps_are_replayed(tmp_path, scheme) -> None:
    """compressed-tensors W8A8, FP8 (static activation scales) and FP8_BLOCK checkpoints, and a float checkpoint quantized to
    float8 at load (--quantization fp8): each layer's activation quantization and product are C calls (ops/csrc/int8_rows.c; e4m3_rows.c and
    gemv.c's gemm_e4m3w), so their decode steps are captured and replay what eager steps compute, exactly. (On the
    AVX-512 levels the W8A8 product is torch._int_mm and those steps stay eager.)"""
    from tests.ct_writer import tiny_llama, write_tiny_ct

    from pagedserve.ops import build

    folder = tmp_path / scheme
    if scheme != "fp8":
        write_tiny_ct(folder, scheme, block=32 if scheme == "FP8_BLOCK" else None)
        quantization = {}
    else:
        tiny_llama().save_pretrained(folder)
        quantization = {"quantization": "fp8"}
    # The tiny model's 256 ids as a word-level vocabulary: the prompts go in as ids.
    words = tokenizers.Tokenizer(
        tokenizers.models.WordLevel({f"w{i}": i for i in range(256)}, unk_token="w0")
    )
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=words, unk_token="w0", eos_token="w1"
    ).save_pretrained(folder)
    common = dict(
        dtype="float32", max_model_len=128, kv_cache_memory_bytes=8 * 1024**2, seed=0, **quantization
    )
    graphs, eager = LLM(str(folder), **common), LLM(str(folder), enforce_eager=True, **common)
    assert graphs.llm_engine.info.quantization == ("fp8" if scheme == "fp8" else "compressed-tensors")
    prompts = [
        {"prompt_token_ids": [(7 * i + j) % 256 for j in range(3 + 4 * i)]} for i in range(len(PROMPTS))
    ]

    def run(llm: LLM) -> list[tuple[list[int], list]]:
        outputs = llm.generate(prompts, _params(), use_tqdm=False)
        return [(o.outputs[0].token_ids, o.outputs[0].logprobs) for o in outputs]

    assert run(graphs) == run(eager)
    captured = graphs.llm_engine.executor.runner.decode_graphs.graphs
    assert sorted(captured) == [1, 2, 3, 4, 5, 6]
    level = build.ISA_LEVELS[build.load().compiled_level()]
    if scheme != "W8A8" or level not in ("avx512", "avx512_bf16"):
        # 5 and 6 rows stay eager for the float32 LM head (left unquantized, as llm-compressor and vLLM's online
        # FP8 do), whose C GEMV takes up to 4 rows (test_batch_sizes_without_kernels_stay_eager).
        assert {size for size, graph in captured.items() if graph is not None} == {1, 2, 3, 4}


@pytest.mark.parametrize("arch,tp", [("qwen3moe", 1), ("qwen2moe", 1), ("qwen3moe", 2)])
def test_mixture_of_experts_steps_replayed_equal_eager(tmp_path, capfd, arch, tp) -> None:
    """Experts kept in GGUF blocks: each block's decode step is one C call reading the routing at run time
    (csrc/gguf_moe.c), so MoE decode steps are captured and replayed too, with the routing of each step's own
    tokens (Qwen2-MoE's gated shared expert included). At TP=2 each rank keeps half of every expert (64 rows wide:
    one Q8_0 block of down_proj's columns a rank) and replays its partial sums' all-reduce with the step."""
    import torch
    import transformers

    config = MOE_CONFIGS[arch]()
    config.vocab_size, config.max_position_embeddings = len(TINY_TOKENS), 256
    config.moe_intermediate_size *= tp
    torch.manual_seed(3)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    model.save_pretrained(tmp_path / "float")
    write_moe_gguf(
        tmp_path / "q8.gguf", tmp_path / "float", arch, gguf.GGMLQuantizationType.Q8_0, tokenizer=True
    )
    graphs, eager = _engines(tmp_path / "q8.gguf", quantization="gguf", tensor_parallel_size=tp)
    try:
        # Each run against the other engine's same run: a second run's prompts hit the prefix cache, and a prefill
        # of at most 8 tokens goes through the kernel where a longer one groups tokens by expert in PyTorch.
        assert _run(graphs) == _run(eager)
        assert _run(graphs) == _run(eager)  # every size replayed this time
        if tp == 1:
            captured = graphs.llm_engine.executor.runner.decode_graphs.graphs
            assert sorted(captured) == [1, 2, 3, 4, 5, 6]
            assert all(graph is not None and "gguf_moe" in graph.program.names for graph in captured.values())
    finally:
        graphs.llm_engine.shutdown()
        eager.llm_engine.shutdown()
    logs = capfd.readouterr().err
    for rank in range(tp if tp > 1 else 0):
        captured = {b for b in range(1, 7) if f"tp{rank} INFO decode graphs: batch {b} captured" in logs}
        assert captured == {1, 2, 3, 4, 5, 6}, logs[-3000:]
    assert "stays eager" not in logs
