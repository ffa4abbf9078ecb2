"""The engine on the bundled model: aborts in every state, n > 1 sharing prompt blocks, seeds, stops, logprobs,
admission errors. Uses the session's shared float32 engine; the fixture checks the block invariants after each test.
"""

from __future__ import annotations

import math

import pytest

from pagedserve import SamplingParams
from pagedserve.errors import ContextLengthError, InvalidRequestError

pytestmark = [pytest.mark.slow, pytest.mark.model]


def run_to_end(engine) -> dict:
    finals = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                finals[output.request_id] = output
    return finals


def test_abort_waiting_running_and_mid_prefill_frees_blocks(engine_fp32):
    scheduler = engine_fp32.scheduler
    saved = scheduler.max_num_batched_tokens
    scheduler.max_num_batched_tokens = 24
    try:
        params = SamplingParams(max_tokens=50, ignore_eos=True, temperature=0)
        engine_fp32.add_request("running", "Hello", params)
        engine_fp32.step()
        engine_fp32.add_request("prefill", "word " * 60, params)  # needs several 24-token chunks
        engine_fp32.add_request("waiting", "Another prompt", params)
        engine_fp32.step()
        states = {s.request_id: s.status.name for s in scheduler.sequences.values()}
        assert states == {"running": "RUNNING", "prefill": "RUNNING", "waiting": "WAITING"}
        assert engine_fp32.kv_cache_manager.pool.num_used_blocks > 0
        engine_fp32.abort_request(["running", "prefill", "waiting", "never-existed"])
        assert not engine_fp32.has_unfinished_requests()
        assert engine_fp32.kv_cache_manager.pool.num_used_blocks == 0
        finished = []
        engine_fp32.add_stats_listener(lambda s: finished.extend(s.iteration.finished_requests))
        assert engine_fp32.step() == []
        engine_fp32._listeners.clear()
        assert sorted(f.finish_reason for f in finished) == ["abort"] * 3
        assert engine_fp32.executor.runner.sequences == {}  # the step told the runner to drop them
    finally:
        scheduler.max_num_batched_tokens = saved


def test_n_samples_share_prompt_blocks(engine_fp32):
    prompt = engine_fp32.apply_chat_template([{"role": "user", "content": "Name a colour. " * 8}])
    engine_fp32.add_request("multi", prompt, SamplingParams(n=3, max_tokens=4, temperature=1.0, seed=7))
    engine_fp32.step()
    tables = [engine_fp32.kv_cache_manager.get_block_ids(f"multi#{i}") for i in range(3)]
    full = len(prompt) // engine_fp32.info.block_size
    assert full >= 2 and tables[0][:full] == tables[1][:full] == tables[2][:full]
    output = run_to_end(engine_fp32)["multi"]
    assert [o.index for o in output.outputs] == [0, 1, 2]
    assert all(len(o.token_ids) == 4 for o in output.outputs)


def test_same_seed_same_output_whatever_the_batch(engine_fp32):
    params = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=12, seed=1234, ignore_eos=True)
    engine_fp32.add_request("alone", "Once upon a time", params)
    alone = run_to_end(engine_fp32)["alone"].outputs[0].token_ids
    for i in range(3):
        engine_fp32.add_request(
            f"other{i}", f"Noise prompt {i}", SamplingParams(temperature=1.0, max_tokens=12)
        )
    engine_fp32.add_request("batched", "Once upon a time", params)
    batched = run_to_end(engine_fp32)["batched"].outputs[0].token_ids
    assert alone == batched


def test_stop_string_is_cut_or_kept(engine_fp32):
    prompt = engine_fp32.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    engine_fp32.add_request("free", prompt, SamplingParams(temperature=0, max_tokens=20))
    text = run_to_end(engine_fp32)["free"].outputs[0].text
    assert "Paris" in text
    engine_fp32.add_request("cut", prompt, SamplingParams(temperature=0, max_tokens=20, stop=["Paris"]))
    cut = run_to_end(engine_fp32)["cut"].outputs[0]
    assert (
        cut.text == text[: text.index("Paris")] and cut.finish_reason == "stop" and cut.stop_reason == "Paris"
    )
    engine_fp32.add_request(
        "kept",
        prompt,
        SamplingParams(temperature=0, max_tokens=20, stop=["Paris"], include_stop_str_in_output=True),
    )
    assert run_to_end(engine_fp32)["kept"].outputs[0].text == text[: text.index("Paris") + len("Paris")]


