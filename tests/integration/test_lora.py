"""LoRA adapters end to end in the offline engine: a tiny random Llama served with PEFT adapters must give, for each
request, the output of the checkpoint with that adapter merged in (W + scaling * B @ A, written as a second model
folder) — in one batch with other adapters and the base model, under --max-loras 1, after the adapter was evicted
and read again, with prefix caching, with n-gram drafts and across two tensor-parallel ranks.
"""

from __future__ import annotations

import pathlib
import shutil
from dataclasses import dataclass

import pytest
import torch
import transformers
from tests.lora_writer import merged_state_dict, write_adapter

from pagedserve import LLM, SamplingParams
from pagedserve.errors import InvalidRequestError
from pagedserve.lora.request import LoRARequest

pytestmark = pytest.mark.slow

PROMPTS = [
    "The capital of France is a city where",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n# now",
]
GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=0)
ENGINE = dict(dtype="float32", kv_cache_memory_bytes=32 * 1024**2, max_model_len=256)


@dataclass
class Tiny:
    base: pathlib.Path
    adapters: dict[str, pathlib.Path]
    merged: dict[str, pathlib.Path]  # adapter name -> the merged checkpoint's folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Tiny:
    from pagedserve.models.bundled import bundled_model_path

    root = tmp_path_factory.mktemp("lora")
    path = bundled_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
    )  # fmt: skip
    config.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).float().eval()
    model.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    # "all": every layer type of both layers, rank 8; "part": q, v and gate of layer 1 only, rank 4, rsLoRA.
    settings = {
        "all": dict(rank=8, alpha=16.0, seed=1),
        "part": dict(targets=("q_proj", "v_proj", "gate_proj"), layers=(1,), rank=4, alpha=8.0, seed=2,
                     use_rslora=True, std=0.4),
    }  # fmt: skip
    tiny = Tiny(root / "base", {}, {})
    for name, kwargs in settings.items():
        tensors = write_adapter(root / name, model.config, **kwargs)
        merged = transformers.LlamaForCausalLM(config).float().eval()
        merged.load_state_dict(
            merged_state_dict(
                model, tensors, kwargs["rank"], kwargs["alpha"], kwargs.get("use_rslora", False)
            )
        )
        merged.save_pretrained(root / f"merged-{name}")
        tokenizer.save_pretrained(root / f"merged-{name}")
        tiny.adapters[name] = root / name
        tiny.merged[name] = root / f"merged-{name}"
    return tiny


@pytest.fixture(scope="module")
def references(tiny) -> dict[str | None, list]:
    """Each prompt's greedy output from the base model and from each merged checkpoint."""
    out: dict[str | None, list] = {}
    for name, folder in [(None, tiny.base), *tiny.merged.items()]:
        llm = LLM(str(folder), **ENGINE)
        out[name] = [o.outputs[0] for o in llm.generate(PROMPTS, GREEDY, use_tqdm=False)]
    return out


def _lora(tiny: Tiny, name: str | None, lora_id: int | None = None) -> LoRARequest | None:
    if name is None:
        return None
    return LoRARequest(name, lora_id or (1 if name == "all" else 2), str(tiny.adapters[name]))


def assert_same(got, expected) -> None:
    assert got.token_ids == expected.token_ids
    for mine, theirs, token in zip(got.logprobs, expected.logprobs, got.token_ids):
        assert abs(mine[token].logprob - theirs[token].logprob) < 1e-3


def run_plan(llm: LLM, tiny: Tiny, references, plan: list[tuple[int, str | None]]) -> list[list[str]]:
    """Generates (prompt index, adapter name) requests in one call, checks each against its reference; returns the
    adapters running at each step."""
    steps: list[list[str]] = []
    llm.llm_engine.add_stats_listener(lambda stats: steps.append(stats.scheduler.running_lora_adapters))
    outputs = llm.generate(
        [PROMPTS[i] for i, _ in plan], GREEDY, use_tqdm=False, lora_request=[_lora(tiny, n) for _, n in plan]
    )
    for (i, name), output in zip(plan, outputs):
        assert_same(output.outputs[0], references[name][i])
    llm.llm_engine.check_invariants()
    return steps


def test_each_request_gets_its_adapter_in_one_batch(tiny, references):
    llm = LLM(str(tiny.base), enable_lora=True, max_loras=2, max_lora_rank=8, **ENGINE)
    steps = run_plan(
        llm, tiny, references, [(0, None), (0, "all"), (1, "part"), (1, "all"), (0, "part"), (1, None)]
    )
    assert ["all", "part"] in steps  # both adapters (and the base model) ran in the same steps
    assert references["all"][0].token_ids != references[None][0].token_ids  # the adapters change the text
    assert references["part"][1].token_ids != references[None][1].token_ids


def test_a_decode_graph_captured_without_adapters_applies_them_when_replayed(tiny, references):
    """The CPU decode graph of a batch size is recorded at its first step; the adapters' delta kernel is in it even
    when that step ran none, and reads the slots the runner sets at each later step."""
    llm = LLM(str(tiny.base), enable_lora=True, max_loras=2, max_lora_rank=8, **ENGINE)
    run_plan(llm, tiny, references, [(0, None), (1, None)])
    graphs = llm.llm_engine.executor.runner.decode_graphs.graphs
    assert graphs.get(2) is not None  # batch 2's graph, recorded without adapters
    run_plan(llm, tiny, references, [(0, "all"), (1, "part")])
    run_plan(llm, tiny, references, [(0, None), (1, "all")])
    run_plan(llm, tiny, references, [(0, None), (1, None)])  # no slot left over from the steps before
    assert graphs.get(2) is not None


