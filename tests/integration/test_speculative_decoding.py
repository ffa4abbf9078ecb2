"""Speculative decoding (n-gram drafts) on the bundled model: greedy outputs are the tokens the same engine gives
without it, with penalties, logprobs, stop tokens and strings, max_tokens and n > 1, while drafts are kept.

Both engines run float32. Greedy equality holds up to summation order: a verification step multiplies up to 1 + k
rows at once where a plain decode multiplies one, so where the reference's two best tokens are within 1e-3 of
each other a different pick is accepted and the comparison stops there (no such tie occurs on these prompts
today; the check keeps the test true on other CPUs' kernels).
"""

from __future__ import annotations

import pytest

from pagedserve import LLM
from pagedserve.core.stats import EngineStats
from pagedserve.sampling_params import SamplingParams

pytestmark = [pytest.mark.slow, pytest.mark.model]

TEXT = (
    "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step. "
    "All that glitters is not gold. Actions speak louder than words."
)
COPY = f"Repeat this text exactly, word for word:\n\n{TEXT}\n\nRepeated text:"
FREE = "Write a short poem about the sea."
TIE = 1e-3


def drafting_llm(kv_cache_memory_bytes: int = 256 * 1024**2, **spec: object) -> LLM:
    """The bundled model in float32 with n-gram drafts; `llm.drafts` counts drafts, draft tokens, kept ones and
    preemptions."""
    llm = LLM(
        dtype="float32",
        max_model_len=1024,
        kv_cache_memory_bytes=kv_cache_memory_bytes,
        seed=0,
        speculative_config={"method": "ngram", "prompt_lookup_max": 4, "prompt_lookup_min": 2, **spec},
    )
    drafts = {"drafts": 0, "draft_tokens": 0, "accepted": 0, "preemptions": 0}

    def count(stats: EngineStats) -> None:
        drafts["drafts"] += stats.iteration.num_drafts
        drafts["draft_tokens"] += stats.iteration.num_draft_tokens
        drafts["accepted"] += stats.iteration.num_accepted_tokens
        drafts["preemptions"] += stats.iteration.num_preemptions

    llm.llm_engine.add_stats_listener(count)
    llm.drafts = drafts  # type: ignore[attr-defined]
    return llm


@pytest.fixture(scope="module")
def spec_llm():
    llm = drafting_llm(num_speculative_tokens=4)
    yield llm
    llm.llm_engine.shutdown()


@pytest.fixture()
def spec(spec_llm):
    yield spec_llm
    engine = spec_llm.llm_engine
    assert not engine.has_unfinished_requests()
    engine.check_invariants()
    assert engine.kv_cache_manager.pool.num_used_blocks == 0


def assert_same_greedy(expected, got) -> None:
    """Same tokens, or different only from a near-tie of the reference's two best tokens on."""
    ref, out = expected.outputs[0], got.outputs[0]
    for position, (a, b) in enumerate(zip(ref.token_ids, out.token_ids)):
        if a != b:
            top = sorted(ref.logprobs[position].values(), key=lambda lp: -lp.logprob)
            assert top[0].logprob - top[1].logprob < TIE, f"position {position}: {a} != {b} with no tie"
            return
    assert ref.token_ids == out.token_ids


def test_greedy_equals_the_plain_engine_and_drafts_are_kept(spec, bundled_llm_fp32) -> None:
    params = SamplingParams(temperature=0, max_tokens=80, ignore_eos=True, logprobs=2)
    prompts = [COPY, FREE, "List the numbers from 1 to 30, separated by commas:"]
    before = dict(spec.drafts)
    got = spec.generate(prompts, params, use_tqdm=False)  # three at a time: drafts beside plain decodes
    expected = bundled_llm_fp32.generate(prompts, params, use_tqdm=False)
    for e, g in zip(expected, got):
        assert_same_greedy(e, g)
        assert len(g.outputs[0].token_ids) == len(g.outputs[0].logprobs) == 80
        for a, b in zip(e.outputs[0].logprobs, g.outputs[0].logprobs):
            chosen = next(iter(b))  # the sampled token first, as the plain engine reports it
            assert chosen in a and abs(a[chosen].logprob - b[chosen].logprob) < 1e-3
    drafts = {k: spec.drafts[k] - before[k] for k in before}
    assert drafts["drafts"] > 0 and 0 < drafts["accepted"] <= drafts["draft_tokens"]
    assert drafts["accepted"] > 40, drafts  # the copy prompt is mostly kept drafts


def test_penalties_and_bad_words_see_the_draft_tokens_before_each_position(spec, bundled_llm_fp32) -> None:
    """A verified position's history includes the draft tokens before it: with penalties, min_tokens and bad words
    the greedy text equals the plain engine's, which appended those tokens one step at a time."""
    params = [
        SamplingParams(temperature=0, max_tokens=60, repetition_penalty=1.3, logprobs=1),
        SamplingParams(temperature=0, max_tokens=60, presence_penalty=0.8, frequency_penalty=0.3, logprobs=1),
        SamplingParams(temperature=0, max_tokens=40, min_tokens=40, logprobs=1),
        # A bad word's last token is banned right after its first ones: inside a kept draft, after draft tokens.
        SamplingParams(temperature=0, max_tokens=60, bad_words=["lazy dog", "single step"], logprobs=1),
    ]
    for p in params:
        assert_same_greedy(
            bundled_llm_fp32.generate([COPY], p, use_tqdm=False)[0],
            spec.generate([COPY], p, use_tqdm=False)[0],
        )


