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
        split_reasoning("granite", "x")
