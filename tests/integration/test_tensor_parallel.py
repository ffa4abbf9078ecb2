"""Tensor parallelism on the CPU: two real worker processes, real collectives (all-reduce and all-gather through
shared memory, the step's broadcast over gloo).

The bundled model at TP=2 (attention split unevenly by KV-head groups: 6 + 3 query heads) must give the greedy
float32 output of TP=1; tokens may differ only at a near tie (transformers' top-2 log-probabilities within 1e-3: an
all-reduce sums in another order). Its match with transformers under chunked prefill, preemption and prefix-cache
hits is test_bundled_vs_hf.py's, parametrized over TP=1 and TP=2.
Tiny random models with 2 KV heads (split, one a rank) and 1 KV head (replicated on both ranks) must match
transformers' log-probabilities.
"""

from __future__ import annotations

import pathlib

import pytest
import torch
import transformers
from tests.integration.test_bundled_vs_hf import assert_matches, generate_all, scheduler_settings

from pagedserve import LLM, SamplingParams

pytestmark = [pytest.mark.slow, pytest.mark.model]


def test_tp2_runs_one_worker_process_a_rank_and_counts_every_ranks_weights(tp2_engine):
    info = tp2_engine.info
    assert tp2_engine.config.parallel.tensor_parallel_size == 2
    # Both ranks' weights count: the whole model once (the tied embedding is split, not copied).
    assert info.weight_bytes > 80 * 1024**2
    pids = tp2_engine.executor.pids
    assert len(pids) == 2 and all(pathlib.Path(f"/proc/{pid}").exists() for pid in pids)
    # Both ranks map the shared-memory region of their collectives, whose name rank 0 already unlinked.
    for pid in pids:
        maps = pathlib.Path(f"/proc/{pid}/maps").read_text()
        assert "/dev/shm/pagedserve-tp-" in maps and "(deleted)" in maps, maps[-2000:]


def test_tp2_greedy_equals_tp1_and_transformers(tp2_engine, engine_fp32, chat_prompts, reference):
    with scheduler_settings(engine_fp32, caching=False):
        single = generate_all(engine_fp32, chat_prompts)
    with scheduler_settings(tp2_engine, caching=False):
        outputs = generate_all(tp2_engine, chat_prompts, stagger=True)
    assert_matches(reference, outputs)
    assert_matches(reference, outputs, expected_outputs=single)


def test_tp2_seeded_sampling_and_logprobs_equal_tp1(tp2_llm, bundled_llm_fp32):
    """Ranks sample the same way: seeded random sampling with penalties and logprobs gives TP=1's tokens."""
    params = SamplingParams(
        temperature=0.8, top_p=0.9, seed=7, max_tokens=16, logprobs=2, presence_penalty=0.5, n=2
    )
    prompt = "Tell me about the sea."
    one = bundled_llm_fp32.generate([prompt], params, use_tqdm=False)[0]
    two = tp2_llm.generate([prompt], params, use_tqdm=False)[0]
    for a, b in zip(one.outputs, two.outputs):
        assert a.token_ids == b.token_ids
        for x, y in zip(a.logprobs, b.logprobs):
            assert x.keys() == y.keys()
            for token in x:
                # Relative: an all-reduce sums in another order, and the error grows with the logit (1.03e-3 at
                # a log-probability of -3.67 on an AVX2 CPU, 2026-12-04).
                assert x[token].logprob == pytest.approx(y[token].logprob, rel=1e-3, abs=1e-3)


def test_sizes_that_cannot_split_the_heads_are_refused():
    # 9 heads / 3 KV heads over 4 ranks: fewer KV heads than ranks, and 4 divides neither.
    with pytest.raises(ValueError, match="tensor_parallel_size 4 cannot split"):
        LLM(dtype="float32", max_model_len=64, kv_cache_memory_bytes=2**20, tensor_parallel_size=4)


