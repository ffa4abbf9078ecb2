"""Greedy output of the bundled model (float32) equals transformers' generate() on the same GGUF.

Where a token differs, the reference's two best log-probabilities at that position must be within 1e-3 (a near tie,
the rule vLLM's own tests use); the comparison stops there since the texts legitimately diverge. The same must hold
when requests arrive while others decode, with chunked prefill forced, with preemption forced by a tiny pool, and
with a warm prefix cache.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from tests.integration.bundled_prompts import PROMPTS

from pagedserve import SamplingParams
from pagedserve.core.kv_cache_manager import KVCacheManager

pytestmark = [pytest.mark.slow, pytest.mark.model]

NUM_TOKENS = 64
GREEDY = SamplingParams(temperature=0.0, max_tokens=NUM_TOKENS, ignore_eos=True)


@pytest.fixture(scope="module")
def chat_prompts(bundled_llm_fp32) -> list[list[int]]:
    engine = bundled_llm_fp32.llm_engine
    return [engine.apply_chat_template([{"role": "user", "content": p}]) for p in PROMPTS]


@pytest.fixture(scope="module")
def reference(chat_prompts) -> list[tuple[list[int], torch.Tensor]]:
    """transformers' greedy tokens and per-step top-2 log-probabilities, one prompt at a time (no padding)."""
    import transformers

    from pagedserve.models.bundled import bundled_model_path

    path = bundled_model_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    # Never stop on EOS and never suppress it (min_new_tokens would mask it and skew the comparison).
    model.generation_config.eos_token_id = None
    results = []
    with torch.no_grad():
        for prompt in chat_prompts:
            out = model.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                max_new_tokens=NUM_TOKENS,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=0,
            )
            tokens = out.sequences[0, len(prompt) :].tolist()
            top2 = torch.stack([s[0].float().log_softmax(-1).topk(2).values for s in out.logits])
            results.append((tokens, top2))
    del model
    return results


def assert_matches(reference, outputs) -> None:
    for index, ((expected, top2), output) in enumerate(zip(reference, outputs)):
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
    saved = (scheduler.max_num_batched_tokens, scheduler.kv, engine.kv_cache_manager)
    if budget is not None:
        scheduler.max_num_batched_tokens = budget
    if num_blocks is not None or not caching:
        manager = KVCacheManager(num_blocks or engine.runner.num_blocks, engine.info.block_size, caching)
        scheduler.kv = engine.kv_cache_manager = manager
    try:
        yield
    finally:
        scheduler.max_num_batched_tokens, scheduler.kv, engine.kv_cache_manager = saved


def test_greedy_matches_transformers(engine_fp32, chat_prompts, reference):
    with scheduler_settings(engine_fp32, caching=False):
        assert_matches(reference, generate_all(engine_fp32, chat_prompts))


def test_greedy_matches_when_requests_arrive_during_decode(engine_fp32, chat_prompts, reference):
    with scheduler_settings(engine_fp32, caching=False):
        assert_matches(reference, generate_all(engine_fp32, chat_prompts, stagger=True))


def test_greedy_matches_with_chunked_prefill(engine_fp32, chat_prompts, reference):
    with scheduler_settings(engine_fp32, budget=13, caching=False):
        assert_matches(reference, generate_all(engine_fp32, chat_prompts))


def test_greedy_matches_under_preemption(engine_fp32, chat_prompts, reference):
    # Room for about two and a half sequences of ~100 tokens: the rest wait or get preempted and recomputed.
    preemptions = []
    engine_fp32.add_stats_listener(lambda stats: preemptions.append(stats.iteration.num_preemptions))
    with scheduler_settings(engine_fp32, num_blocks=16, caching=False):
        assert_matches(reference, generate_all(engine_fp32, chat_prompts))
    engine_fp32._listeners.clear()
    assert sum(preemptions) > 0


def test_greedy_matches_with_warm_prefix_cache(engine_fp32, chat_prompts, reference):
    hits = []
    with scheduler_settings(engine_fp32, caching=True):
        generate_all(engine_fp32, chat_prompts[:4])
        engine_fp32.add_stats_listener(lambda stats: hits.append(stats.iteration.prefix_cache_hits))
        outputs = generate_all(engine_fp32, chat_prompts)
        engine_fp32._listeners.clear()
    assert sum(hits) > 0
    assert_matches(reference, outputs)
