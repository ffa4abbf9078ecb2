"""The markdown report of `make bench`: offline, serve-c32 and sweep tables with ratios, and the targets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pagedserve.benchmark.presets import OFFLINE_PRESETS
from pagedserve.benchmark.report import markdown_table

OFFLINE_COLUMNS = [
    ("pagedserve", "pagedserve"),
    ("transformers static", "transformers static (batch 32)"),
    ("transformers generate_batch", "transformers generate_batch"),
    ("vLLM (CPU)", "vLLM (CPU)"),
    ("llama.cpp", "llama.cpp server (Q4_1)"),
]
SERVER_NAMES = {"pagedserve": "pagedserve", "vllm": "vLLM (CPU)", "llamacpp": "llama.cpp (Q4_1, -np 32)"}
PEER_OF_SYSTEM = {"vLLM (CPU)": "vllm", "llama.cpp": "llamacpp"}


def _headline(result: dict[str, Any] | None) -> float | None:
    if not result:
        return None
    if result["workload"] == "single-stream":
        return result.get("decode_tokens_per_s")
    return result.get("output_tokens_per_s")


def _ratio(a: float | None, b: float | None) -> str | None:
    return f"{a / b:.2f}×" if a and b else None


def _cell(value: float | None, system_key: str | None, missing: dict[str, str]) -> Any:
    if value is not None:
        return value
    if system_key and (system_key in missing or f"{system_key} offline" in missing):
        return "missing"
    return None


def offline_table(data: dict[str, Any]) -> str:
    by = {(r["system"], r["workload"]): r for r in data["offline"]}
    missing = data.get("missing", {})
    rows = []
    for workload in OFFLINE_PRESETS:
        values = {system: _headline(by.get((system, workload))) for system, _ in OFFLINE_COLUMNS}
        ours = values["pagedserve"]
        row: list[Any] = [workload, "decode tok/s" if workload == "single-stream" else "output tok/s"]
        row += [_cell(values[s], PEER_OF_SYSTEM.get(s), missing) for s, _ in OFFLINE_COLUMNS]
        row += [_ratio(ours, values["transformers static"]), _ratio(ours, values["vLLM (CPU)"])]
        rows.append(row)
    headers = ["workload", "metric"] + [title for _, title in OFFLINE_COLUMNS]
    headers += ["pagedserve ÷ transformers", "pagedserve ÷ vLLM"]
    return markdown_table(headers, rows)


def serve_table(data: dict[str, Any]) -> str:
    serve = data["serve"]
    reference = serve.get("vllm", {}).get("output_throughput")
    rows = []
    for key, name in SERVER_NAMES.items():
        r = serve.get(key)
        if r is None:
            missing = data.get("missing", {})
            reason = missing.get(key) or missing.get(f"{key} serving")
            skipped = key in data.get("skipped", []) or "serve" in data.get("skipped", [])
            status = f"missing: {reason}"[:90] if reason else ("skipped" if skipped else "not run")
            rows.append([name, status] + [None] * 7)
            continue
        rows.append(
            [name, r["output_throughput"], r["request_throughput"], r["p50_ttft_ms"], r["p99_ttft_ms"],
             r["p50_tpot_ms"], r["p99_tpot_ms"], f"{r['failed']}/{r['completed'] + r['failed']}",
             _ratio(r["output_throughput"], reference)]
        )  # fmt: skip
    headers = ["server", "output tok/s", "req/s", "TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms", "TPOT p99 ms"]
    return markdown_table(headers + ["failed", "output tok/s ÷ vLLM's"], rows)


def sweep_table(data: dict[str, Any]) -> str:
    sweeps = data["sweep"]
    levels = sorted({row["concurrency"] for s in sweeps.values() for row in s["rows"]})
    rows = []
    for key, name in SERVER_NAMES.items():
        s = sweeps.get(key)
        if s is None:
            missing = key in data.get("missing", {}) or f"{key} serving" in data.get("missing", {})
            rows.append([name] + ["missing" if missing else "skipped"] * len(levels) + [None])
            continue
        by = {row["concurrency"]: row for row in s["rows"]}
        cells = [
            f"{by[c]['output_throughput']:.0f} tok/s, p99 TTFT {by[c]['p99_ttft_ms']:.0f} ms"
            + (f", {by[c]['failed']} failed" if by[c]["failed"] else "")
            if c in by
            else None
            for c in levels
        ]
        rows.append([name] + cells + [s["capacity"] or "none"])
    return markdown_table(["server"] + [f"{c} in flight" for c in levels] + ["SLO capacity"], rows)


def targets(data: dict[str, Any]) -> list[str]:
    """The performance targets of issues 2, 3 and 5, each marked met or NOT met with the numbers."""
    by = {(r["system"], r["workload"]): r for r in data["offline"]}
    lines = []

    def check(
        label: str, value: float | None, goal: float, unit: str = "×", lower_is_better: bool = False
    ) -> None:
        if value is None:
            lines.append(f"- {label}: not measured")
            return
        met = value <= goal if lower_is_better else value >= goal
        sign = "≤" if lower_is_better else "≥"
        lines.append(
            f"- {label}: {value:.2f}{unit} (target {sign} {goal:g}{unit}) — {'met' if met else 'NOT met'}"
        )

    def offline_ratio(workload: str, peer: str) -> float | None:
        a, b = _headline(by.get(("pagedserve", workload))), _headline(by.get((peer, workload)))
        return a / b if a and b else None

    check(
        "offline-256x128 vs transformers static", offline_ratio("offline-256x128", "transformers static"), 3.0
    )
    check("offline-256x128 vs vLLM (CPU)", offline_ratio("offline-256x128", "vLLM (CPU)"), 1.0)
    check("single-stream vs transformers static", offline_ratio("single-stream", "transformers static"), 1.5)
    kv = by.get(("pagedserve", "offline-256x128"), {}).get("kv_utilisation")
    check("KV utilisation at the busiest step (offline-256x128)", 100 * kv if kv else None, 95.0, " %")
    ours, theirs = data["serve"].get("pagedserve"), data["serve"].get("vllm")
    check(
        "serve-c32 output tok/s vs vLLM (CPU)",
        ours["output_throughput"] / theirs["output_throughput"] if ours and theirs else None,
        1.5,
    )
    check("serve-c32 p99 TTFT", ours["p99_ttft_ms"] if ours else None, 500.0, " ms", lower_is_better=True)
    overhead = data.get("http_overhead")
    check(
        "HTTP ÷ offline throughput, serve-c32 workload (32 clients, engine process)",
        overhead["ratio engine process"] if overhead else None,
        0.97,
    )
    return lines


def render_report(data: dict[str, Any], out: Path) -> str:
    parts = [
        f"Machine: {data['machine']}" + (" — QUICK RUN, numbers mean nothing" if data.get("quick") else "")
    ]
    parts += ["", "### Offline (tokens per second; higher is better)", "", offline_table(data)]
    for r in data["offline"]:
        if r["system"] == "pagedserve" and r.get("kv_utilisation") is not None:
            parts.append(
                f"\nKV cache, {r['workload']}: {100 * r['kv_utilisation']:.1f} % of the token slots in allocated "
                f"blocks in use at the busiest step ({r['kv_busiest_used_blocks']}/{r['kv_total_blocks']} blocks)"
            )
    if data["serve"] or data.get("missing"):
        parts += ["", "### serve-c32 (200 requests, 128 in / 128 out, 32 in flight, streaming)", ""]
        parts.append(serve_table(data))
    if data["sweep"]:
        from pagedserve.benchmark.plots import plot_sweep

        names = {SERVER_NAMES[k]: v["rows"] for k, v in data["sweep"].items()}
        plot_sweep(names, out / "sweep.png", 500.0, "concurrency sweep: pagedserve and peers")
        parts += ["", "### Concurrency sweep (SLO: p99 TTFT ≤ 500 ms, no failures)", "", sweep_table(data)]
    overhead = data.get("http_overhead")
    if overhead:
        best_offline = max(r["output_throughput"] for r in overhead["offline"])
        parts += [
            "",
            "### HTTP vs offline (serve-c32's requests; best of "
            f"{len(overhead['offline'])} rounds each, benchmarks/http_overhead.py)",
            "",
            f"offline `LLM.generate` (max_num_seqs=32) {best_offline:.1f} tok/s; through `pagedserve serve` with 32 "
            "streaming clients:",
            "",
        ]
        for layout, results in overhead["http"].items():
            best = max(results, key=lambda r: r["output_throughput"])
            parts.append(
                f"- {layout}: {best['output_throughput']:.1f} tok/s (HTTP ÷ offline = "
                f"{overhead[f'ratio {layout}']:.3f}), TTFT p50 {best['p50_ttft_ms']:.0f} ms, p99 "
                f"{best['p99_ttft_ms']:.0f} ms"
            )
    parts += ["", "### Targets", ""] + targets(data)
    if data.get("missing"):
        parts += ["", "### Peers missing from this run", ""]
        parts += [f"- {name}: missing: {reason}" for name, reason in data["missing"].items()]
    if data.get("errors"):
        parts += ["", "### Errors", ""] + [f"- {e}" for e in data["errors"]]
    parts.append(f"\n(wall time {data.get('wall_s', 0) / 60:.1f} min; results in {out})")
    return "\n".join(parts)
