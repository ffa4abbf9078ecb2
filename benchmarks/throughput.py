"""Offline throughput: pagedserve against transformers' static batching, same prompts, same run (issue 2).

Workloads (BENCHMARKS.md names): offline-256x128, offline-32x64, single-stream. Bundled model, pagedserve at
`--dtype auto` (what `serve` runs; until 2026-12-07 bfloat16) and transformers in bfloat16 (its weights dequantized
from the GGUF), greedy, fixed output length. Prints both systems, their ratio, and the paged KV cache's utilisation at its
busiest step. `--json OUT` keeps every number for run_all.py.

    .venv/bin/python benchmarks/throughput.py [--quick] [--systems pagedserve,transformers,generate_batch]
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pagedserve.benchmark.offline import OfflineResult, chat_prompt_ids, load_llm, offline_throughput  # noqa: E402
from pagedserve.benchmark.presets import OFFLINE_PRESETS, OfflinePreset, topic_messages  # noqa: E402
from pagedserve.benchmark.report import markdown_table  # noqa: E402

SYSTEMS = ("pagedserve", "transformers", "generate_batch")
GENERATE_BATCH_WORKLOADS = ("offline-32x64",)  # far slower than the others: its one workload in benchmarks.md


def sized(preset: OfflinePreset, quick: bool) -> tuple[int, int]:
    if quick:
        return min(preset.num_prompts, 8), min(preset.output_len, 16)
    return preset.num_prompts, preset.output_len


def headline(result: dict[str, Any]) -> float:
    """The number a workload is judged by: decode tok/s for single-stream, output tok/s otherwise."""
    if result["workload"] == "single-stream" and result.get("decode_tokens_per_s"):
        return float(result["decode_tokens_per_s"])
    return float(result["output_tokens_per_s"])


def run_pagedserve(
    workloads: list[str], quick: bool, dtype: str, model: str | None = None, kv_cache_dtype: str = "auto"
) -> list[OfflineResult]:
    llm = load_llm(dtype=dtype, model=model, kv_cache_dtype=kv_cache_dtype)
    tokenizer = llm.get_tokenizer()
    results = []
    for name in workloads:
        preset = OFFLINE_PRESETS[name]
        count, output_len = sized(preset, quick)
        ids = chat_prompt_ids(tokenizer, topic_messages(count))
        results.append(offline_throughput(llm, name, ids, output_len, warmup=preset.warmup))
        print(f"pagedserve {name}: {headline(results[-1].to_dict()):.1f} tok/s", flush=True)
    del llm
    gc.collect()
    return results


def run_transformers(workloads: list[str], quick: bool, dtype: str, systems: set[str]) -> list[OfflineResult]:
    from peers.hf_transformers import generate_batch_throughput, load_model, static_throughput

    model, tokenizer = load_model("bfloat16" if dtype == "auto" else dtype)
    results = []
    for name in workloads:
        preset = OFFLINE_PRESETS[name]
        count, output_len = sized(preset, quick)
        ids = chat_prompt_ids(tokenizer, topic_messages(count))
        if "transformers" in systems:
            results.append(static_throughput(model, tokenizer, name, ids, output_len, warmup=preset.warmup))
            print(f"transformers static {name}: {headline(results[-1].to_dict()):.1f} tok/s", flush=True)
        if "generate_batch" in systems and name in GENERATE_BATCH_WORKLOADS:
            results.append(generate_batch_throughput(model, name, ids, output_len))
            print(
                f"transformers generate_batch {name}: {headline(results[-1].to_dict()):.1f} tok/s", flush=True
            )
    return results


def comparison_table(results: list[dict[str, Any]], workloads: list[str]) -> str:
    by = {(r["system"], r["workload"]): r for r in results}
    rows = []
    for name in workloads:
        ours = by.get(("pagedserve", name))
        ref = by.get(("transformers static", name))
        metric = "decode tok/s" if name == "single-stream" else "output tok/s"
        ratio = headline(ours) / headline(ref) if ours and ref else None
        rows.append(
            [name, metric, headline(ours) if ours else None, headline(ref) if ref else None,
             f"{ratio:.2f}×" if ratio else None]
        )  # fmt: skip
    return markdown_table(
        ["workload", "metric", "pagedserve", "transformers static (batch 32)", "ratio"], rows
    )


def kv_lines(results: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in results:
        if r["system"] == "pagedserve" and r.get("kv_utilisation") is not None:
            lines.append(
                f"KV cache, {r['workload']}: busiest step used {r['kv_busiest_used_blocks']}/{r['kv_total_blocks']} "
                f"blocks; token slots in use ÷ slots allocated = {100 * r['kv_utilisation']:.1f} % "
                f"({100 * r['kv_logical_utilisation']:.1f} % if each request's copy of a shared prefix block counted)"
            )
    return lines


def run_isolated(args: argparse.Namespace, workloads: list[str], systems: set[str]) -> list[dict[str, Any]]:
    """One system per process: one library's process-wide torch state (threads, oneDNN caches, allocator) must
    not speed up or slow down the other, and each starts from a cold process as a user's would."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        command = [
            sys.executable,
            __file__,
            "--workloads",
            ",".join(workloads),
            "--systems",
            ",".join(sorted(systems)),
        ]
        command += ["--dtype", args.dtype, "--json", str(out)] + (["--quick"] if args.quick else [])
        command += ["--model", args.model] if args.model else []
        command += ["--kv-cache-dtype", args.kv_cache_dtype]
        subprocess.run(command, check=True, stdout=sys.stderr)
        return json.loads(out.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workloads", default=",".join(OFFLINE_PRESETS))
    parser.add_argument("--systems", default="pagedserve,transformers")
    parser.add_argument("--dtype", default="auto", help="auto: pagedserve's choice, transformers in bfloat16")
    parser.add_argument("--quick", action="store_true", help="at most 8 prompts x 16 tokens (smoke run)")
    parser.add_argument("--model", default=None, help="pagedserve's checkpoint (default: the bundled model)")
    parser.add_argument(
        "--kv-cache-dtype", default="auto", help="pagedserve's KV cache storage (auto, bfloat16, fp8)"
    )
    parser.add_argument("--json", default=None, help="write every result here")
    parser.add_argument("--in-process", action="store_true", help="no subprocess per system (debugging)")
    args = parser.parse_args()
    workloads = [w for w in args.workloads.split(",") if w]
    systems = {s for s in args.systems.split(",") if s}
    unknown = [w for w in workloads if w not in OFFLINE_PRESETS] + [s for s in systems if s not in SYSTEMS]
    if unknown:
        parser.error(f"unknown workload or system: {', '.join(unknown)}")

    groups = [g for g in ({"pagedserve"}, {"transformers", "generate_batch"}) if g & systems]
    if args.in_process or len(groups) == 1:
        results: list[OfflineResult] = []
        if "pagedserve" in systems:
            results += run_pagedserve(workloads, args.quick, args.dtype, args.model, args.kv_cache_dtype)
        if systems & {"transformers", "generate_batch"}:
            results += run_transformers(workloads, args.quick, args.dtype, systems)
        data = [r.to_dict() for r in results]
    else:
        data = []
        for group in groups:
            data += run_isolated(args, workloads, group & systems)
    print()
    print(comparison_table(data, workloads))
    for line in kv_lines(data):
        print(line)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
