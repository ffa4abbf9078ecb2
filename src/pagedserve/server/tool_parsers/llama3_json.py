"""Llama 3.x JSON tool calls (``--tool-call-parser llama3_json``).

Format: optional whitespace and ``<|python_tag|>``, then one or more JSON objects
``{"name": "f", "parameters": {...}}`` (``"arguments"`` also accepted) separated by ``;`` and optional
whitespace. Anything else before the first ``{``, invalid JSON, or trailing text means the whole output
is plain content, as in vLLM. When it is tool calls, content is None.

Streaming announces a call once it is followed by ``;`` or the end of the output, so trailing text after
the last call still turns the whole output into content; only an invalid object after a ``;`` comes too
late (the calls before it are already sent; the rest then streams as content).
"""

from __future__ import annotations

import json
import re
from typing import Any

from .base import ExtractedToolCalls, ToolParser, calls_or_content, parse_call_object

PYTHON_TAG = "<|python_tag|>"
_WS = re.compile(r"\s*")
_DECODER = json.JSONDecoder()
_ARG_KEYS = ("arguments", "parameters")

_START, _OBJECT, _SEPARATOR = "start", "object", "separator"


def _skip_ws(text: str, pos: int) -> int:
    match = _WS.match(text, pos)
    return match.end() if match else pos


def _parse_calls(text: str) -> list[tuple[str, str]] | None:
    """``(name, arguments)`` of every call, or None if ``text`` is not entirely tool calls."""
    pos = _skip_ws(text, 0)
    if text.startswith(PYTHON_TAG, pos):
        pos = _skip_ws(text, pos + len(PYTHON_TAG))
    if not text.startswith("{", pos):
        return None
    calls: list[tuple[str, str]] = []
    while pos < len(text):
        try:
            obj, pos = _DECODER.raw_decode(text, pos)
        except (ValueError, RecursionError):
            return None
        parsed = parse_call_object(obj, _ARG_KEYS)
        if parsed is None:
            return None
        calls.append(parsed)
        pos = _skip_ws(text, pos)
        if pos == len(text):
            break
        if text[pos] != ";":
            return None
        pos = _skip_ws(text, pos + 1)
    return calls


class Llama3JsonToolParser(ToolParser):
    """``<|python_tag|>{"name": ..., "parameters": {...}}; {...}`` (Llama 3.1 / 3.2 / 3.3)."""

    name = "llama3_json"

    def __init__(self, tools: list[dict[str, Any]] | None = None) -> None:
        super().__init__(tools)
        self._state = _START
        self._pos = 0
        self._tried_upto = 0  # raw length at the last failed decode of the current object
        self._pending: tuple[str, str] | None = None  # decoded call waiting for its ';' or the end

    def extract_tool_calls(self, text: str) -> ExtractedToolCalls:
        return calls_or_content(_parse_calls(text), text)

    def _advance(self, final: bool) -> None:
        raw = self._raw
        if self._state == _START:
            pos = _skip_ws(raw, 0)
            if raw.startswith(PYTHON_TAG, pos):
                pos = _skip_ws(raw, pos + len(PYTHON_TAG))
            elif PYTHON_TAG.startswith(raw[pos:]) and not final:
                return  # blank so far, or a partial python tag
            if pos == len(raw) and not final:
                return
            if pos == len(raw) or raw[pos] != "{":
                self._fail(0)
                return
            self._state, self._pos = _OBJECT, pos
        while True:
            pos = _skip_ws(raw, self._pos)
            if pos == len(raw):
                if final and self._pending is not None:
                    self._emit_call(*self._pending)  # the end after a call, or a trailing ';'
                    self._pending = None
                return
            if self._state == _SEPARATOR:
                if raw[pos] != ";":
                    self._fail(pos)
                    return
                assert self._pending is not None
                self._emit_call(*self._pending)
                self._pending = None
                self._state, self._pos = _OBJECT, pos + 1
                continue
            if raw[pos] != "{":
                self._fail(pos)
                return
            if not final and "}" not in raw[self._tried_upto :]:
                return  # a decode can only newly succeed once a new '}' has arrived
            try:
                obj, end = _DECODER.raw_decode(raw, pos)
            except (ValueError, RecursionError):
                if final:
                    self._fail(pos)
                else:
                    self._tried_upto = len(raw)
                return
            parsed = parse_call_object(obj, _ARG_KEYS)
            if parsed is None:
                self._fail(pos)
                return
            self._pending = parsed
            self._state, self._pos = _SEPARATOR, end
