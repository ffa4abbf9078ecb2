"""Tool-call output parsers selected by ``--tool-call-parser`` (vLLM-compatible names)."""

from __future__ import annotations

from .base import DeltaMessage, ExtractedToolCalls, ToolCall, ToolCallDelta, ToolParser
from .hermes import HermesToolParser
from .json_array import GraniteToolParser, Phi4MiniJsonToolParser
from .llama3_json import Llama3JsonToolParser
from .mistral import MistralToolParser
from .pythonic import PythonicToolParser
from .qwen3_coder import Qwen3CoderToolParser

TOOL_PARSERS: dict[str, type[ToolParser]] = {
    GraniteToolParser.name: GraniteToolParser,
    HermesToolParser.name: HermesToolParser,
    Llama3JsonToolParser.name: Llama3JsonToolParser,
    MistralToolParser.name: MistralToolParser,
    PythonicToolParser.name: PythonicToolParser,
    Phi4MiniJsonToolParser.name: Phi4MiniJsonToolParser,
    Qwen3CoderToolParser.name: Qwen3CoderToolParser,
    # vLLM's other names for the same formats: Llama 4 writes Llama 3's JSON calls, or pythonic ones in
    # <|python_start|> ... <|python_end|>, which the pythonic parser reads.
    "llama4_json": Llama3JsonToolParser,
    "llama4_pythonic": PythonicToolParser,
}


def get_tool_parser(name: str) -> type[ToolParser]:
    """The parser class for a ``--tool-call-parser`` name; ValueError for an unknown one."""
    try:
        return TOOL_PARSERS[name]
    except KeyError:
        raise ValueError(
            f"--tool-call-parser {name!r} is not one of: {', '.join(sorted(TOOL_PARSERS))}"
        ) from None


__all__ = [
    "TOOL_PARSERS",
    "DeltaMessage",
    "ExtractedToolCalls",
    "GraniteToolParser",
    "HermesToolParser",
    "Llama3JsonToolParser",
    "MistralToolParser",
    "Phi4MiniJsonToolParser",
    "PythonicToolParser",
    "Qwen3CoderToolParser",
    "ToolCall",
    "ToolCallDelta",
    "ToolParser",
    "get_tool_parser",
]
