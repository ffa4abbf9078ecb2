"""Hermes / Qwen tool calls (``--tool-call-parser hermes``).

Format: optional text, then one or more blocks ``<tool_call>\\n{"name": "f", "arguments": {...}}\\n</tool_call>``;
the last block may be unterminated. Text before the first block is the content (None if blank); text
between or after blocks is dropped, as vLLM does. Invalid JSON in any block means no tool calls at all:
the whole text is content.

Streaming sends each call once its ``</tool_call>`` (or the end of the output) arrives; an invalid block
after a call was already sent can't take it back, so from that block on the rest streams as content.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .base import (
    ExtractedToolCalls,
    ToolCall,
    ToolParser,
    new_tool_call_id,
    parse_call_object,
    partial_prefix_len,
)

START = "<tool_call>"
END = "</tool_call>"
_CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>|<tool_call>(.*)", re.DOTALL)
_ARG_KEYS = ("arguments",)

_CONTENT, _CALL, _BETWEEN = "content", "call", "between"


def _parse_body(body: str) -> tuple[str, str] | None:
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return parse_call_object(obj, _ARG_KEYS)


class HermesToolParser(ToolParser):
    """``<tool_call>{json}</tool_call>`` blocks (Hermes 2 Pro, Qwen 2.5 / 3)."""

    name = "hermes"

    def __init__(self, tools: list[dict[str, Any]] | None = None) -> None:
        super().__init__(tools)
        self._state = _CONTENT
        self._pos = 0  # next raw index to look at in the content / between states
        self._tag_start = 0  # raw index of the current call's <tool_call>
        self._body_start = 0
        self._scan_from = 0  # where to look for </tool_call> next

    def _parse_call(self, body: str) -> tuple[str, str] | None:
        """(name, arguments JSON) of one block's body, None when it is not a call (qwen3_coder reads its XML)."""
        return _parse_body(body)

    def extract_tool_calls(self, text: str) -> ExtractedToolCalls:
        first = text.find(START)
        if first == -1:
            return ExtractedToolCalls(tools_called=False, tool_calls=[], content=text)
        calls: list[ToolCall] = []
        for match in _CALL_RE.finditer(text):
            body = match.group(1) if match.group(1) is not None else match.group(2)
            parsed = _parse_body(body)
            if parsed is None:
                return ExtractedToolCalls(tools_called=False, tool_calls=[], content=text)
            calls.append(ToolCall(id=new_tool_call_id(), name=parsed[0], arguments=parsed[1]))
        content = text[:first]
        return ExtractedToolCalls(
            tools_called=True, tool_calls=calls, content=content if content.strip() else None
        )

    def _advance(self, final: bool) -> None:
        raw = self._raw
        while True:
            if self._state != _CALL:
                start = raw.find(START, self._pos)
                if start == -1:
                    keep = 0 if final else partial_prefix_len(raw, START, self._pos)
                    self._pos = len(raw) - keep
                    if self._state == _CONTENT:
                        self._emit_content(self._pos, hold_blank=not final)
                    return
                if self._state == _CONTENT:
                    self._emit_content(start, hold_blank=True)
                self._state = _CALL
                self._tag_start = start
                self._body_start = self._scan_from = start + len(START)
                continue
            end = raw.find(END, self._scan_from)
            if end == -1 and not final:
                self._scan_from = max(self._body_start, len(raw) - len(END) + 1)
                return
            body_end, next_pos = (len(raw), len(raw)) if end == -1 else (end, end + len(END))
            parsed = self._parse_call(raw[self._body_start : body_end])
            if parsed is None:
                self._fail(self._tag_start)
                return
            self._emit_call(*parsed)
            self._state = _BETWEEN
            self._pos = next_pos
