"""Tool calling on /v1/chat/completions, as vLLM and OpenAI: `tools`, `tool_choice`, `parallel_tool_calls`.

- "none": the model answers in text (the template still sees the tools, as vLLM's default).
- "required" and a named function: a JSON-schema grammar forces valid calls, so even a tiny model produces
  arguments that validate; the output is the calls' JSON (an array of {name, parameters}, or the named function's
  arguments object) and becomes `tool_calls`.
- "auto" (the default when tools are given): the model decides; `--tool-call-parser` reads its calls out of the
  text (needs `--enable-auto-tool-choice`, as vLLM).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pagedserve.sampling_params import StructuredOutputsParams
from pagedserve.server.errors import APIError
from pagedserve.server.openai.protocol import ChatCompletionRequest, NamedToolChoice
from pagedserve.server.tool_parsers import ToolCall, ToolParser, get_tool_parser
from pagedserve.server.tool_parsers.base import new_tool_call_id


@dataclass
class ToolPlan:
    mode: str  # none | auto | required | named
    tools: list[dict[str, Any]] | None = None  # what the chat template receives
    constraint: StructuredOutputsParams | None = None  # required / named
    parser_name: str | None = None  # auto
    function_name: str | None = None  # named
    single_call: bool = (
        False  # parallel_tool_calls false: auto keeps only the first call (vLLM drops the rest)
    )


def plan_tools(body: ChatCompletionRequest, enable_auto: bool, parser_name: str | None) -> ToolPlan:
    """A chat request's tool plan."""
    choice = body.tool_choice
    named = choice.function.name if isinstance(choice, NamedToolChoice) else None
    constrained = body.response_format is not None and body.response_format.type != "text"
    return plan_tool_calls(
        [tool.model_dump(by_alias=True, exclude_none=True) for tool in body.tools or []],
        "named" if named is not None else choice,
        named,
        body.parallel_tool_calls,
        "response_format / structured_outputs"
        if constrained or body.structured_outputs is not None
        else None,
        enable_auto,
        parser_name,
    )


def plan_tool_calls(
    tools: list[dict[str, Any]],
    choice: str | None,
    function_name: str | None,
    parallel_tool_calls: bool | None,
    other_constraint: str | None,
    enable_auto: bool,
    parser_name: str | None,
) -> ToolPlan:
    """The plan for chat-style function tools ({"type": "function", "function": {...}}), whichever API spelled
    them: `choice` none, auto, required or named (then `function_name`); `other_constraint` names the request's
    own output constraint (a 400 with required / named, which constrain the output themselves)."""
    if not tools:
        if choice not in (None, "none"):
            raise APIError(400, "tool_choice needs tools.", param="tool_choice")
        return ToolPlan("none")
    if choice is None:
        choice = "auto"
    if choice == "none":
        return ToolPlan("none", tools)
    if choice != "auto" and other_constraint is not None:
        raise APIError(
            400, f"tool_choice required / named already constrains the output: drop {other_constraint}.",
            param="tool_choice",
        )  # fmt: skip
    if choice == "auto":
        if not enable_auto or parser_name is None:
            raise APIError(
                400, '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set '
                '(or send tool_choice "required", "none" or a named function).', param="tool_choice",
            )  # fmt: skip
        return ToolPlan("auto", tools, parser_name=parser_name, single_call=parallel_tool_calls is False)
    by_name = {t["function"]["name"]: t["function"].get("parameters") or {"type": "object"} for t in tools}
    if choice == "named":
        assert function_name is not None
        if function_name not in by_name:
            raise APIError(
                400, f"tool_choice names {function_name!r}, which is not in tools.", param="tool_choice"
            )
        return ToolPlan(
            "named", tools, StructuredOutputsParams(json=by_name[function_name]), function_name=function_name
        )
    items = [
        {
            "type": "object",
            "properties": {"name": {"const": name}, "parameters": parameters},
            "required": ["name", "parameters"],
            "additionalProperties": False,
        }
        for name, parameters in by_name.items()
    ]
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": items}}
    if parallel_tool_calls is False:
        schema["maxItems"] = 1
    return ToolPlan("required", tools, StructuredOutputsParams(json=schema))


def apply_plan(plan: ToolPlan, params: Any) -> None:
    """What a tool plan asks of the request's sampling: the grammar of required / named calls; special tokens kept
    in the text for a parser whose markers are special tokens (Mistral's [TOOL_CALLS], as vLLM's adjust_request)."""
    if plan.constraint is not None:
        params.structured_outputs = plan.constraint
    if plan.mode == "auto" and plan.parser_name and get_tool_parser(plan.parser_name).keeps_special_tokens:
        params.skip_special_tokens = False


