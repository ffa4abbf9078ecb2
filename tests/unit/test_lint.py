"""ruff lint and format are part of the suite, so style drift fails CI like any other regression."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, "src", "tests", "benchmarks"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_ruff_check_is_clean():
    result = run_ruff("check")
    assert result.returncode == 0, result.stdout[-3000:]


def test_ruff_format_is_clean():
    result = run_ruff("format", "--check")
    assert result.returncode == 0, result.stdout[-3000:]
