"""Python-style tool calls (``--tool-call-parser pythonic``: Llama 3.2 / 4, Gemma 3 with a pythonic template).

Format: the whole output is a Python list of calls with keyword arguments whose values are literals,
``[get_weather(city='Paris', days=3), get_time()]``, optionally between ``<|python_start|>`` and
``<|python_end|>`` (Llama 4). Values may be strings, numbers, True / False / None, lists, tuples and dicts;
they become the JSON arguments object. Anything else (text around the list, positional arguments, a
non-literal value, invalid Python) means the whole output is plain content, as in vLLM. When it is tool calls,
content is None.

It is read with Python's own parser (``ast``), never evaluated. Streaming holds the text back while it can
still be the start of such a list (so content starting with ``[1]`` streams at once) and sends the calls when
the output ends, since trailing text would still make the whole output content.
"""

from __future__ import annotations

import ast
import json
import re

from .base import ExtractedToolCalls, ToolParser, calls_or_content

PYTHON_START = "<|python_start|>"
PYTHON_END = "<|python_end|>"
# What the start of a call list looks like: "[" then a name, or nothing yet.
_LIST_START = re.compile(r"\[\s*(?:[A-Za-z_]\w*\s*(?:\(.*)?)?", re.DOTALL)


def _strip_tags(text: str) -> str:
    text = text.strip()
    if text.startswith(PYTHON_START):
        text = text[len(PYTHON_START) :].strip()
        if text.endswith(PYTHON_END):
            text = text[: -len(PYTHON_END)].strip()
    return text


def _parse_calls(text: str) -> list[tuple[str, str]] | None:
    """``(name, arguments JSON)`` of every call, or None if ``text`` is not entirely a call list."""
    body = _strip_tags(text)
    if not (body.startswith("[") and body.endswith("]")):
        return None
    try:
        tree = ast.parse(body, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if not isinstance(tree.body, ast.List) or not tree.body.elts:
        return None
    calls = []
    for node in tree.body.elts:
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.args:
            return None
        arguments = {}
        for keyword in node.keywords:
            if keyword.arg is None:  # **kwargs
                return None
            try:
                arguments[keyword.arg] = ast.literal_eval(keyword.value)
            except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
                return None
        try:  # sets, bytes and complex numbers have no JSON form; neither have inf and nan
            calls.append((node.func.id, json.dumps(arguments, ensure_ascii=False, allow_nan=False)))
        except (TypeError, ValueError):
            return None
    return calls


def _could_start_a_call_list(text: str) -> bool:
    """True while ``text`` (after blanks and the optional tag) may still grow into a call list."""
    body = text.lstrip()
    if PYTHON_START.startswith(body):
        return True  # blank, or a partial tag
    if body.startswith(PYTHON_START):
        body = body[len(PYTHON_START) :].lstrip()
        if not body:
            return True
    return _LIST_START.fullmatch(body) is not None


class PythonicToolParser(ToolParser):
    """``[f(a=1), g(b='x')]`` (Llama 3.2 / 4, Gemma 3)."""

    name = "pythonic"

    def extract_tool_calls(self, text: str) -> ExtractedToolCalls:
        return calls_or_content(_parse_calls(text), text)

    def _advance(self, final: bool) -> None:
        if not final:
            if not _could_start_a_call_list(self._raw):
                self._fail(0)
            return
        parsed = _parse_calls(self._raw)
        if parsed is None:
            self._fail(0)
            return
        for name, arguments in parsed:
            self._emit_call(name, arguments)
