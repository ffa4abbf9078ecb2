"""Printing results: the summary block laid out like `vllm bench serve`'s, and markdown tables."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pagedserve.benchmark.metrics import BenchmarkMetrics, percentile_label

WIDTH = 50
METRIC_HEADERS = {
    "ttft": ("TTFT", "Time to First Token"),
    "tpot": ("TPOT", "Time per Output Token (excl. 1st token)"),
    "itl": ("ITL", "Inter-token Latency"),
    "e2el": ("E2EL", "End-to-end Latency"),
}


def _line(label: str, value: Any) -> str:
    if isinstance(value, float):
        return f"{label:<40} {value:<10.2f}"
    return f"{label:<40} {value!s:<10}"


def format_summary(
    metrics: BenchmarkMetrics,
    duration_s: float,
    request_rate: float,
    max_concurrency: int | None,
    metric_names: Sequence[str] = ("ttft", "tpot", "itl", "e2el"),
) -> str:
    lines = [" Serving Benchmark Result ".center(WIDTH, "=")]
    lines.append(_line("Successful requests:", metrics.completed))
    lines.append(_line("Failed requests:", metrics.failed))
    if max_concurrency is not None:
        lines.append(_line("Maximum request concurrency:", max_concurrency))
    if not math.isinf(request_rate):
        lines.append(_line("Request rate configured (RPS):", float(request_rate)))
    lines.append(_line("Benchmark duration (s):", duration_s))
    lines.append(_line("Total input tokens:", metrics.total_input))
    lines.append(_line("Total generated tokens:", metrics.total_output))
    lines.append(_line("Request throughput (req/s):", metrics.request_throughput))
    if metrics.request_goodput is not None:
        lines.append(_line("Request goodput (req/s):", metrics.request_goodput))
    lines.append(_line("Output token throughput (tok/s):", metrics.output_throughput))
    lines.append(_line("Peak output token throughput (tok/s):", metrics.max_output_tokens_per_s))
    lines.append(_line("Peak concurrent requests:", float(metrics.max_concurrent_requests)))
    lines.append(_line("Total Token throughput (tok/s):", metrics.total_token_throughput))
    for name in metric_names:
        short, header = METRIC_HEADERS[name]
        summary = metrics.summaries[name]
        lines.append(header.center(WIDTH, "-"))
        lines.append(_line(f"Mean {short} (ms):", summary.mean_ms))
        lines.append(_line(f"Median {short} (ms):", summary.median_ms))
        for p, value in summary.percentiles_ms:
            lines.append(_line(f"P{percentile_label(p)} {short} (ms):", value))
    if metrics.errors:
        lines.append(" Failure reasons ".center(WIDTH, "-"))
        for reason, count in metrics.errors.most_common():
            lines.append(f"{count:>6} × {reason}")
    if metrics.output_len_source != "usage":
        lines.append(
            f"(output tokens counted by {metrics.output_len_source}: the server sent no usage chunk)"
        )
    lines.append("=" * WIDTH)
    return "\n".join(lines)


def write_json(path: str | Path, data: Any) -> None:
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats get two decimals, None prints as an em dash."""

    def cell(value: Any) -> str:
        if value is None:
            return "—"
        if isinstance(value, float):
            return f"{value:.2f}"
        return str(value)

    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out.extend("| " + " | ".join(cell(v) for v in row) + " |" for row in rows)
    return "\n".join(out)
