"""Reasoning outputs (vLLM's `--reasoning-parser`): a thinking model's `<think>...</think>` text goes to the message's
`reasoning` field, the rest to `content`.

- deepseek_r1 (DeepSeek-R1, QwQ): the template may open `<think>` in the prompt, so everything up to `</think>` is
  reasoning, with or without a `<think>` in the output; no `</think>` yet: all reasoning.
- qwen3: the model opens `<think>` itself; output that does not start with it is all content (thinking turned off
  with chat_template_kwargs {"enable_thinking": false}: the template closed an empty block in the prompt).
- granite (Granite 3.2 / 3.3 with chat_template_kwargs {"thinking": true}): plain-text markers, "Here is my thought
  process:" (or "Here's ...") opens the reasoning and "Here is my response:" (or "Here's ...") the content; output
  that does not start with the first (leading blanks aside) is all content, as qwen3's.

Streaming parses the whole text so far on each step and sends what grew; a trailing piece that may still become a
tag (`</thi`) is held back until the next step or the end, so deltas never carry half a tag.
"""

from __future__ import annotations

from dataclasses import dataclass

REASONING_PARSERS = ("deepseek_r1", "qwen3", "granite")
THINK_START, THINK_END = "<think>", "</think>"
GRANITE_THOUGHT = ("Here is my thought process:", "Here's my thought process:")
GRANITE_RESPONSE = ("Here is my response:", "Here's my response:")


def split_reasoning(parser: str, text: str, final: bool = True) -> tuple[str, str]:
    """(reasoning, content) of a choice's text; `final` False while more text may follow."""
    if parser not in REASONING_PARSERS:
        raise ValueError(f"reasoning parser must be one of {', '.join(REASONING_PARSERS)}, got {parser!r}")
    if parser == "granite":
        return _split_granite(text, final)
    if not final and text and THINK_START.startswith(text) and text != THINK_START:
        return "", ""  # may still become the opening tag
    body = text
    if body.startswith(THINK_START):
        body = body[len(THINK_START) :]
    elif parser == "qwen3":
        return "", text
    end = body.find(THINK_END)
    if end >= 0:
        return body[:end], body[end + len(THINK_END) :]
    return (body if final else _without_partial_tag(body, THINK_END)), ""


def _split_granite(text: str, final: bool) -> tuple[str, str]:
    head = text.lstrip()
    opening = next((marker for marker in GRANITE_THOUGHT if head.startswith(marker)), None)
    if opening is None:
        if not final and any(marker.startswith(head) for marker in GRANITE_THOUGHT):
            return "", ""  # blank so far, or may still become the opening marker
        return "", text
    body = head[len(opening) :]
    ends = [(body.find(marker), marker) for marker in GRANITE_RESPONSE if marker in body]
    if ends:
        at, marker = min(ends)
        return body[:at], body[at + len(marker) :]
    return (body if final else _without_partial_tag(body, *GRANITE_RESPONSE)), ""


def _without_partial_tag(text: str, *tags: str) -> str:
    """`text` less its longest suffix that is a proper prefix of one of `tags`."""
    for size in range(min(max(map(len, tags)) - 1, len(text)), 0, -1):
        if any(tag.startswith(text[-size:]) and len(tag) > size for tag in tags):
            return text[:-size]
    return text


@dataclass
class ReasoningStream:
    """One streamed choice: the reasoning and content each step adds."""

    parser: str
    sent_reasoning: int = 0
    sent_content: int = 0

    def delta(self, text: str, final: bool) -> tuple[str, str]:
        """(new reasoning, new content) given the choice's whole text so far."""
        reasoning, content = split_reasoning(self.parser, text, final)
        new = reasoning[self.sent_reasoning :], content[self.sent_content :]
        self.sent_reasoning, self.sent_content = len(reasoning), len(content)
        return new
