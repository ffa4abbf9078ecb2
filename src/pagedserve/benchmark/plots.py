"""PNG pictures of a serving run and of a concurrency sweep (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    return plt


def _cdf(ax: Any, values_ms: Sequence[float], label: str, slo_ms: float | None) -> None:
    data = np.sort(np.asarray(values_ms, dtype=float))
    if data.size:
        ax.plot(data, np.arange(1, data.size + 1) / data.size, drawstyle="steps-post")
        for p, style in ((50, ":"), (99, "--")):
            ax.axvline(np.percentile(data, p), color="gray", linestyle=style, label=f"p{p}")
    title = f"{label} distribution"
    if slo_ms is not None:
        if data.size and slo_ms > 3 * data.max():
            title += f" (SLO {slo_ms:g} ms: far right, off scale)"  # drawing it would squash the curve
        else:
            ax.axvline(slo_ms, color="red", label=f"SLO {slo_ms:g} ms")
    ax.set_xlabel(f"{label} (ms)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)


def plot_serve_result(result: Mapping[str, Any], path: str | Path, title: str | None = None) -> None:
    """Four panels: request timeline, TTFT CDF, TPOT CDF, output tokens/s and requests in flight over time."""
    plt = _pyplot()
    ok = [i for i, s in enumerate(result["successes"]) if s]
    starts = np.asarray(result["start_times"], dtype=float)
    ttfts = np.asarray(result["ttfts"], dtype=float)
    e2els = np.asarray(result["e2els"], dtype=float)
    out_lens = result["output_lens"]
    slos = result.get("goodput_slos_ms") or {}
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), dpi=80)

    ax = axes[0][0]
    for row, i in enumerate(sorted(range(len(starts)), key=lambda k: starts[k])):
        if i in ok:
            ax.hlines(row, starts[i], starts[i] + ttfts[i], color="tab:orange", linewidth=1.5)
            ax.hlines(row, starts[i] + ttfts[i], starts[i] + e2els[i], color="tab:blue", linewidth=1.5)
        else:
            ax.plot(starts[i], row, "x", color="red", markersize=4)
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("request")
    ax.set_title("requests: waiting for 1st token (orange), decoding (blue), failed (x)", fontsize=9)

    _cdf(axes[0][1], [ttfts[i] * 1000 for i in ok], "TTFT", slos.get("ttft"))
    tpots = [(e2els[i] - ttfts[i]) / (out_lens[i] - 1) * 1000 for i in ok if out_lens[i] > 1]
    _cdf(axes[1][0], tpots, "TPOT", slos.get("tpot"))

    ax = axes[1][1]
    end = max((starts[i] + e2els[i] for i in ok), default=1.0)
    width = max(end / 50.0, 0.01)  # about 50 bars whatever the run's length
    bins = np.arange(0.0, end + width, width)
    token_times: list[float] = []
    for i in ok:
        times = starts[i] + ttfts[i] + np.concatenate([[0.0], np.cumsum(result["itls"][i])])
        token_times.extend(times.tolist())
    counts, _ = np.histogram(token_times, bins=bins)
    ax.bar(bins[:-1], counts / width, width=width, align="edge", color="tab:green", alpha=0.6)
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("text chunks (≈ tokens) / s", color="tab:green")
    twin = ax.twinx()
    mids = bins[:-1] + width / 2
    in_flight = [sum(1 for i in range(len(starts)) if starts[i] <= t < starts[i] + e2els[i]) for t in mids]
    twin.plot(mids, in_flight, color="black", linewidth=1.2)
    twin.set_ylabel("requests in flight")
    twin.set_ylim(bottom=0)
    ax.set_title("throughput (bars) and requests in flight (line)", fontsize=10)
    fig.suptitle(
        title
        or f"{result.get('model_id', '')}: {result['completed']} ok, {result['failed']} failed, "
        f"{result['output_throughput']:.1f} output tok/s, p99 TTFT {result.get('p99_ttft_ms', 0):.0f} ms",
        fontsize=11,
    )
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def plot_sweep(
    series: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | Path,
    slo_ttft_ms: float | None = 500.0,
    title: str = "concurrency sweep",
) -> None:
    """Output tok/s and p99 TTFT against concurrency, one line per server, with the TTFT SLO line."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=80)
    for name, rows in series.items():
        levels = [r["concurrency"] for r in rows]
        left.plot(levels, [r["output_throughput"] for r in rows], marker="o", label=name)
        right.plot(levels, [r["p99_ttft_ms"] for r in rows], marker="o", label=name)
    all_levels = sorted({r["concurrency"] for rows in series.values() for r in rows})
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(all_levels, [str(c) for c in all_levels])
        ax.set_xlabel("requests in flight (max concurrency)")
        ax.grid(True, alpha=0.3)
    left.set_ylabel("output tokens / s")
    left.set_title("throughput")
    right.set_ylabel("p99 TTFT (ms)")
    right.set_yscale("log")
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda value, _pos: f"{value:g}")  # 200, not 2×10²
    right.yaxis.set_major_formatter(plain)
    right.yaxis.set_minor_formatter(plain)
    right.set_title("p99 time to first token")
    if slo_ttft_ms is not None:
        right.axhline(slo_ttft_ms, color="red", linestyle="--", label=f"SLO {slo_ttft_ms:g} ms")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