def _required_calls(text: str) -> list[ToolCall] | None:
    try:
        calls = json.loads(text)
    except ValueError:
        return None  # cut short by max_tokens
    return [
        ToolCall(new_tool_call_id(), call["name"], json.dumps(call["parameters"], ensure_ascii=False))
        for call in calls
    ]


def _wire(calls: list[ToolCall]) -> list[dict[str, Any]]:
    return [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in calls
    ]


def message_and_reason(
    plan: ToolPlan, text: str, finish_reason: str | None
) -> tuple[dict[str, Any], str | None]:
    """The assistant message of a whole answer, and its finish_reason ("tool_calls" when the model called)."""
    calls: list[ToolCall] | None = None
    content: str | None = text
    if plan.mode == "named" and finish_reason == "stop":
        calls, content = [ToolCall(new_tool_call_id(), plan.function_name or "", text)], None
    elif plan.mode == "required" and finish_reason == "stop":
        calls = _required_calls(text)
        content = None if calls is not None else text
    elif plan.mode == "auto":
        assert plan.parser_name is not None
        extracted = get_tool_parser(plan.parser_name)(plan.tools).extract_tool_calls(text)
        if extracted.tools_called:
            calls, content = extracted.tool_calls, extracted.content
            if plan.single_call:
                calls = calls[:1]
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if not calls:
        return message, finish_reason
    message["tool_calls"] = _wire(calls)
    # OpenAI: "tool_calls" when the model chose to call (auto, required); a forced named call stops normally.
    return message, finish_reason if plan.mode == "named" else "tool_calls"


@dataclass
class ToolStream:
    """Turns one choice's text deltas into chat-chunk deltas (content and/or tool_calls)."""

    plan: ToolPlan
    parser: ToolParser | None = None
    called: bool = False
    _named_id: str | None = None
    _buffer: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.plan.mode == "auto":
            assert self.plan.parser_name is not None
            self.parser = get_tool_parser(self.plan.parser_name)(self.plan.tools)

    def delta(self, text: str) -> dict[str, Any] | None:
        """The chunk delta for new text, or None when there is nothing to send yet."""
        mode = self.plan.mode
        if mode == "named":
            if not text:
                return None
            self.called = True
            call: dict[str, Any] = {"index": 0, "function": {"arguments": text}}
            if self._named_id is None:
                self._named_id = new_tool_call_id()
                call.update(id=self._named_id, type="function")
                call["function"] = {"name": self.plan.function_name, "arguments": text}
            return {"tool_calls": [call]}
        if mode == "required":
            self._buffer.append(text)  # the array is sent whole once complete
            return None
        if self.parser is None:
            return {"content": text} if text else None
        return self._parsed(self.parser.extract_tool_calls_streaming(text) if text else None)

    def finish(self, finish_reason: str | None) -> tuple[dict[str, Any] | None, str | None]:
        """The last delta of the choice and its finish_reason."""
        if self.plan.mode == "required":
            text = "".join(self._buffer)
            calls = _required_calls(text) if finish_reason == "stop" else None
            if calls is None:
                return ({"content": text} if text else None), finish_reason
            self.called = True
            deltas = [{"index": i, **wire} for i, wire in enumerate(_wire(calls))]
            return {"tool_calls": deltas}, "tool_calls"
        last = self._parsed(self.parser.finish()) if self.parser is not None else None
        if self.called and self.plan.mode == "auto" and finish_reason == "stop":
            finish_reason = "tool_calls"
        return last, finish_reason

    def _parsed(self, message: Any) -> dict[str, Any] | None:
        if message is None:
            return None
        delta: dict[str, Any] = {}
        if message.content:
            delta["content"] = message.content
        pieces = [d for d in message.tool_calls or [] if not (self.plan.single_call and d.index > 0)]
        if pieces:
            self.called = True
            delta["tool_calls"] = [_call_delta(d) for d in pieces]
        return delta or None


def _call_delta(piece: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"index": piece.index}
    function: dict[str, Any] = {}
    if piece.id is not None:
        out.update(id=piece.id, type="function")
    if piece.name is not None:
        function["name"] = piece.name
    if piece.arguments is not None:
        function["arguments"] = piece.arguments
    out["function"] = function
    return out
