"""The hybrid KV cache manager on a real engine: a tiny random Gemma 2 (window 6 on two layers of four) serves four
long sequences at once from a pool that, keeping every block, holds two; the tokens equal those of an engine
keeping every block in a pool big enough for all (vLLM's --disable-hybrid-kv-cache-manager), and the same small
pool without the hybrid manager preempts."""

from __future__ import annotations

import logging
import random

import pytest
from tests.tiny_models import write_tiny_gemma2

from pagedserve import LLM, SamplingParams

pytestmark = [pytest.mark.slow, pytest.mark.model]

# float32 K and V of one layer, 2 KV heads x 32 dims, in blocks of 4 tokens.
LAYER_BLOCK_BYTES = 2 * 2 * 32 * 4 * 4


@pytest.fixture(scope="module")
def gemma2(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hybrid-kv") / "gemma2"
    write_tiny_gemma2(folder, seed=5)
    return folder


def _run(folder, kv_bytes: int, hybrid: bool) -> tuple[list[list[int]], list[list[float]], int]:
    """Each sequence's tokens and their logprobs (a key read wrongly moves them even where the argmax holds), and
    the preemptions."""
    llm = LLM(
        model=str(folder), dtype="float32", max_model_len=128, block_size=4, max_num_batched_tokens=16,
        kv_cache_memory_bytes=kv_bytes, disable_hybrid_kv_cache_manager=not hybrid,
    )  # fmt: skip
    try:
        prompts = [{"prompt_token_ids": [100 + 7 * i + j for j in range(90)]} for i in range(4)]
        params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True, logprobs=0)
        outputs = llm.generate(prompts, params, use_tqdm=False)
        engine = llm.llm_engine
        engine.check_invariants()
        assert engine.kv_cache_manager.pool.num_used_blocks == 0
        tokens = [o.outputs[0].token_ids for o in outputs]
        logprobs = [
            [step[t].logprob for step, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids)]
            for o in outputs
        ]
        return tokens, logprobs, engine.scheduler.total_preemptions
    finally:
        llm.llm_engine.shutdown()


def test_window_layers_free_blocks_so_more_sequences_fit(gemma2, caplog) -> None:
    reference, reference_logprobs, _ = _run(gemma2, 2**22, hybrid=False)
    small = 160 * 2 * LAYER_BLOCK_BYTES  # 160 blocks of a group's 2 layers, or 80 of all 4
    with caplog.at_level(logging.INFO, logger="pagedserve"):
        tokens, logprobs, preemptions = _run(gemma2, small, hybrid=True)
    assert (
        "KV cache groups (sliding-window layers free blocks out of the window): full, window 6" in caplog.text
    )
    # 159 blocks (one is the null block) over 32 full + 7 window blocks a max-length sequence: 4.
    assert "maximum concurrency 4 sequences" in caplog.text
    assert tokens == reference and preemptions == 0
    flat = [value for row in logprobs for value in row]
    assert flat == pytest.approx([value for row in reference_logprobs for value in row], abs=1e-5)
    # Every block kept: 80 blocks of 30 a sequence hold two at a time, so the third and fourth preempt.
    tokens, _, preemptions = _run(gemma2, small, hybrid=False)
    assert tokens == reference and preemptions > 0


def test_window_groups_stay_consistent_under_preemption_sharing_and_aborts(gemma2) -> None:
    """Rounds of requests sharing prefixes (n = 2 at temperature 0 too), some repetitive, some aborted mid-way, in a
    pool small enough to preempt: after every step the block counts add up, and every block comes back. (A prefix
    hit can restart a preempted sequence past what the runner ran; it then gets its history, or this raised.)"""
    llm = LLM(
        model=str(gemma2), dtype="float32", max_model_len=256, block_size=4, max_num_batched_tokens=24,
        kv_cache_memory_bytes=120 * 2 * LAYER_BLOCK_BYTES,
    )  # fmt: skip
    engine = llm.llm_engine
    rng = random.Random(0)
    base = [rng.randrange(100, 2000) for _ in range(80)]
    try:
        for round_index in range(5):
            ids = []
            for i in range(10):
                prompt = base[: rng.randrange(5, 80)] + [
                    rng.randrange(100, 2000) for _ in range(rng.randrange(1, 60))
                ]
                if rng.random() < 0.3:
                    prompt = (prompt * 3)[:150]
                params = SamplingParams(
                    temperature=rng.choice([0.0, 0.8]), max_tokens=rng.randrange(1, 60), n=rng.choice([1, 1, 2]),
                    ignore_eos=True, seed=i,
                )  # fmt: skip
                ids.append(f"r{round_index}-{i}")
                engine.add_request(ids[-1], {"prompt_token_ids": prompt}, params)
            steps = 0
            while engine.has_unfinished_requests():
                engine.step()
                steps += 1
                if steps == 5:
                    engine.abort_request(ids[:3])
                engine.check_invariants()
            assert engine.kv_cache_manager.pool.num_used_blocks == 0
        assert engine.scheduler.total_preemptions > 0
    finally:
        engine.shutdown()