def test_stops_and_lengths_cut_a_kept_draft(spec, bundled_llm_fp32) -> None:
    cases = [
        SamplingParams(temperature=0, max_tokens=50, stop=["thousand"]),
        SamplingParams(temperature=0, max_tokens=50, stop=["glitters"], include_stop_str_in_output=True),
        SamplingParams(temperature=0, max_tokens=7, ignore_eos=True),
        SamplingParams(temperature=0, max_tokens=11, ignore_eos=True),
    ]
    for params in cases:
        expected = bundled_llm_fp32.generate([COPY], params, use_tqdm=False)[0].outputs[0]
        got = spec.generate([COPY], params, use_tqdm=False)[0].outputs[0]
        assert (got.text, got.finish_reason, got.stop_reason) == (
            expected.text,
            expected.finish_reason,
            expected.stop_reason,
        )
    stop_token = bundled_llm_fp32.generate([COPY], cases[2], use_tqdm=False)[0].outputs[0].token_ids[5]
    params = SamplingParams(temperature=0, max_tokens=50, stop_token_ids=[stop_token])
    expected = bundled_llm_fp32.generate([COPY], params, use_tqdm=False)[0].outputs[0]
    got = spec.generate([COPY], params, use_tqdm=False)[0].outputs[0]
    assert got.token_ids == expected.token_ids and got.stop_reason == stop_token


def test_random_sampling_with_drafts_is_seeded_and_bounded(spec) -> None:
    params = SamplingParams(
        temperature=0.7, top_p=0.9, max_tokens=48, n=2, seed=11, ignore_eos=True, logprobs=0
    )
    first = spec.generate([COPY], params, use_tqdm=False)[0]
    again = spec.generate([COPY], params, use_tqdm=False)[0]
    assert [o.token_ids for o in first.outputs] == [o.token_ids for o in again.outputs]
    for out in first.outputs:
        assert len(out.token_ids) == len(out.logprobs) == 48
        assert all(next(iter(entry)) == token for entry, token in zip(out.logprobs, out.token_ids))


def test_constrained_requests_draft_within_their_grammar(spec, bundled_llm_fp32) -> None:
    """A grammar-constrained sequence drafts too: the draft is cut where the grammar refuses it, each verified
    position is masked by the grammar's state after the draft tokens before it, and a draft that completes the
    grammar ends the sequence there. Alone and beside an unconstrained drafting sequence, the text is the plain
    engine's."""
    from pagedserve.sampling_params import StructuredOutputsParams

    regex = SamplingParams(
        temperature=0,
        max_tokens=60,
        structured_outputs=StructuredOutputsParams(regex="(fox|dog)( (fox|dog)){9}"),
    )
    schema = {
        "type": "object",
        "properties": {"text": {"type": "string", "maxLength": 120}, "words": {"type": "integer"}},
        "required": ["text", "words"],
    }
    json_params = SamplingParams(
        temperature=0, max_tokens=80, structured_outputs=StructuredOutputsParams(json=schema)
    )
    plain = SamplingParams(temperature=0, max_tokens=60, ignore_eos=True)
    prompt = f"Put this text in JSON as the field text: {TEXT}"
    before = dict(spec.drafts)
    got = spec.generate([COPY, COPY, prompt], [plain, regex, json_params], use_tqdm=False)
    expected = bundled_llm_fp32.generate([COPY, COPY, prompt], [plain, regex, json_params], use_tqdm=False)
    for g, e in zip(got, expected):
        assert g.outputs[0].token_ids == e.outputs[0].token_ids
        assert g.outputs[0].finish_reason == e.outputs[0].finish_reason
    assert len(got[1].outputs[0].text.split()) == 10
    alone_before = dict(spec.drafts)
    again = spec.generate([prompt], json_params, use_tqdm=False)[0]
    assert again.outputs[0].token_ids == expected[2].outputs[0].token_ids
    assert spec.drafts["accepted"] - alone_before["accepted"] > 0, "the JSON request alone kept no draft"
    assert spec.drafts["accepted"] > before["accepted"]


def test_no_drafts_while_more_sequences_run_than_disable_by_batch_size() -> None:
    llm = drafting_llm(num_speculative_tokens=3, disable_by_batch_size=2)
    try:
        params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
        llm.generate([COPY] * 3, params, use_tqdm=False)  # three run together from start to end
        assert llm.drafts["drafts"] == 0
        llm.generate([COPY] * 2, params, use_tqdm=False)
        assert llm.drafts["drafts"] > 0
    finally:
        llm.llm_engine.shutdown()


def test_kv_exhaustion_with_drafts_preempts_and_keeps_the_greedy_text(bundled_llm_fp32) -> None:
    """Six copy requests in a cache of ~24 blocks (each needs ~9): sequences are preempted while drafting, their
    drafts dropped, and every output equals the unloaded plain engine's; all blocks come back."""
    llm = drafting_llm(kv_cache_memory_bytes=18 * 1024**2, num_speculative_tokens=3)
    try:
        params = SamplingParams(temperature=0, max_tokens=70, ignore_eos=True)
        got = llm.generate([COPY] * 6, params, use_tqdm=False)
        expected = bundled_llm_fp32.generate([COPY], params, use_tqdm=False)[0].outputs[0].token_ids
        assert llm.drafts["preemptions"] > 0 and llm.drafts["accepted"] > 0, llm.drafts
        assert all(out.outputs[0].token_ids == expected for out in got)
        engine = llm.llm_engine
        engine.check_invariants()
        assert engine.kv_cache_manager.pool.num_used_blocks == 0
    finally:
        llm.llm_engine.shutdown()
