"""Reasoning parsers (vLLM's --reasoning-parser deepseek_r1 / qwen3): whole texts, and streamed deltas that add up
to the same split at every cut, with no half tag ever sent."""

from __future__ import annotations

import pytest

from pagedserve.server.reasoning import ReasoningStream, split_reasoning

CASES = [
    # parser, text, (reasoning, content)
    ("qwen3", "<think>\nadd them</think>\n\nThe sum is 4.", ("\nadd them", "\n\nThe sum is 4.")),
    ("qwen3", "The sum is 4.", ("", "The sum is 4.")),  # enable_thinking false: no tags at all
    ("qwen3", "<think>still thinking", ("still thinking", "")),  # cut short: all reasoning
    ("qwen3", "a </think> b", ("", "a </think> b")),  # no opening tag: qwen3 never split
    ("deepseek_r1", "opened in the prompt</think>Answer", ("opened in the prompt", "Answer")),
    ("deepseek_r1", "<think>r</think>c", ("r", "c")),
    ("deepseek_r1", "no end yet", ("no end yet", "")),
    ("deepseek_r1", "", ("", "")),
]


@pytest.mark.parametrize(("parser", "text", "expected"), CASES)
def test_whole_text_split(parser: str, text: str, expected: tuple[str, str]) -> None:
    assert split_reasoning(parser, text) == expected


@pytest.mark.parametrize(("parser", "text", "expected"), CASES)
def test_streamed_deltas_add_up_at_every_cut(parser: str, text: str, expected: tuple[str, str]) -> None:
    for step in (1, 2, 3, 5):
        stream = ReasoningStream(parser)
        reasoning = content = ""
        for end in range(step, len(text) + step, step):
            piece_r, piece_c = stream.delta(text[:end], final=end >= len(text))
            for tag in ("<think>", "</think>"):
                assert tag not in piece_r and tag not in piece_c
            reasoning, content = reasoning + piece_r, content + piece_c
        assert (reasoning, content) == expected, step


def test_a_partial_tag_is_held_back_until_it_is_decided() -> None:
    stream = ReasoningStream("deepseek_r1")
    assert stream.delta("abc</thi", final=False) == ("abc", "")
    assert stream.delta("abc</thinking about it", final=False) == ("</thinking about it", "")
    assert split_reasoning("qwen3", "<thi", final=False) == ("", "")
    with pytest.raises(ValueError, match="reasoning parser"):
        split_reasoning("hunyuan_a13b", "x")


GRANITE_CASES = [
    (
        "Here is my thought process:\nAdd 2 and 2.\nHere is my response:\nThe sum is 4.",
        ("\nAdd 2 and 2.\n", "\nThe sum is 4."),
    ),
    ("  Here's my thought process: r Here's my response: c", (" r ", " c")),
    ("The sum is 4.", ("", "The sum is 4.")),  # thinking off: no markers
    ("Here is my thought process: cut short", (" cut short", "")),
    ("Here is my answer: 4", ("", "Here is my answer: 4")),
    ("", ("", "")),
]


@pytest.mark.parametrize(("text", "expected"), GRANITE_CASES)
def test_granite_markers_split_whole_and_streamed(text: str, expected: tuple[str, str]) -> None:
    """Granite 3.2 / 3.3 (vLLM's --reasoning-parser granite): plain-text markers, never sent in a delta."""
    assert split_reasoning("granite", text) == expected
    for step in (1, 2, 3, 7):
        stream = ReasoningStream("granite")
        reasoning = content = ""
        for end in range(step, len(text) + step, step):
            piece_r, piece_c = stream.delta(text[:end], final=end >= len(text))
            for marker in ("my thought process:", "my response:"):
                assert marker not in piece_r and (marker not in piece_c or not expected[0])
            reasoning, content = reasoning + piece_r, content + piece_c
        assert (reasoning, content) == expected, step
