"""Tool calls as one JSON array after a tag: IBM Granite 3.x (``--tool-call-parser granite``: ``<|tool_call|>`` or
``<tool_call>``, either may be missing when the tokenizer drops special tokens) and Phi-4-mini
(``--tool-call-parser phi4_mini_json``: ``functools``, required).

Format: optional whitespace, the tag, then one JSON array ``[{"name": "f", "arguments": {...}}, ...]`` and nothing
else. Anything else is plain content, as in vLLM; when it is tool calls, content is None.

Streaming sends content as soon as the output cannot be a call list, and the calls when the output ends (trailing
text would make it content). The whole-text parse is that stream in one piece, so the two agree.
"""

from __future__ import annotations

import json
import re

from .base import ExtractedToolCalls, ToolParser, parse_call_object

_WS = re.compile(r"\s*")


class JsonArrayToolParser(ToolParser):
    """Optional whitespace, one of `tags` (required unless `tag_optional`), then a JSON array of call objects and
    nothing else."""

    tags: tuple[str, ...] = ()
    tag_optional = True

    def extract_tool_calls(self, text: str) -> ExtractedToolCalls:
        return self.extract_by_streaming(text)

    def _advance(self, final: bool) -> None:
        raw = self._raw
        pos = _WS.match(raw).end()  # type: ignore[union-attr]
        tagged = False
        for tag in self.tags:
            if raw.startswith(tag, pos):
                pos, tagged = _WS.match(raw, pos + len(tag)).end(), True  # type: ignore[union-attr]
                break
            if tag.startswith(raw[pos:]) and raw[pos:] and not final:
                return  # a tag still arriving
        if pos == len(raw):
            if final:
                self._fail(0)
            return
        if raw[pos] != "[" or not (tagged or self.tag_optional):
            self._fail(0)
            return
        if not final:
            return
        try:
            value = json.loads(raw[pos:])
        except (ValueError, RecursionError):
            self._fail(0)
            return
        parsed = [parse_call_object(obj, ("arguments",)) for obj in value] if isinstance(value, list) else []
        if not parsed or any(p is None for p in parsed):
            self._fail(0)
            return
        for name, arguments in parsed:  # type: ignore[misc]
            self._emit_call(name, arguments)


class GraniteToolParser(JsonArrayToolParser):
    """``<|tool_call|>[{"name": ..., "arguments": {...}}]`` (Granite 3.x)."""

    name = "granite"
    tags = ("<|tool_call|>", "<tool_call>")


class Phi4MiniJsonToolParser(JsonArrayToolParser):
    """``functools[{"name": ..., "arguments": {...}}]`` (Phi-4-mini-instruct)."""

    name = "phi4_mini_json"
    tags = ("functools",)
    tag_optional = False