def test_logprobs_and_prompt_logprobs(engine_fp32):
    params = SamplingParams(temperature=0, max_tokens=5, logprobs=3, prompt_logprobs=2)
    engine_fp32.add_request("lp", "The quick brown fox", params)
    output = run_to_end(engine_fp32)["lp"]
    completion = output.outputs[0]
    assert len(completion.logprobs) == 5
    for token_id, entry in zip(completion.token_ids, completion.logprobs):
        assert token_id in entry and entry[token_id].rank == 1  # greedy picks the most likely token
        assert 3 <= len(entry) <= 4 and all(lp.logprob <= 0 for lp in entry.values())
    assert math.isclose(
        completion.cumulative_logprob,
        sum(e[t].logprob for t, e in zip(completion.token_ids, completion.logprobs)),
    )
    assert output.prompt_logprobs[0] is None
    assert len(output.prompt_logprobs) == len(output.prompt_token_ids)
    for token_id, entry in zip(output.prompt_token_ids[1:], output.prompt_logprobs[1:]):
        assert token_id in entry


def test_admission_errors_queue_nothing(engine_fp32):
    max_len = engine_fp32.info.max_model_len
    with pytest.raises(ContextLengthError) as error:
        engine_fp32.add_request("long", list(range(10, 10 + max_len)), SamplingParams())
    assert error.value.param == "prompt" and error.value.code == "context_length_exceeded"
    with pytest.raises(ContextLengthError) as error:
        engine_fp32.add_request("long2", [10, 11, 12], SamplingParams(max_tokens=max_len))
    assert error.value.param == "max_tokens" and "maximum context length" in str(error.value)
    with pytest.raises(InvalidRequestError) as error:
        engine_fp32.add_request("bad-token", [10, engine_fp32.info.vocab_size], SamplingParams())
    assert error.value.param == "prompt"
    with pytest.raises(InvalidRequestError):
        engine_fp32.add_request("empty", "", SamplingParams())
    with pytest.raises(InvalidRequestError, match="Requested sample logprobs of 21, which is greater than max "
                       "allowed: 20") as error:  # fmt: skip
        engine_fp32.add_request("many-logprobs", "hi", SamplingParams(logprobs=21))  # --max-logprobs 20
    assert error.value.param == "logprobs"
    with pytest.raises(InvalidRequestError, match="Requested prompt logprobs of 30") as error:
        engine_fp32.add_request("many-prompt-logprobs", "hi", SamplingParams(prompt_logprobs=30))
    assert error.value.param == "prompt_logprobs"
    engine_fp32.add_request("dup", "hi", SamplingParams(max_tokens=1))
    with pytest.raises(InvalidRequestError):
        engine_fp32.add_request("dup", "hi", SamplingParams(max_tokens=1))
    run_to_end(engine_fp32)
    assert not engine_fp32.has_unfinished_requests()


def test_max_tokens_none_uses_the_rest_of_the_context(engine_fp32):
    scheduler_len = engine_fp32.scheduler.max_model_len
    engine_fp32.scheduler.max_model_len = engine_fp32.info.max_model_len = 40
    try:
        engine_fp32.add_request(
            "rest", [10] * 30, SamplingParams(max_tokens=None, ignore_eos=True, temperature=0)
        )
        output = run_to_end(engine_fp32)["rest"].outputs[0]
        assert len(output.token_ids) == 10 and output.finish_reason == "length"
    finally:
        engine_fp32.scheduler.max_model_len = engine_fp32.info.max_model_len = scheduler_len
