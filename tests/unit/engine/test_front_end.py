"""The engine's front end without a model: admission (InputProcessor) and output building (OutputProcessor) with
the bundled model's real tokenizer, fed the plain per-step outputs a core would send."""

from __future__ import annotations

from typing import Any

import pytest

from pagedserve.engine.core_messages import SequenceOutput
from pagedserve.engine.input_processor import InputProcessor
from pagedserve.engine.output_processor import OutputProcessor
from pagedserve.errors import ContextLengthError, InvalidRequestError
from pagedserve.outputs import EngineInfo
from pagedserve.sampling_params import SamplingParams


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from pagedserve.models.loader import load_tokenizer, resolve_model_source

    return load_tokenizer(resolve_model_source(None))


def make_input(tokenizer: Any, num_kv_blocks: int = 64) -> InputProcessor:
    info = EngineInfo("m", 256, tokenizer.vocab_size, 16, num_kv_blocks, 0, True, "float32", "cpu", [])
    return InputProcessor(tokenizer, info)


def token_output(
    seq_id: str, request_id: str, index: int, token: int, finish: str | None = None
) -> SequenceOutput:
    return SequenceOutput(
        seq_id, request_id, index, [token], finish, None, None, None, 0, 0, 1.0, 1.0, 1.0, None
    )


def test_admission_resolves_tokens_limits_and_eos(tokenizer: Any) -> None:
    inputs = make_input(tokenizer)
    request, state = inputs.process("r", "Hello there", SamplingParams(max_tokens=None, n=2), 5.0)
    assert request.prompt_token_ids == tokenizer.encode("Hello there") == state.prompt_token_ids
    assert request.max_tokens == 256 - len(request.prompt_token_ids)
    assert tokenizer.eos_token_id in request.eos_token_ids
    assert tokenizer.eos_token_id in request.sampling_params.all_stop_token_ids
    assert len(state.sequences) == len(state.detokenizers) == 2
    with pytest.raises(ContextLengthError):
        inputs.process("r", [1] * 250, SamplingParams(max_tokens=10), 5.0)
    with pytest.raises(InvalidRequestError, match="can never fit the KV cache"):
        make_input(tokenizer, num_kv_blocks=2).process("r", [1] * 20, SamplingParams(max_tokens=20), 5.0)
    with pytest.raises(InvalidRequestError, match="token ids"):
        inputs.process("r", [tokenizer.vocab_size], SamplingParams(), 5.0)


def test_a_stop_string_ends_one_sample_and_later_tokens_are_dropped(tokenizer: Any) -> None:
    inputs, outputs = make_input(tokenizer), OutputProcessor(tokenizer)
    params = SamplingParams(n=2, max_tokens=10, stop=[" world"], temperature=1.0)
    request, state = inputs.process("r", [1, 2, 3], params, 1.0)
    outputs.add_request(state)
    hello, world, again = tokenizer.encode(" hello world again", add_special_tokens=False)[:3]
    results, stopped, finished = outputs.process(
        [token_output("r#0", "r", 0, hello), token_output("r#1", "r", 1, hello)]
    )
    assert stopped == [] and finished == [] and results[0].outputs[0].text == " hello"
    results, stopped, finished = outputs.process(
        [token_output("r#0", "r", 0, world), token_output("r#1", "r", 1, again)]
    )
    assert stopped == ["r#0"]  # the core must free it: it has not finished it
    assert results[0].outputs[0].finish_reason == "stop" and results[0].outputs[0].stop_reason == " world"
    assert results[0].outputs[0].text == " hello" and not results[0].finished
    # The core ran one more step for r#0 before it heard of the stop: ignored. r#1 ends by length.
    results, stopped, finished = outputs.process(
        [token_output("r#0", "r", 0, again), token_output("r#1", "r", 1, again, "length")]
    )
    assert stopped == [] and results[0].finished
    assert results[0].outputs[0].token_ids == [hello, world]
    assert [o.finish_reason for o in results[0].outputs] == ["stop", "length"]
    assert [f.finish_reason for f in finished] == ["stop"] and finished[0].num_generation_tokens == 5
    assert outputs.requests == {}


def test_abort_reports_stats_and_ignores_what_the_core_still_sends(tokenizer: Any) -> None:
    inputs, outputs = make_input(tokenizer), OutputProcessor(tokenizer, stream_outputs=False)
    _, state = inputs.process("a", [1, 2], SamplingParams(max_tokens=5), 1.0)
    outputs.add_request(state)
    results, _, _ = outputs.process([token_output("a", "a", 0, 42)])
    assert results == []  # not streaming: only finished requests
    stats = outputs.abort_requests(["a", "unknown"])
    assert [(s.request_id, s.finish_reason, s.num_generation_tokens) for s in stats] == [("a", "abort", 1)]
    assert outputs.process([token_output("a", "a", 0, 43, "length")]) == ([], [], [])


