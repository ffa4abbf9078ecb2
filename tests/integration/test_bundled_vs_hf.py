"""Greedy output of the bundled model (float32) equals transformers' generate() on the same GGUF, at
tensor_parallel_size 1 and 2.

Where a token differs, the reference's two best log-probabilities at that position must be within 1e-3 (a near tie,
the rule vLLM's own tests use); the comparison stops there since the texts legitimately diverge. The same must hold
when requests arrive while others decode, with chunked prefill forced, with preemption forced by a tiny pool, and
with a warm prefix cache.
"""

from __future__ import annotations

import contextlib

import pytest

from pagedserve import SamplingParams
from pagedserve.core.kv_cache_manager import KVCacheManager

pytestmark = [pytest.mark.slow, pytest.mark.model]

NUM_TOKENS = 64  # as tests/integration/conftest.py's reference
GREEDY = SamplingParams(temperature=0.0, max_tokens=NUM_TOKENS, ignore_eos=True)


def assert_matches(reference, outputs, expected_outputs=None) -> None:
    """outputs' tokens equal the reference's (or `expected_outputs`'), up to a near tie of the reference where they
    first differ."""
    for index, ((expected, top2), output) in enumerate(zip(reference, outputs)):
        if expected_outputs is not None:
            expected = expected_outputs[index].outputs[0].token_ids
        got = output.outputs[0].token_ids
        assert len(got) == NUM_TOKENS
        for position, (a, b) in enumerate(zip(expected, got)):
            if a != b:
                gap = float(top2[position, 0] - top2[position, 1])
                assert gap < 1e-3, (
                    f"prompt {index}: token {position} differs ({b} vs {a}), reference gap {gap:.2e}"
                )
                break


def generate_all(engine, prompts, stagger: bool = False):
    """Run prompts through the engine; with stagger, add one new prompt every two steps while others decode."""
    pending = list(enumerate(prompts))
    results = {}
    step = 0
    while pending or engine.has_unfinished_requests():
        if pending and (not stagger or step % 2 == 0):
            index, prompt = pending.pop(0)
            engine.add_request(f"p{index}", {"prompt_token_ids": prompt}, GREEDY)
        for output in engine.step():
            if output.finished:
                results[int(output.request_id[1:])] = output
        step += 1
    return [results[i] for i in range(len(prompts))]


@contextlib.contextmanager
def scheduler_settings(
    engine, *, budget: int | None = None, num_blocks: int | None = None, caching: bool = True
):
    """Temporarily reconfigure the shared engine (the weights stay loaded once per session)."""
    scheduler = engine.scheduler
    saved = (scheduler.max_num_batched_tokens, scheduler.kv, engine.core.kv_cache_manager)
    if budget is not None:
        scheduler.max_num_batched_tokens = budget
    if num_blocks is not None or not caching:
        manager = KVCacheManager(num_blocks or engine.info.num_kv_blocks, engine.info.block_size, caching)
        scheduler.kv = engine.core.kv_cache_manager = manager
    try:
        yield
    finally:
        scheduler.max_num_batched_tokens, scheduler.kv, engine.core.kv_cache_manager = saved
        if num_blocks is not None or not caching:
            # The temporary manager wrote other K/V into the same blocks: what the engine's own manager has
            # cached there is stale.
            assert scheduler.kv.pool.reset_prefix_cache()


@pytest.fixture(params=["engine_fp32", "tp2_engine"], ids=["tp1", "tp2"])
def case(request, chat_prompts, reference):
    """(engine, prompts, reference): the shared float32 engine with the eight prompts, and the same model at
    tensor_parallel_size 2 (tests/integration/conftest.py) with the first four (a TP=2 step on two cores pays ~60
    gloo all-reduces of ~1 ms: BENCHMARKS.md). Both must give transformers' greedy text with chunked prefill,
    preemption and prefix-cache hits."""
    count = len(chat_prompts) if request.param == "engine_fp32" else 4
    return request.getfixturevalue(request.param), chat_prompts[:count], reference[:count]


def test_greedy_matches_transformers(engine_fp32, chat_prompts, reference):
    with scheduler_settings(engine_fp32, caching=False):
        assert_matches(reference, generate_all(engine_fp32, chat_prompts))


def test_greedy_matches_when_requests_arrive_during_decode(engine_fp32, chat_prompts, reference):
    # At TP=2: test_tensor_parallel.py's comparison with TP=1 staggers the arrivals the same way.
    with scheduler_settings(engine_fp32, caching=False):
        assert_matches(reference, generate_all(engine_fp32, chat_prompts, stagger=True))


def test_greedy_matches_with_chunked_prefill(case):
    engine, prompts, expected = case
    with scheduler_settings(engine, budget=13, caching=False):
        assert_matches(expected, generate_all(engine, prompts))


def test_greedy_matches_under_preemption(case):
    # Room for about two and a half sequences of ~100 tokens: the rest wait or get preempted and recomputed.
    engine, prompts, expected = case
    preemptions = []
    engine.add_stats_listener(lambda stats: preemptions.append(stats.iteration.num_preemptions))
    with scheduler_settings(engine, num_blocks=16, caching=False):
        assert_matches(expected, generate_all(engine, prompts))
    engine._listeners.clear()
    assert sum(preemptions) > 0


def test_greedy_matches_with_warm_prefix_cache(case):
    engine, prompts, expected = case
    hits = []
    with scheduler_settings(engine, caching=True):
        generate_all(engine, prompts[: len(prompts) // 2])
        engine.add_stats_listener(lambda stats: hits.append(stats.iteration.prefix_cache_hits))
        outputs = generate_all(engine, prompts)
        engine._listeners.clear()
    assert sum(hits) > 0
    assert_matches(expected, outputs)