def test_max_loras_1_with_one_adapter_kept_reads_them_again_and_gives_the_same_text(tiny, references):
    llm = LLM(str(tiny.base), enable_lora=True, max_loras=1, max_cpu_loras=1, max_lora_rank=8, **ENGINE)
    steps = run_plan(llm, tiny, references, [(0, "all"), (0, "part"), (1, "all"), (1, None), (1, "part")])
    assert all(len(running) <= 1 for running in steps) and ["part"] in steps and ["all"] in steps
    assert len(llm.llm_engine.executor.runner.lora.loaded) == 1


def test_prefix_cache_blocks_are_not_shared_across_adapters(tiny, references):
    llm = LLM(str(tiny.base), enable_lora=True, max_lora_rank=8, **ENGINE)
    for name in (
        None,
        "all",
        None,
        "all",
    ):  # the second of each: a prefix-cache hit of its own adapter's blocks
        output = llm.generate(PROMPTS[1], GREEDY, use_tqdm=False, lora_request=_lora(tiny, name))[0]
        assert_same(output.outputs[0], references[name][1])
    assert output.num_cached_tokens >= 16


def test_adapters_with_ngram_drafts_keep_the_merged_greedy_text(tiny, references):
    llm = LLM(
        str(tiny.base), enable_lora=True, max_loras=2, max_lora_rank=8, **ENGINE,
        speculative_config={"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 1},
    )  # fmt: skip
    drafts = []
    llm.llm_engine.add_stats_listener(lambda stats: drafts.append(stats.iteration.num_draft_tokens))
    outputs = llm.generate(
        PROMPTS, GREEDY, use_tqdm=False, lora_request=[_lora(tiny, "all"), _lora(tiny, "part")]
    )
    assert_same(outputs[0].outputs[0], references["all"][0])
    assert_same(outputs[1].outputs[0], references["part"][1])
    assert sum(drafts) > 0


def test_a_folder_gone_after_its_check_ends_its_request_aborted_and_the_engine_goes_on(
    tiny, references, tmp_path
):
    llm = LLM(str(tiny.base), enable_lora=True, max_lora_rank=8, **ENGINE)
    folder = tmp_path / "copy"
    shutil.copytree(tiny.adapters["all"], folder)
    lora = LoRARequest("copy", 5, str(folder))
    llm.llm_engine.check_lora_adapter(lora)
    shutil.rmtree(folder)  # the front end remembers it checked: the worker finds nothing to load
    outputs = llm.generate(PROMPTS, GREEDY, use_tqdm=False, lora_request=[lora, None])
    assert outputs[0].outputs[0].finish_reason == "abort" and outputs[0].outputs[0].token_ids == []
    assert_same(outputs[1].outputs[0], references[None][1])
    again = llm.generate(PROMPTS[0], GREEDY, use_tqdm=False, lora_request=_lora(tiny, "all"))[0]
    assert_same(again.outputs[0], references["all"][0])
    llm.llm_engine.check_invariants()


def test_adapters_are_refused_when_lora_is_off_or_they_do_not_fit(tiny):
    plain = LLM(str(tiny.base), **ENGINE)
    with pytest.raises(InvalidRequestError, match="LoRA is not enabled"):
        plain.generate(PROMPTS[0], GREEDY, use_tqdm=False, lora_request=_lora(tiny, "all"))
    small = LLM(str(tiny.base), enable_lora=True, max_lora_rank=4, **ENGINE)
    with pytest.raises(InvalidRequestError, match="has rank 8; --max-lora-rank is 4"):
        small.generate(PROMPTS[0], GREEDY, use_tqdm=False, lora_request=_lora(tiny, "all"))
    with pytest.raises(ValueError, match="max_cpu_loras .1. must be >= max_loras .2."):
        LLM(str(tiny.base), enable_lora=True, max_loras=2, max_cpu_loras=1, **ENGINE)
    with pytest.raises(ValueError, match="lora_dtype must be auto or float32"):
        LLM(str(tiny.base), enable_lora=True, lora_dtype="bfloat16", **ENGINE)
    with pytest.raises(ValueError, match="lora_request must hold one value per prompt"):
        small.generate(PROMPTS, GREEDY, use_tqdm=False, lora_request=[None])


@pytest.mark.model
def test_tensor_parallel_ranks_apply_their_slices_of_the_adapter(tiny, references):
    """Column-parallel layers keep their rows of B, row-parallel ones their columns of A (their partial deltas are
    summed by the layer's all-reduce): TP=2 gives the merged checkpoint's greedy text."""
    llm = LLM(
        str(tiny.base), enable_lora=True, max_loras=2, max_lora_rank=8, tensor_parallel_size=2, **ENGINE
    )
    try:
        outputs = llm.generate(
            PROMPTS * 2,
            GREEDY,
            use_tqdm=False,
            lora_request=[_lora(tiny, "all")] * 2 + [_lora(tiny, "part")] * 2,
        )
    finally:
        llm.llm_engine.shutdown()
    assert_same(outputs[0].outputs[0], references["all"][0])
    assert_same(outputs[1].outputs[0], references["all"][1])
    assert_same(outputs[2].outputs[0], references["part"][0])
    assert_same(outputs[3].outputs[0], references["part"][1])
