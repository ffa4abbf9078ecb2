"""Metric arithmetic of `bench serve` on synthetic timings (no server): the definitions of vLLM's benchmark."""

from __future__ import annotations

import numpy as np
import pytest

from pagedserve.benchmark.kv_usage import physical_token_count
from pagedserve.benchmark.metrics import (
    calculate_metrics,
    parse_goodput,
    parse_percentiles,
    peak_rates,
    percentile_label,
)
from pagedserve.benchmark.report import format_summary
from pagedserve.benchmark.request_funcs import RequestFuncOutput


def ok(ttft: float, itl: list[float], output_tokens: int | None, prompt_len: int = 10, start: float = 0.0):
    latency = ttft + sum(itl)
    return RequestFuncOutput(
        success=True,
        generated_text="x" * max(1, len(itl) + 1),
        prompt_len=prompt_len,
        output_tokens=output_tokens,
        ttft=ttft,
        itl=itl,
        latency=latency,
        start_time=start,
    )


def failed(reason: str) -> RequestFuncOutput:
    # Garbage timings on purpose: a failure must not leak into any latency statistic.
    return RequestFuncOutput(success=False, ttft=99.0, itl=[50.0], latency=500.0, prompt_len=7, error=reason)


def test_percentiles_mean_median_match_numpy_in_ms() -> None:
    ttfts = [0.1, 0.2, 0.3, 0.4]
    outputs = [ok(t, [0.01, 0.01], 3) for t in ttfts]
    m = calculate_metrics(outputs, duration_s=2.0, percentiles=[50, 90, 99])
    ttft = m.summaries["ttft"]
    assert ttft.mean_ms == pytest.approx(250.0)
    assert ttft.median_ms == pytest.approx(250.0)
    assert ttft.std_ms == pytest.approx(np.std(ttfts) * 1000)
    # numpy's linear interpolation, as vLLM: p90 of 100..400 = 370, p99 = 397.
    assert dict(ttft.percentiles_ms) == pytest.approx({50.0: 250.0, 90.0: 370.0, 99.0: 397.0})
    assert m.summaries["itl"].mean_ms == pytest.approx(10.0)
    assert m.summaries["e2el"].mean_ms == pytest.approx(270.0)


def test_throughputs_and_token_totals() -> None:
    outputs = [ok(0.1, [0.02] * 9, 10, prompt_len=100), ok(0.2, [0.02] * 4, 5, prompt_len=50)]
    m = calculate_metrics(outputs, duration_s=4.0)
    assert (m.completed, m.failed, m.total_input, m.total_output) == (2, 0, 150, 15)
    assert m.request_throughput == pytest.approx(0.5)
    assert m.output_throughput == pytest.approx(15 / 4)
    assert m.total_token_throughput == pytest.approx(165 / 4)
    assert m.request_goodput is None  # no SLO given


def test_tpot_is_e2el_minus_ttft_over_tokens_minus_one_and_skips_one_token_outputs() -> None:
    outputs = [
        ok(0.1, [0.05, 0.05, 0.05, 0.05], 5),  # (0.3 - 0.1) / 4 = 50 ms
        ok(0.2, [], 1),  # one token: no TPOT sample
    ]
    m = calculate_metrics(outputs, duration_s=1.0, percentiles=[99])
    assert m.summaries["tpot"].mean_ms == pytest.approx(50.0)
    assert m.summaries["tpot"].median_ms == pytest.approx(50.0)
    # ... but the one-token request counts as TPOT 0 for goodput (vLLM's rule), so it is good on tpot.
    g = calculate_metrics(outputs, duration_s=1.0, goodput_slos_ms={"tpot": 40.0})
    assert g.request_goodput == pytest.approx(1.0)


def test_tpot_uses_usage_tokens_not_chunk_count() -> None:
    # Two chunks, but the usage chunk says 5 tokens (a server that sends several tokens per chunk).
    m = calculate_metrics([ok(0.1, [0.4], 5)], duration_s=1.0)
    assert m.total_output == 5
    assert m.summaries["tpot"].mean_ms == pytest.approx(100.0)  # 0.4 s / 4


def test_failed_requests_are_counted_but_excluded_from_latency_and_tokens() -> None:
    outputs = [
        ok(0.1, [0.01], 2),
        failed("HTTP 500: overloaded"),
        failed("HTTP 500: overloaded"),
        failed("boom"),
    ]
    m = calculate_metrics(outputs, duration_s=1.0, goodput_slos_ms={"ttft": 1000.0})
    assert (m.completed, m.failed) == (1, 3)
    assert m.total_input == 10 and m.total_output == 2
    assert m.output_lens == [2, 0, 0, 0]
    assert m.summaries["ttft"].mean_ms == pytest.approx(100.0)
    assert m.summaries["itl"].mean_ms == pytest.approx(10.0)
    assert m.summaries["e2el"].percentiles_ms[-1][1] == pytest.approx(110.0)
    assert m.request_throughput == pytest.approx(1.0)
    assert m.request_goodput == pytest.approx(1.0)
    assert m.errors == {"HTTP 500: overloaded": 2, "boom": 1}


def test_all_failed_gives_zeros_not_a_crash() -> None:
    m = calculate_metrics([failed("refused"), failed("refused")], duration_s=1.0)
    assert (m.completed, m.failed, m.total_output) == (0, 2, 0)
    assert m.summaries["ttft"].mean_ms == 0.0 and m.summaries["ttft"].percentiles_ms[-1][1] == 0.0
    assert "Failed requests:" in format_summary(m, 1.0, float("inf"), None)


