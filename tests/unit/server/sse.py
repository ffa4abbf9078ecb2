"""Parse a server-sent-events body into its JSON events (and check it ends with [DONE])."""

from __future__ import annotations

import json
from typing import Any


def parse_sse(text: str) -> list[dict[str, Any]]:
    lines = [line for line in text.split("\n\n") if line.strip()]
    assert lines, "empty stream"
    assert all(line.startswith("data: ") for line in lines), lines
    assert lines[-1] == "data: [DONE]", lines[-1]
    assert lines.count("data: [DONE]") == 1
    return [json.loads(line[len("data: ") :]) for line in lines[:-1]]
