"""Check results and how preflight prints them: PASS / WARN / FAIL with what was seen, needed and the fix."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import Enum

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_UNREACHABLE = 2


class Status(str, Enum):
    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    observed: str
    """What the check saw in the cluster (or on the host)."""
    required: str
    """What pagedserve needs (minimum, and the recommended level where the seed gives one)."""
    fix: str = ""
    """The command or documentation link that fixes a WARN or FAIL."""


def exit_code(results: list[CheckResult]) -> int:
    return EXIT_FAILED if any(r.status is Status.FAIL for r in results) else EXIT_OK


def render_table(results: list[CheckResult]) -> str:
    width = max((len(r.name) for r in results), default=10)
    lines = []
    for r in results:
        lines.append(f"{r.status.value:<5} {r.name:<{width}}  {r.observed}")
        pad = " " * (6 + width + 2)
        lines.append(f"{pad}needs: {r.required}")
        if r.fix and r.status is not Status.PASS:
            lines.append(f"{pad}fix:   {r.fix}")
    counts = {s: sum(r.status is s for r in results) for s in Status}
    lines.append("")
    lines.append(
        f"{counts[Status.PASS]} passed, {counts[Status.WARN]} warnings, {counts[Status.FAIL]} failed"
    )
    return "\n".join(lines)


def render_json(results: list[CheckResult], context: dict[str, object]) -> str:
    checks = [{**asdict(r), "status": r.status.value} for r in results]
    return json.dumps({**context, "exit_code": exit_code(results), "checks": checks}, indent=2)