def test_goodput_needs_every_slo_met() -> None:
    outputs = [
        ok(0.1, [0.01] * 9, 10),  # ttft 100 ms, tpot 10 ms, e2el 190 ms: good
        ok(0.6, [0.01] * 9, 10),  # ttft 600 ms: misses ttft
        ok(0.1, [0.1] * 9, 10),  # tpot 100 ms: misses tpot
        ok(0.5, [0.01] * 9, 10),  # ttft exactly 500 ms: meets (<=)
    ]
    m = calculate_metrics(outputs, duration_s=2.0, goodput_slos_ms={"ttft": 500.0, "tpot": 50.0})
    assert m.request_goodput == pytest.approx(2 / 2.0)
    m = calculate_metrics(outputs, duration_s=2.0, goodput_slos_ms={"e2el": 200.0})
    assert m.request_goodput == pytest.approx(1 / 2.0)


def test_output_tokens_without_usage_use_the_tokenizer_then_the_chunk_count() -> None:
    no_usage = ok(0.1, [0.01, 0.01], None)
    no_usage.generated_text = "a b c d"
    counted = calculate_metrics([no_usage], 1.0, count_tokens=lambda text: len(text.split()))
    assert counted.total_output == 4 and counted.output_len_source == "tokenizer"
    chunks = calculate_metrics([no_usage], 1.0)
    assert chunks.total_output == 3 and chunks.output_len_source == "chunks"


def test_peak_rates_bucket_chunks_per_second_and_requests_in_flight() -> None:
    # Two requests from t=0: chunks at 0.1, 0.2 (first) and 0.5, 1.5 (second).
    outputs = [ok(0.1, [0.1], 2, start=100.0), ok(0.5, [1.0], 2, start=100.0), failed("x")]
    outputs[2].start_time, outputs[2].latency = 100.0, 0.3
    tokens, in_flight = peak_rates(outputs, bench_start=100.0)
    assert tokens == 3.0
    assert in_flight == 3  # the failed request was in flight until it failed


def test_parsers_reject_bad_values_with_the_flag_named() -> None:
    assert parse_goodput(["ttft:500", "tpot:50"]) == {"ttft": 500.0, "tpot": 50.0}
    assert parse_percentiles("50,90,99.9") == [50.0, 90.0, 99.9]
    assert percentile_label(99.0) == "99" and percentile_label(99.9) == "99.9"
    for bad in (["itl:5"], ["ttft"], ["ttft:abc"], ["ttft:-1"]):
        with pytest.raises(ValueError, match="--goodput"):
            parse_goodput(bad)
    for bad in ("0", "101", "a,b"):
        with pytest.raises(ValueError, match="--percentiles"):
            parse_percentiles(bad)
    with pytest.raises(ValueError, match="duration"):
        calculate_metrics([], duration_s=0.0)


def test_summary_is_laid_out_like_vllms() -> None:
    m = calculate_metrics([ok(0.1, [0.01], 2), failed("HTTP 503: draining")], 1.0, percentiles=[50, 99])
    text = format_summary(m, 1.0, 4.0, 32)
    lines = text.splitlines()
    assert lines[0] == "=" * 12 + " Serving Benchmark Result " + "=" * 12
    assert lines[1] == f"{'Successful requests:':<40} {1:<10}"
    assert f"{'Maximum request concurrency:':<40} {32:<10}" in lines
    assert f"{'Request rate configured (RPS):':<40} {4.0:<10.2f}" in lines
    assert f"{'Mean TTFT (ms):':<40} {100.0:<10.2f}" in lines
    assert "P99 TTFT (ms):" in text and "P50 ITL (ms):" in text
    assert "-----Time per Output Token (excl. 1st token)------" in lines
    assert any("HTTP 503: draining" in line for line in lines)
    assert lines[-1] == "=" * 50


def test_kv_physical_tokens_count_shared_full_blocks_once() -> None:
    block = list(range(4))
    # Two sequences share one full 4-token block, then differ: 4 shared + 2 + 3 tail tokens.
    assert physical_token_count([block + [7, 8], block + [9, 9, 9]], 4) == 9
    # The same block at a different position (different prefix) is not shared.
    assert physical_token_count([[5, 5, 5, 5] + block, block + block], 4) == 16
    assert physical_token_count([], 16) == 0


def test_kv_tracker_picks_the_latest_step_with_most_blocks_and_skips_unaccounted_ones() -> None:
    from types import SimpleNamespace

    from pagedserve.benchmark.kv_usage import KVUsageTracker

    def stats(running: int, used: int) -> SimpleNamespace:
        sched = SimpleNamespace(num_running_reqs=running, num_used_blocks=used, num_total_blocks=100)
        return SimpleNamespace(scheduler=sched)

    tracker = KVUsageTracker(block_size=4, active=True)
    steps = [
        (stats(2, 3), {"a": 5, "b": 5}),
        (stats(3, 9), {"a": 6, "b": 6}),  # a third request mid-prefill holds blocks: not countable
        (stats(2, 4), {"a": 6, "b": 6}),
        (stats(2, 4), {"a": 7, "b": 7}),  # same blocks, more tokens: this one is the busiest
        (stats(1, 2), {"a": 8}),
    ]
    for scheduler_stats, live in steps:
        tracker.on_stats(scheduler_stats)
        tracker.after_step(live)
    tokens = {"a": list(range(10)), "b": list(range(100, 110))}
    report = tracker.report(tokens)
    assert report is not None
    assert (report.busiest_used_blocks, report.logical_tokens, report.physical_tokens) == (4, 14, 14)
    assert report.utilisation == pytest.approx(14 / 16)
    tracker.active = False
    tracker.on_stats(stats(9, 99))  # ignored while inactive
    tracker.reset()
    assert tracker.report(tokens) is None
