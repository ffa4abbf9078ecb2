"""The pythonic tool-call parser (--tool-call-parser pythonic, llama4_pythonic): Python call lists, read as literals
and never evaluated."""

from __future__ import annotations

import pytest

from pagedserve.server.tool_parsers import (
    PythonicToolParser,
)

from .tool_parser_cases import (
    PYTHONIC_TEXTS,
    args_text,
    whole,
)


def test_pythonic_calls_become_json_arguments() -> None:
    content, calls = whole(PythonicToolParser, PYTHONIC_TEXTS[6])
    assert content is None
    assert calls == [
        ("f", args_text({"a": 1, "b": [1, 2.5, None, True], "c": {"k": ["x", "y"]}})),
        ("g", "{}"),
    ]
    assert whole(PythonicToolParser, PYTHONIC_TEXTS[5]) == (
        None,
        [("get_weather", args_text({"city": "東京", "unit": "celsius", "days": 3}))],
    )
    assert whole(PythonicToolParser, PYTHONIC_TEXTS[7]) == (None, [("f", args_text({"s": "])}[", "n": -3}))])
    assert whole(PythonicToolParser, PYTHONIC_TEXTS[18])[1] == [("get_weather", args_text({"city": "Paris"}))]


@pytest.mark.parametrize("index", [2, 3, 4, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 19])
def test_pythonic_not_calls_is_content(index: int) -> None:
    """Text around the list, positional or non-literal arguments, values without a JSON form, attribute calls and
    unfinished lists are all plain content (never evaluated)."""
    text = PYTHONIC_TEXTS[index]
    assert whole(PythonicToolParser, text) == (text, [])


def test_pythonic_streams_content_as_soon_as_it_cannot_be_a_call_list() -> None:
    parser = PythonicToolParser()
    assert parser.extract_tool_calls_streaming("[get_weather(city=") is None  # held: may be a call
    parser = PythonicToolParser()
    msg = parser.extract_tool_calls_streaming("[1] Par")
    assert msg is not None and msg.content == "[1] Par" and not msg.tool_calls