def test_admission_tokenizes_bad_words_and_checks_token_ids_against_the_vocabulary(tokenizer: Any) -> None:
    inputs = make_input(tokenizer)
    request, _ = inputs.process("r", "Hi", SamplingParams(bad_words=["hello", " world peace"]), 1.0)
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    # Each word as written and with a leading space (a different word of as many tokens: byte-level BPE).
    assert request.sampling_params.bad_words_token_ids == [
        encode("hello"), encode(" hello"), encode("world peace"), encode(" world peace")
    ]  # fmt: skip
    vocab = tokenizer.vocab_size
    for field, params in (
        ("logit_bias", SamplingParams(logit_bias={vocab: 1.0})),
        ("allowed_token_ids", SamplingParams(allowed_token_ids=[0, vocab + 5])),
    ):
        with pytest.raises(InvalidRequestError, match="outside the model's vocabulary") as caught:
            inputs.process("r", "Hi", params, 1.0)
        assert caught.value.param == field


def test_a_bad_word_without_tokens_is_refused_by_name(tokenizer: Any) -> None:
    """A character the tokenizer drops (a control character): nothing to ban, a clear 400 naming the field (it
    crashed the server with a 500, found by schemathesis; empty and blank words SamplingParams refuses itself)."""
    with pytest.raises(InvalidRequestError, match=r"bad_words\[1\] .* has no tokens") as caught:
        make_input(tokenizer).process("r", "Hi", SamplingParams(bad_words=["hello", "\x16"]), 1.0)
    assert caught.value.param == "bad_words"


def test_stop_token_ids_past_the_vocabulary_are_dropped(tokenizer: Any) -> None:
    """They can never be sampled (the output is the same, as in vLLM, which keeps them); 2^64 crashed the server
    with a 500 (found by schemathesis): msgpack cannot carry it to the engine core."""
    request, _ = make_input(tokenizer).process(
        "r", "Hi", SamplingParams(stop_token_ids=[2**64, tokenizer.vocab_size, 7]), 1.0
    )
    assert request.sampling_params.stop_token_ids == [7]
    assert 7 in request.sampling_params.all_stop_token_ids
    assert max(request.sampling_params.all_stop_token_ids) < tokenizer.vocab_size


def test_truncate_prompt_tokens_keeps_the_last_tokens(tokenizer: Any) -> None:
    inputs = make_input(tokenizer)
    ids = tokenizer.encode("one two three four five six seven")
    request, state = inputs.process(
        "r", "one two three four five six seven", SamplingParams(truncate_prompt_tokens=3), 1.0
    )
    assert request.prompt_token_ids == ids[-3:] == state.prompt_token_ids
    assert state.prompt == tokenizer.decode(ids[-3:])  # what the model saw, for echo
    short, _ = inputs.process("r", [5, 6], SamplingParams(truncate_prompt_tokens=3), 1.0)
    assert short.prompt_token_ids == [5, 6]
    # -1: max_model_len (256) tokens; this 300-token prompt then leaves no room, which is the usual error.
    with pytest.raises(ContextLengthError):
        inputs.process("r", [7] * 300, SamplingParams(truncate_prompt_tokens=-1), 1.0)
    cut, _ = inputs.process("r", [7] * 300, SamplingParams(truncate_prompt_tokens=250, max_tokens=6), 1.0)
    assert len(cut.prompt_token_ids) == 250
    with pytest.raises(InvalidRequestError, match="greater than max_model_len") as caught:
        inputs.process("r", [7] * 10, SamplingParams(truncate_prompt_tokens=257), 1.0)
    assert caught.value.param == "truncate_prompt_tokens"
    for bad in (0, -2, 1.5):
        with pytest.raises(ValueError, match="truncate_prompt_tokens"):
            SamplingParams(truncate_prompt_tokens=bad)


def test_priority_needs_the_priority_policy(tokenizer: Any) -> None:
    inputs = make_input(tokenizer)
    assert inputs.process("r", [5], SamplingParams(), 1.0, priority=0)[0].priority == 0
    with pytest.raises(InvalidRequestError, match="--scheduling-policy priority") as caught:
        inputs.process("r", [5], SamplingParams(), 1.0, priority=3)
    assert caught.value.param == "priority"
    inputs.info.scheduling_policy = "priority"
    assert inputs.process("r", [5], SamplingParams(), 1.0, priority=-7)[0].priority == -7
