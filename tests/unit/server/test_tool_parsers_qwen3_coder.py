"""The qwen3_coder tool-call parser: <function=...> blocks whose parameters the request's tool schemas type."""

from __future__ import annotations

import json

from pagedserve.server.tool_parsers import (
    Qwen3CoderToolParser,
)

from .tool_parser_cases import (
    QWEN3_CODER_TEXTS,
    coder_call,
    whole,
)


def test_qwen3_coder_types_values_by_the_tools_schema() -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "run",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "code": {"type": "string"}, "times": {"type": "integer"}, "scale": {"type": "number"},
                        "dry": {"type": "boolean"}, "env": {"type": "object"}, "tags": {"type": "array"},
                        "limit": {"type": ["integer", "null"]},
                    },
                },
            },
        }
    ]  # fmt: skip
    text = "Running it.\n" + coder_call(
        "run", code="print(1)\nprint(2)", times="3", scale="0.5", dry="True", env='{"A": "1"}',
        tags="['x', 'y']", limit="null", extra="42",
    )  # fmt: skip
    result = Qwen3CoderToolParser(tools).extract_tool_calls(text)
    assert result.content == "Running it.\n" and [c.name for c in result.tool_calls] == ["run"]
    assert json.loads(result.tool_calls[0].arguments) == {
        "code": "print(1)\nprint(2)", "times": 3, "scale": 0.5, "dry": True, "env": {"A": "1"},
        "tags": ["x", "y"], "limit": None, "extra": "42",
    }  # fmt: skip
    # A parameter or tool the request did not describe keeps its text (vLLM: typed by the schema only).
    untyped = Qwen3CoderToolParser().extract_tool_calls(coder_call("f", n="3", s="hello"))
    assert json.loads(untyped.tool_calls[0].arguments) == {"n": "3", "s": "hello"}


def test_qwen3_coder_blocks_and_content() -> None:
    content, calls = whole(Qwen3CoderToolParser, QWEN3_CODER_TEXTS[5])
    assert content == "I'll check.\n" and [name for name, _ in calls] == ["f", "g"]
    assert json.loads(calls[1][1]) == {"code": "if a < b:\n    return '</x>'"}
    assert whole(Qwen3CoderToolParser, QWEN3_CODER_TEXTS[8]) == (QWEN3_CODER_TEXTS[8], [])
    content, calls = whole(Qwen3CoderToolParser, QWEN3_CODER_TEXTS[9])  # a bad block after a sent call
    assert [name for name, _ in calls] == ["f"] and content == "<tool_call>garbage</tool_call> tail"
