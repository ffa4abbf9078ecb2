"""Qwen3-Coder's XML tool calls (``--tool-call-parser qwen3_coder``).

Format: optional content, then one or more blocks::

    <tool_call>
    <function=get_weather>
    <parameter=city>
    Tokyo
    </parameter>
    </function>
    </tool_call>

A parameter's value is raw text (one leading and one trailing newline dropped) typed by the tool's JSON schema, as
vLLM's parser types it: strings stay text, integers and numbers are read as such, booleans from true / false,
null from null, anything else (objects, arrays) as JSON or a Python literal, else text; a parameter the schema does
not name, or a tool the request did not send, keeps its text. Text before the first block is the content (None
when blank); text between or after blocks is dropped, as the hermes format's is.

Streaming is hermes's (the same blocks): each call once its ``</tool_call>`` (or the end) arrives; a block that is
not a call (no ``<function=name>``) turns the rest into content, from that block on. The whole-text parse is that
stream in one piece, so the two agree.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from .base import ExtractedToolCalls
from .hermes import HermesToolParser

_FUNCTION = re.compile(r"\s*<function=([^>\n]+)>(.*?)(?:</function>|\Z)", re.DOTALL)
_PARAMETER = re.compile(r"<parameter=([^>\n]+)>(.*?)(?:</parameter>|(?=<parameter=)|\Z)", re.DOTALL)


def typed_value(text: str, schema: dict[str, Any] | None) -> Any:
    """A parameter's raw text as the JSON value its schema's type says."""
    kind = (schema or {}).get("type", "string")
    if isinstance(kind, list):  # ["integer", "null"] and the like: the first that is not null
        kind = next((k for k in kind if k != "null"), "string")
    if text.lower() == "null" and kind != "string":
        return None
    if kind in ("string", "str", "text"):
        return text
    try:
        if kind in ("integer", "int"):
            return int(text)
        if kind in ("number", "float"):
            number = float(text)
            return (
                int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number
            )
    except ValueError:
        return text
    if kind in ("boolean", "bool"):
        return text.strip().lower() == "true"
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


class Qwen3CoderToolParser(HermesToolParser):
    """``<tool_call><function=name><parameter=p>value</parameter></function></tool_call>`` (Qwen3-Coder): hermes's
    blocks with an XML body."""

    name = "qwen3_coder"

    def __init__(self, tools: list[dict[str, Any]] | None = None) -> None:
        super().__init__(tools)
        self._schemas = {
            t["function"]["name"]: (t["function"].get("parameters") or {}).get("properties") or {}
            for t in self.tools
            if isinstance(t.get("function"), dict) and "name" in t["function"]
        }

    def extract_tool_calls(self, text: str) -> ExtractedToolCalls:
        return self.extract_by_streaming(text)

    def _parse_call(self, body: str) -> tuple[str, str] | None:
        match = _FUNCTION.match(body)
        if match is None:
            return None
        name = match.group(1).strip()
        properties = self._schemas.get(name, {})
        arguments = {}
        for param in _PARAMETER.finditer(match.group(2)):
            key, value = param.group(1).strip(), param.group(2)
            value = value[1:] if value.startswith("\n") else value
            value = value[:-1] if value.endswith("\n") else value
            arguments[key] = typed_value(value, properties.get(key))
        return name, json.dumps(arguments, ensure_ascii=False)
