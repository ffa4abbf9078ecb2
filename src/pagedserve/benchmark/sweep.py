"""`bench sweep`: the same request pool at rising concurrency, and the SLO capacity."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pagedserve.benchmark.datasets import SampleRequest
from pagedserve.benchmark.report import markdown_table
from pagedserve.benchmark.serve import ServeLoad, ServeTarget, compute_result, run_load

_SLO_KEY = re.compile(r"^(mean|median|p\d+(?:\.\d+)?)_(ttft|tpot|itl|e2el)_ms$")
ROW_KEYS = (
    "concurrency",
    "num_prompts",
    "completed",
    "failed",
    "output_throughput",
    "p50_ttft_ms",
    "p99_ttft_ms",
    "p50_tpot_ms",
    "p99_tpot_ms",
)


@dataclass
class SweepPlan:
    concurrencies: list[int]
    max_prompts: int = 200  # per level
    min_prompts: int = 16
    prompts_per_concurrency: int = 4  # a level sends max(min, this × concurrency) requests, at most max

    def __post_init__(self) -> None:
        if not self.concurrencies or any(c < 1 for c in self.concurrencies):
            raise ValueError("--concurrency takes a comma-separated list of integers >= 1")
        if min(self.max_prompts, self.min_prompts, self.prompts_per_concurrency) < 1:
            raise ValueError("--num-prompts, --min-prompts and --prompts-per-concurrency must be >= 1")

    def prompts_at(self, concurrency: int) -> int:
        return min(self.max_prompts, max(self.min_prompts, self.prompts_per_concurrency * concurrency))


def parse_concurrencies(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--concurrency takes integers like 1,4,16; got {text!r}") from None
    return sorted(set(values))


def parse_slos(items: Sequence[str] | None) -> dict[str, float]:
    """`["p99_ttft_ms:500"]` → {"p99_ttft_ms": 500.0}; keys are result-file keys of latency metrics."""
    slos: dict[str, float] = {}
    for item in items or []:
        key, sep, value = item.partition(":")
        if not sep or not _SLO_KEY.match(key):
            raise ValueError(f"--slo takes KEY:MS with KEY like p99_ttft_ms or mean_tpot_ms; got {item!r}")
        try:
            slos[key] = float(value)
        except ValueError:
            raise ValueError(f"--slo {item!r}: {value!r} is not a number of milliseconds") from None
    return slos


def percentiles_needed(slos: dict[str, float], base: Sequence[float]) -> list[float]:
    """`base` plus every percentile an SLO key names (p99.9_ttft_ms needs 99.9)."""
    wanted = {float(p) for p in base} | {50.0, 99.0}
    for key in slos:
        head = key.split("_", 1)[0]
        if head.startswith("p"):
            wanted.add(float(head[1:]))
    return sorted(wanted)


def meets_slos(result: dict[str, Any], slos: dict[str, float]) -> bool:
    """Every SLO met and no request failed (a dropped request misses any latency target)."""
    return result["failed"] == 0 and result["completed"] > 0 and all(result[k] <= v for k, v in slos.items())


def sweep_row(result: dict[str, Any], concurrency: int, slos: dict[str, float]) -> dict[str, Any]:
    row = {key: result.get(key) for key in ROW_KEYS if key != "concurrency"}
    row["concurrency"] = concurrency
    row["meets_slo"] = meets_slos(result, slos)
    return row


def slo_capacity(rows: Sequence[dict[str, Any]]) -> int | None:
    """The highest concurrency whose level met the SLO."""
    good = [r["concurrency"] for r in rows if r["meets_slo"]]
    return max(good) if good else None


async def run_sweep(
    target: ServeTarget,
    pool: Sequence[SampleRequest],
    plan: SweepPlan,
    *,
    slos: dict[str, float],
    percentiles: Sequence[float],
    goodput_slos_ms: dict[str, float],
    count_tokens: Callable[[str], int] | None,
    model_id: str,
    tokenizer_id: str,
    show_progress: bool = True,
    on_level: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run every level on the first requests of `pool`; returns {"rows", "levels", "slo", "capacity"}."""
    rows: list[dict[str, Any]] = []
    levels: list[dict[str, Any]] = []
    for index, concurrency in enumerate(plan.concurrencies):
        count = plan.prompts_at(concurrency)
        if count > len(pool):
            raise ValueError(
                f"the request pool holds {len(pool)} requests; level {concurrency} needs {count}"
            )
        load = ServeLoad(max_concurrency=concurrency)
        run = await run_load(target, pool[:count], load, initial_test=index == 0, show_progress=show_progress)
        _, result = compute_result(
            run,
            target,
            load,
            percentiles=percentiles,
            goodput_slos_ms=goodput_slos_ms,
            count_tokens=count_tokens,
            model_id=model_id,
            tokenizer_id=tokenizer_id,
            label=f"c{concurrency}",
        )
        row = sweep_row(result, concurrency, slos)
        rows.append(row)
        levels.append(result)
        if on_level is not None:
            on_level(row)
    return {"rows": rows, "levels": levels, "slo": slos, "capacity": slo_capacity(rows)}


def format_sweep_table(rows: Sequence[dict[str, Any]], slos: dict[str, float]) -> str:
    headers = ["in flight", "requests", "failed", "output tok/s", "p50 TTFT ms", "p99 TTFT ms"]
    headers += ["p50 TPOT ms", "p99 TPOT ms", "meets SLO"]
    body = [
        [
            r["concurrency"],
            r["num_prompts"],
            r["failed"],
            r["output_throughput"],
            r["p50_ttft_ms"],
            r["p99_ttft_ms"],
            r["p50_tpot_ms"],
            r["p99_tpot_ms"],
            "yes" if r["meets_slo"] else "no",
        ]
        for r in rows
    ]
    slo_text = ", ".join(f"{k} ≤ {v:g}" for k, v in slos.items())
    capacity = slo_capacity(rows)
    tail = (
        f"SLO ({slo_text}, no failures): highest concurrency meeting it = {capacity if capacity else 'none'}"
    )
    return markdown_table(headers, body) + "\n" + tail
