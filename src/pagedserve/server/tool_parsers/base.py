"""Shared types and the streaming machinery of the ``--tool-call-parser`` output parsers.

A parser turns a model's raw text into OpenAI tool calls, either all at once (``extract_tool_calls``) or
from successive text deltas of one output (``extract_tool_calls_streaming`` then ``finish``). Streaming and
non-streaming agree: the reassembled deltas give the same content and the same calls as the whole text.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass
class ToolCall:
    """One complete tool call; ``arguments`` is the JSON text of the arguments object."""

    id: str
    name: str
    arguments: str


@dataclass
class ExtractedToolCalls:
    """Result of parsing a whole output: the calls (if any) and the remaining text content."""

    tools_called: bool
    tool_calls: list[ToolCall]
    content: str | None


@dataclass
class ToolCallDelta:
    """A streamed piece of call ``index``: the first one has ``id`` and ``name``, later ones argument text."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str | None = None


@dataclass
class DeltaMessage:
    """What one streaming step emits: content text and/or tool-call pieces."""

    content: str | None = None
    tool_calls: list[ToolCallDelta] = field(default_factory=list)


def new_tool_call_id() -> str:
    """An id like vLLM's: ``chatcmpl-tool-`` and 32 hex characters."""
    return f"chatcmpl-tool-{uuid.uuid4().hex}"


def parse_call_object(obj: Any, arg_keys: Sequence[str]) -> tuple[str, str] | None:
    """``(name, arguments JSON)`` from a decoded ``{"name": ..., <arg key>: {...}}``, or None if it isn't one.

    Missing or null arguments mean ``{}``; arguments given as a JSON string holding an object are accepted.
    """
    if not isinstance(obj, dict):
        return None
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return None
    args: Any = None
    for key in arg_keys:
        if key in obj:
            args = obj[key]
            break
    if args is None:
        args = {}
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except (ValueError, RecursionError):
            return None
    if not isinstance(args, dict):
        return None
    return name, json.dumps(args, ensure_ascii=False)


def calls_or_content(parsed: list[tuple[str, str]] | None, text: str) -> ExtractedToolCalls:
    """A whole output that is either entirely tool calls (``parsed``: name and arguments of each; content None) or,
    when ``parsed`` is None, entirely content."""
    if parsed is None:
        return ExtractedToolCalls(tools_called=False, tool_calls=[], content=text)
    calls = [ToolCall(id=new_tool_call_id(), name=name, arguments=args) for name, args in parsed]
    return ExtractedToolCalls(tools_called=True, tool_calls=calls, content=None)


def partial_prefix_len(text: str, marker: str, start: int = 0) -> int:
    """Length of the longest proper prefix of ``marker`` that ``text[start:]`` ends with."""
    for n in range(min(len(marker) - 1, len(text) - start), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0


class ToolParser:
    """Base class: one instance per output sequence (streaming keeps state in it).

    Subclasses implement ``extract_tool_calls`` and ``_advance``, which consumes ``self._raw`` (all text so
    far) and calls ``_emit_content``, ``_emit_call`` or ``_fail``. After ``_fail`` the rest of the output
    streams as plain content: the whole text if no call was emitted yet, otherwise from the failure point.
    """

    name: ClassVar[str] = ""
    keeps_special_tokens: ClassVar[bool] = False
    """The format's markers are special tokens (Mistral's [TOOL_CALLS]): requests with tools keep special tokens in
    their text (vLLM's adjust_request)."""

    @staticmethod
    def new_id() -> str:
        """A tool call id in the form the model's chat template accepts back."""
        return new_tool_call_id()

    def __init__(self, tools: list[dict[str, Any]] | None = None) -> None:
        """tools: the request's function tools (OpenAI's shape), for formats whose argument values are typed by
        the tool's schema (qwen3_coder)."""
        self.tools = tools or []
        self.tool_calls: list[ToolCall] = []  # the calls announced so far while streaming
        self._raw = ""
        self._content_upto = 0  # self._raw[:this] has been emitted as content (or dropped)
        self._has_text = False  # some non-whitespace content has been emitted
        self._failed = False
        self._finished = False
        self._out_content: list[str] = []
        self._out_calls: list[ToolCallDelta] = []

    def extract_tool_calls(self, text: str) -> ExtractedToolCalls:
        """Parse a whole (non-streamed) output."""
        raise NotImplementedError

    def extract_tool_calls_streaming(self, delta_text: str) -> DeltaMessage | None:
        """Feed the next text delta; return what can be emitted now, or None."""
        if self._finished:
            raise RuntimeError("extract_tool_calls_streaming() called after finish()")
        self._raw += delta_text
        self._step(final=False)
        return self._flush()

    def finish(self) -> DeltaMessage | None:
        """End of the output: flush held-back text and any complete unterminated call."""
        if self._finished:
            return None
        self._step(final=True)
        self._finished = True
        return self._flush()

    def _advance(self, final: bool) -> None:
        raise NotImplementedError

    def _step(self, final: bool) -> None:
        if not self._failed:
            self._advance(final)
        if self._failed:
            self._emit_content(len(self._raw), hold_blank=False)

    def _emit_content(self, end: int, hold_blank: bool) -> None:
        """Emit ``self._raw[content_upto:end]``; with ``hold_blank``, hold it while all content is blank."""
        if end <= self._content_upto:
            return
        chunk = self._raw[self._content_upto : end]
        if not self._has_text and not chunk.strip():
            if hold_blank:
                return
        else:
            self._has_text = True
        self._out_content.append(chunk)
        self._content_upto = end

    def extract_by_streaming(self, text: str) -> ExtractedToolCalls:
        """A whole output parsed as one streamed delta: the same calls and content as streaming by construction
        (parsers whose streaming semantics are the definition)."""
        messages = [self.extract_tool_calls_streaming(text), self.finish()]
        content = "".join(m.content or "" for m in messages if m is not None) or None
        return ExtractedToolCalls(bool(self.tool_calls), list(self.tool_calls), content)

    def _emit_call(self, name: str, arguments: str) -> None:
        call = ToolCall(id=self.new_id(), name=name, arguments=arguments)
        index = len(self.tool_calls)
        self.tool_calls.append(call)
        self._out_calls.append(ToolCallDelta(index=index, id=call.id, name=name, arguments=""))
        self._out_calls.append(ToolCallDelta(index=index, arguments=arguments))

    def _fail(self, at: int) -> None:
        """Not a (valid) tool call from ``at`` on: the rest becomes content."""
        self._failed = True
        if self.tool_calls:
            self._content_upto = max(self._content_upto, at)

    def _flush(self) -> DeltaMessage | None:
        content = "".join(self._out_content)
        calls = self._out_calls
        self._out_content, self._out_calls = [], []
        if not content and not calls:
            return None
        return DeltaMessage(content=content or None, tool_calls=calls)
