"""Metric arithmetic of `vllm bench serve`, on the timings the request functions collected.

Failed requests count in `failed` and nowhere else: no latency sample, no tokens. TPOT needs two or more output
tokens; a one-token request adds no TPOT sample but counts as TPOT 0 for goodput, as vLLM does.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from pagedserve.benchmark.request_funcs import RequestFuncOutput

METRICS = ("ttft", "tpot", "itl", "e2el")
GOODPUT_METRICS = ("ttft", "tpot", "e2el")


@dataclass
class MetricSummary:
    mean_ms: float
    median_ms: float
    std_ms: float
    percentiles_ms: list[tuple[float, float]]  # (percentile, value)


@dataclass
class BenchmarkMetrics:
    completed: int
    failed: int
    total_input: int
    total_output: int
    request_throughput: float
    request_goodput: float | None  # None when no goodput SLO was given
    output_throughput: float
    total_token_throughput: float
    max_output_tokens_per_s: float
    max_concurrent_requests: int
    summaries: dict[str, MetricSummary]  # ttft, tpot, itl, e2el
    output_lens: list[int]  # per request, 0 for failures
    errors: Counter[str] = field(default_factory=Counter)
    output_len_source: str = "usage"  # usage | tokenizer | chunks (when a server sends no usage chunk)


def parse_goodput(items: Sequence[str] | None) -> dict[str, float]:
    """`["ttft:500", "tpot:50"]` → {"ttft": 500.0, "tpot": 50.0} (milliseconds)."""
    slos: dict[str, float] = {}
    for item in items or []:
        name, sep, value = item.partition(":")
        if not sep or name not in GOODPUT_METRICS:
            raise ValueError(
                f"--goodput takes METRIC:MS with METRIC one of {', '.join(GOODPUT_METRICS)}; got {item!r}"
            )
        try:
            slos[name] = float(value)
        except ValueError:
            raise ValueError(f"--goodput {item!r}: {value!r} is not a number of milliseconds") from None
        if not math.isfinite(slos[name]) or slos[name] < 0:
            raise ValueError(f"--goodput {item!r}: the SLO must be a finite number >= 0")
    return slos


def parse_percentiles(text: str) -> list[float]:
    """ "50,90,99" → [50.0, 90.0, 99.0]; each in (0, 100]."""
    values: list[float] = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"--percentiles takes comma-separated numbers; got {part!r}") from None
        if not 0 < value <= 100:
            raise ValueError(f"--percentiles values must be in (0, 100]; got {part!r}")
        values.append(value)
    return values


def percentile_label(p: float) -> str:
    """99 → "99", 99.9 → "99.9" (the key vLLM writes: p99_ttft_ms, p99.9_ttft_ms)."""
    return str(int(p)) if float(p).is_integer() else str(p)


def summarize(samples_s: Sequence[float], percentiles: Sequence[float]) -> MetricSummary:
    """Mean/median/std/percentiles in milliseconds; an empty sample gives zeros (as vLLM's `x or 0`)."""
    data = np.asarray(samples_s if len(samples_s) else [0.0], dtype=np.float64) * 1000.0
    return MetricSummary(
        mean_ms=float(np.mean(data)),
        median_ms=float(np.median(data)),
        std_ms=float(np.std(data)),
        percentiles_ms=[(float(p), float(np.percentile(data, p))) for p in percentiles],
    )


def _token_times(output: RequestFuncOutput, bench_start: float) -> list[float]:
    first = output.start_time - bench_start + output.ttft
    times = [first]
    for gap in output.itl:
        times.append(times[-1] + gap)
    return times


def peak_rates(outputs: Sequence[RequestFuncOutput], bench_start: float) -> tuple[float, int]:
    """(most text chunks received in one 1-second window, most requests in flight at any instant)."""
    done = [o for o in outputs if o.success]
    peak_tokens = 0.0
    if done:
        end = max(o.start_time - bench_start + o.latency for o in done)
        tokens = np.zeros(int(math.ceil(end)) + 1)
        for output in done:
            for t in _token_times(output, bench_start):
                tokens[min(int(t), tokens.size - 1)] += 1
        peak_tokens = float(tokens.max())
    # Sweep over send/finish events; a finish sorts before a send at the same instant.
    events = sorted([(o.start_time, 1) for o in outputs] + [(o.start_time + o.latency, -1) for o in outputs])
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak_tokens, peak


def calculate_metrics(
    outputs: Sequence[RequestFuncOutput],
    duration_s: float,
    percentiles: Sequence[float] = (50.0, 90.0, 99.0),
    goodput_slos_ms: dict[str, float] | None = None,
    count_tokens: Callable[[str], int] | None = None,
    bench_start: float | None = None,
) -> BenchmarkMetrics:
    """vLLM's calculate_metrics. `count_tokens` counts output tokens when the server sent no usage chunk."""
    if duration_s <= 0:
        raise ValueError("duration_s must be > 0")
    output_lens: list[int] = []
    ttfts: list[float] = []
    tpots: list[float] = []
    all_tpots: list[float] = []  # one per completed request, 0 for 1-token outputs (goodput)
    itls: list[float] = []
    e2els: list[float] = []
    errors: Counter[str] = Counter()
    total_input = 0
    sources: set[str] = set()
    for output in outputs:
        if not output.success:
            output_lens.append(0)
            errors[output.error or "unknown error"] += 1
            continue
        if output.output_tokens:
            output_len = output.output_tokens
            sources.add("usage")
        elif count_tokens is not None:
            output_len = count_tokens(output.generated_text)
            sources.add("tokenizer")
        else:
            output_len = len(output.itl) + 1 if output.generated_text else 0
            sources.add("chunks")
        output_lens.append(output_len)
        total_input += output.prompt_len
        tpot = 0.0
        if output_len > 1:
            tpot = (output.latency - output.ttft) / (output_len - 1)
            tpots.append(tpot)
        all_tpots.append(tpot)
        itls.extend(output.itl)
        ttfts.append(output.ttft)
        e2els.append(output.latency)
    completed = len(ttfts)

    request_goodput: float | None = None
    if goodput_slos_ms:
        per_request = {"ttft": ttfts, "tpot": all_tpots, "e2el": e2els}
        good = 0
        for i in range(completed):
            if all(per_request[name][i] * 1000.0 <= slo for name, slo in goodput_slos_ms.items()):
                good += 1
        request_goodput = good / duration_s

    total_output = sum(output_lens)
    start = bench_start if bench_start is not None else min((o.start_time for o in outputs), default=0.0)
    peak_tokens, peak_concurrency = peak_rates(outputs, start)
    source = "usage" if sources <= {"usage"} else ("tokenizer" if "chunks" not in sources else "chunks")
    return BenchmarkMetrics(
        completed=completed,
        failed=len(outputs) - completed,
        total_input=total_input,
        total_output=total_output,
        request_throughput=completed / duration_s,
        request_goodput=request_goodput,
        output_throughput=total_output / duration_s,
        total_token_throughput=(total_input + total_output) / duration_s,
        max_output_tokens_per_s=peak_tokens,
        max_concurrent_requests=peak_concurrency,
        summaries={
            "ttft": summarize(ttfts, percentiles),
            "tpot": summarize(tpots, percentiles),
            "itl": summarize(itls, percentiles),
            "e2el": summarize(e2els, percentiles),
        },
        output_lens=output_lens,
        errors=errors,
        output_len_source=source,
    )
