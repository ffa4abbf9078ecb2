"""Mistral tool calls (``--tool-call-parser mistral``).

Format: optional content, then ``[TOOL_CALLS]`` (a special token: requests with tools keep special tokens in their
text, as vLLM's parser asks) and either a JSON array ``[{"name": "f", "arguments": {...}}, ...]`` (Mistral 7B v0.3,
Mixtral, NeMo, Small 3.1) or, from the v11 tokenizer on (Small 3.2, Magistral, Devstral), one or more
``name[ARGS]{...}`` separated by ``[TOOL_CALLS]``. Text before the first marker is the content (None when blank).
Tool call ids are 9 letters and digits: Mistral's chat templates refuse any other.

Streaming sends content until the marker; a JSON array's calls when the output ends (trailing text would make it
content), a ``name[ARGS]{...}`` call once the next ``[TOOL_CALLS]`` or the end arrives. What is not a call turns
the rest into content, from the marker when no call was sent yet. The whole-text parse is that stream in one
piece, so the two agree.
"""

from __future__ import annotations

import json
import random
import re
import string
from typing import Any

from .base import ExtractedToolCalls, ToolParser, parse_call_object, partial_prefix_len

BOT = "[TOOL_CALLS]"
ARGS = "[ARGS]"
_NAME = re.compile(r"\s*([A-Za-z0-9_.\-]+)")
_DECODER = json.JSONDecoder()
_ALPHANUMERIC = string.ascii_letters + string.digits
_CONTENT, _BODY, _NAMED = "content", "body", "named"


class MistralToolParser(ToolParser):
    """``[TOOL_CALLS][{...}]`` or ``[TOOL_CALLS]name[ARGS]{...}`` (Mistral, Mixtral, Ministral, Magistral)."""

    name = "mistral"
    keeps_special_tokens = True

    @staticmethod
    def new_id() -> str:
        return "".join(random.choices(_ALPHANUMERIC, k=9))

    def __init__(self, tools: list[dict[str, Any]] | None = None) -> None:
        super().__init__(tools)
        self._state = _CONTENT
        self._marker = 0  # raw index of the first [TOOL_CALLS]
        self._pos = 0  # where the next call starts ([ARGS] format)

    def extract_tool_calls(self, text: str) -> ExtractedToolCalls:
        return self.extract_by_streaming(text)

    def _advance(self, final: bool) -> None:
        raw = self._raw
        if self._state == _CONTENT:
            start = raw.find(BOT, self._content_upto)
            if start == -1:
                keep = 0 if final else partial_prefix_len(raw, BOT, self._content_upto)
                self._emit_content(len(raw) - keep, hold_blank=not final)
                return
            self._emit_content(start, hold_blank=True)
            self._content_upto = max(self._content_upto, start)  # blank content before the marker: none
            self._state, self._marker, self._pos = _BODY, start, start + len(BOT)
        if self._state == _BODY:
            body = raw[self._pos :].lstrip()
            if not body:
                if final:
                    self._fail(self._marker)
                return
            if body[0] not in "[{":
                self._state = _NAMED
            elif not final:
                return  # a JSON array is whole only at the end (trailing text would make it content)
            else:
                self._finish_json(raw[self._pos :])
                return
        while True:  # name[ARGS]{...} calls, each ended by the next marker or the end
            match = _NAME.match(raw, self._pos)
            args_at = match.end() if match else -1
            if match is None or not raw.startswith(ARGS, args_at):
                if (
                    final
                    or (match and len(raw) - args_at >= len(ARGS))
                    or (not match and raw[self._pos :].strip())
                ):
                    self._fail(self._pos if self.tool_calls else self._marker)
                return
            try:
                arguments, end = _DECODER.raw_decode(raw, args_at + len(ARGS))
            except (ValueError, RecursionError):
                if final:
                    self._fail(self._pos if self.tool_calls else self._marker)
                return
            rest = raw[end:]
            stripped = rest.lstrip()
            if not stripped:
                if not final:
                    return
                next_pos = len(raw)
            elif stripped.startswith(BOT):
                next_pos = len(raw) - len(stripped) + len(BOT)
            elif BOT.startswith(stripped) and not final:
                return  # a marker still arriving
            else:
                self._fail(self._pos if self.tool_calls else self._marker)
                return
            parsed = parse_call_object({"name": match.group(1), "arguments": arguments}, ("arguments",))
            if parsed is None:
                self._fail(self._pos if self.tool_calls else self._marker)
                return
            self._emit_call(*parsed)
            self._pos = next_pos
            if next_pos == len(raw):
                return

    def _finish_json(self, body: str) -> None:
        try:
            value = json.loads(body)
        except (ValueError, RecursionError):
            self._fail(self._marker)
            return
        objects = value if isinstance(value, list) else [value]
        parsed = [parse_call_object(obj, ("arguments",)) for obj in objects]
        if not parsed or any(p is None for p in parsed):
            self._fail(self._marker)
            return
        for name, arguments in parsed:  # type: ignore[misc]
            self._emit_call(name, arguments)
