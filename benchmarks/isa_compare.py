"""pagedserve against transformers at each x86 ISA level this machine can stand in for, side by side in one run.

For every mode — `native` (what this CPU has) and, on a newer CPU, `avx2` (an AVX2-only CPU's code paths: our
kernels at PAGEDSERVE_CPU_ISA=avx2, torch's ATen at ATEN_CPU_CAPABILITY=avx2 and oneDNN at
ONEDNN_MAX_CPU_ISA=AVX2, so bf16 matrix products are emulated as on a Zen 3) — it measures the machine's limits
(machine_limits.py) and the offline workloads: pagedserve with dtype auto, transformers' static batching in
float32 and in bfloat16 (the better one is the reference). Each system runs in its own process.

    .venv/bin/python benchmarks/isa_compare.py [--modes native,avx2] [--workloads offline-32x64,single-stream]
                                               [--rounds 3]

With --rounds N the three systems run N times, interleaved (pagedserve, float32, bfloat16, pagedserve, ...), and
the table reports each system's median and the ratio of each round: on a shared VM whose speed drifts by ±25 %
between runs a minute apart (seen on a Zen 3, 2026-12-02), one run each compares the drift, not the systems.

The memory system, caches and core of this machine stay what they are: an emulated mode shows what the code
paths do, not what a real older CPU would measure. Prints markdown tables; `--json OUT` keeps every number.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from throughput import headline  # noqa: E402

from pagedserve.cpu_info import cpu_info  # noqa: E402

MODES: dict[str, dict[str, str]] = {
    "native": {},
    "avx2": {"PAGEDSERVE_CPU_ISA": "avx2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}
# (system flag for throughput.py, dtype, label)
RUNS = [
    ("pagedserve", "auto", "pagedserve (dtype auto)"),
    ("transformers", "float32", "transformers static float32"),
    ("transformers", "bfloat16", "transformers static bfloat16"),
]


def round_ratio(rows: list[dict[str, Any]], round_index: int) -> float | None:
    """pagedserve ÷ the best transformers configuration within one round."""
    mine = {r["label"]: headline(r) for r in rows if r["round"] == round_index}
    ours = mine.get(RUNS[0][2])
    best = max((v for k, v in mine.items() if k != RUNS[0][2]), default=None)
    return ours / best if ours and best else None


def run_json(command: list[str], env: dict[str, str], out: Path) -> Any:
    subprocess.run(command, check=True, env={**os.environ, **env}, stdout=sys.stderr)
    return json.loads(out.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--modes", default="native,avx2")
    parser.add_argument("--workloads", default="offline-32x64,single-stream")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    modes = [m for m in args.modes.split(",") if m]
    if cpu_info().best_level == "avx2":
        modes = [m for m in modes if m != "avx2"]  # native is avx2 here already
    report: dict[str, Any] = {"machine": cpu_info().describe(), "modes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        for mode in modes:
            env = MODES[mode]
            limits = run_json([sys.executable, str(HERE / "machine_limits.py"), "--json", str(out)], env, out)
            results = []
            for round_index in range(args.rounds):
                for system, dtype, label in RUNS:
                    command = [sys.executable, str(HERE / "throughput.py"), "--systems", system]
                    command += ["--dtype", dtype, "--workloads", args.workloads, "--json", str(out)]
                    for result in run_json(command, env, out):
                        results.append({**result, "label": label, "round": round_index})
            report["modes"][mode] = {"limits": limits, "results": results}

    print(f"\nMachine: {report['machine']}\n")
    workloads = [w for w in args.workloads.split(",") if w]
    header = (
        "| mode | workload | "
        + " | ".join(label for _, _, label in RUNS)
        + " | pagedserve ÷ best transformers |"
    )
    print(header + "\n|" + "---|" * (len(RUNS) + 3))
    for mode, data in report["modes"].items():
        for workload in workloads:
            rows = [r for r in data["results"] if r["workload"] == workload]
            by_label = {
                label: statistics.median(headline(r) for r in rows if r["label"] == label)
                for _, _, label in RUNS
                if any(r["label"] == label for r in rows)
            }
            ours = by_label.get(RUNS[0][2])
            best = max((v for k, v in by_label.items() if k != RUNS[0][2]), default=None)
            cells = [f"{by_label[label]:.1f}" if label in by_label else "—" for _, _, label in RUNS]
            ratio = f"{ours / best:.2f}×" if ours and best else "—"
            per_round = [round_ratio(rows, i) for i in range(args.rounds)] if args.rounds > 1 else []
            if per_round:
                ratio += " (rounds: " + ", ".join(f"{r:.2f}×" for r in per_round if r) + ")"
            print(f"| {mode} | {workload} | " + " | ".join(cells) + f" | {ratio} |")
    print(
        "\n| mode | "
        + " | ".join(k for k in next(iter(report["modes"].values()))["limits"] if k != "cpu")
        + " |"
    )
    for mode, data in report["modes"].items():
        values = [v for k, v in data["limits"].items() if k != "cpu"]
        print(
            f"| {mode} | " + " | ".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in values) + " |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