def _tiny_folder(root: pathlib.Path, num_kv_heads: int) -> pathlib.Path:
    from pagedserve.models.bundled import bundled_model_path

    path = bundled_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=num_kv_heads, max_position_embeddings=128,
        attention_bias=True, mlp_bias=True, tie_word_embeddings=False, initializer_range=0.1,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
    )  # fmt: skip
    config.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(num_kv_heads)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # random biases: the row-parallel ones must be added once, not once a rank
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0, 0.2)
    folder = root / f"tiny-kv{num_kv_heads}"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("num_kv_heads", [2, 1], ids=["kv-heads-split", "kv-head-replicated"])
def test_tiny_model_at_tp2_matches_transformers(tmp_path, num_kv_heads):
    _tp2_matches_transformers(_tiny_folder(tmp_path, num_kv_heads))


def test_disable_custom_all_reduce_reduces_over_gloo_with_the_same_result(tmp_path):
    """vLLM's --disable-custom-all-reduce: no shared-memory collectives (no rank maps the region), gloo instead."""
    maps = _tp2_matches_transformers(_tiny_folder(tmp_path, 2), disable_custom_all_reduce=True)
    assert len(maps) == 2 and not any("/dev/shm/pagedserve-tp-" in m for m in maps)


def _tp2_matches_transformers(
    folder: pathlib.Path,
    tensor_parallel_size: int = 2,
    reference_folder: pathlib.Path | None = None,
    **llm_kwargs,
) -> list[str]:
    """Greedy tokens and logprobs of `folder` at TP=2 (or `tensor_parallel_size`) against transformers on
    `reference_folder` (default: the same); the ranks' /proc maps."""
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        reference_folder or folder, dtype=torch.float32
    ).eval()
    prompt = torch.randint(0, 49152, (21,), generator=torch.Generator().manual_seed(3)).tolist()
    llm = LLM(
        model=str(folder), dtype="float32", max_model_len=128, kv_cache_memory_bytes=2**22,
        tensor_parallel_size=tensor_parallel_size, block_size=4, max_num_batched_tokens=8, **llm_kwargs,
    )  # fmt: skip
    try:
        pids = llm.llm_engine.executor.pids if tensor_parallel_size > 1 else []
        maps = [pathlib.Path(f"/proc/{pid}/maps").read_text() for pid in pids]
        params = SamplingParams(temperature=0, max_tokens=6, logprobs=0, prompt_logprobs=0, ignore_eos=True)
        output = llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)[0]
    finally:
        llm.llm_engine.shutdown()
    generated = output.outputs[0].token_ids
    with torch.no_grad():
        logprobs = reference(torch.tensor([prompt + generated])).logits[0].log_softmax(-1)
    # Prompt positions (chunked into steps of 8 tokens by the budget), then the decode steps.
    for position, entry in enumerate(output.prompt_logprobs[1:], start=1):
        token = prompt[position]
        assert abs(entry[token].logprob - float(logprobs[position - 1, token])) < 1e-4
    for step, token in enumerate(generated):
        row = logprobs[len(prompt) - 1 + step]
        assert abs(output.outputs[0].logprobs[step][token].logprob - float(row[token])) < 1e-4
        assert float(row.max() - row[token]) < 1e-4  # greedy: the best token, up to a tie
    return maps


def test_tp2_with_ngram_drafts_keeps_tp1s_greedy_text(bundled_llm_fp32):
    """Drafts verified across two ranks: every rank runs the same verify rows (rank 0's kept tokens decide), and
    the greedy text is TP=1's without drafts."""
    from tests.integration.test_speculative_decoding import COPY

    llm = LLM(
        dtype="float32", max_model_len=1024, kv_cache_memory_bytes=256 * 1024**2, seed=0, tensor_parallel_size=2,
        speculative_config={"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 2},
    )  # fmt: skip
    try:
        drafts = []
        llm.llm_engine.add_stats_listener(lambda stats: drafts.append(stats.iteration.num_accepted_tokens))
        params = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)
        got = llm.generate([COPY, COPY[:80]], params, use_tqdm=False)
        expected = bundled_llm_fp32.generate([COPY, COPY[:80]], params, use_tqdm=False)
        assert [o.outputs[0].token_ids for o in got] == [o.outputs[0].token_ids for o in expected]
        assert sum(drafts) > 0
        llm.llm_engine.check_invariants()
    finally:
        llm.llm_engine.shutdown()
