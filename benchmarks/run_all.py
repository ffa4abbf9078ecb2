"""`make bench`: every workload of BENCHMARKS.md on pagedserve and on each peer, in one run, with ratios.

Steps: set up the peers (idempotent scripts in benchmarks/peers/), offline workloads (pagedserve, transformers
static batching and generate_batch, upstream vLLM), the HTTP server's share of the engine's offline throughput
(benchmarks/http_overhead.py), then serve-c32 and the concurrency sweep against each server (pagedserve, vLLM,
llama.cpp). A peer that can't be set up or run is listed as "missing: <reason>".
At the end it prints markdown tables ready to paste into BENCHMARKS.md (also saved as results/report.md),
and draws results/serve-c32-pagedserve.png and results/sweep.png.

    .venv/bin/python benchmarks/run_all.py [--quick] [--skip vllm,llamacpp,sweep,...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from peers.servers import (  # noqa: E402
    HF_FOLDER,
    PEERS_VENV,
    RunningServer,
    free_port,
    llamacpp_spec,
    missing_reason,
    pagedserve_spec,
    vllm_spec,
)
from report_tables import render_report  # noqa: E402

PY = sys.executable
LOGS = REPO / ".bench-cache" / "logs"  # git-ignored; results/ keeps only what BENCHMARKS.md shows
STEPS = (
    "offline",
    "http_overhead",
    "serve",
    "sweep",
    "transformers",
    "vllm",
    "llamacpp",
    "pagedserve",
)  # pagedserve: its server


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(
    command: list[str], timeout_s: float, env: dict[str, str] | None = None, log_file: Path | None = None
) -> str:
    """Run a step; RuntimeError with the output's tail when it fails."""
    done = subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, **(env or {})},
    )
    if log_file is not None:
        log_file.write_text(done.stdout + "\n--- stderr ---\n" + done.stderr)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{Path(command[1]).name} exited with {done.returncode}: {' | '.join(tail)}")
    return done.stdout


def setup_peers(skip: set[str], out: Path, missing: dict[str, str]) -> None:
    if "vllm" not in skip:
        log("vLLM peer: install (.venv-peers) and the Hugging Face folder of the bundled model")
        try:
            run(["bash", str(HERE / "peers" / "setup_vllm.sh")], 3600, log_file=LOGS / "setup_vllm.log")
            run([PY, str(HERE / "peers" / "make_hf_folder.py"), "--out", str(HF_FOLDER)], 1800)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            missing["vllm"] = str(exc)
    if "llamacpp" not in skip:
        log("llama.cpp peer: build llama-server (once, about 10 minutes)")
        try:
            run(
                ["bash", str(HERE / "peers" / "setup_llamacpp.sh")],
                3600,
                log_file=LOGS / "setup_llamacpp.log",
            )
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            missing["llamacpp"] = str(exc)
    for name in ("vllm", "llamacpp"):
        if name not in skip and name not in missing and (reason := missing_reason(name)):
            missing[name] = reason


def offline(
    args: argparse.Namespace, skip: set[str], out: Path, data: dict[str, Any], missing: dict[str, str]
) -> None:
    systems = "pagedserve" if "transformers" in skip else "pagedserve,transformers,generate_batch"
    log(f"offline workloads: {systems}")
    command = [PY, str(HERE / "throughput.py"), "--systems", systems, "--json", str(out / "offline.json")]
    try:
        run(command + (["--quick"] if args.quick else []), 7200, log_file=LOGS / "offline.log")
        data["offline"] += json.loads((out / "offline.json").read_text())
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        data["errors"].append(f"offline (pagedserve/transformers): {exc}")
    if "vllm" in skip or "vllm" in missing:
        return
    log("offline workloads: vLLM (CPU)")
    command = [str(PEERS_VENV / "bin" / "python"), str(HERE / "peers" / "vllm_offline.py")]
    command += ["--model", str(HF_FOLDER), "--json", str(out / "offline_vllm.json")]
    try:
        run(
            command + (["--quick"] if args.quick else []),
            3600,
            {"VLLM_CPU_KVCACHE_SPACE": "4"},
            LOGS / "vllm_offline.log",
        )
        data["offline"] += json.loads((out / "offline_vllm.json").read_text())
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        missing["vllm offline"] = str(exc)


def bench_cli(url: str, *flags: str) -> list[str]:
    return [PY, "-m", "pagedserve.cli.main", "bench", *flags, "--base-url", url, "--disable-tqdm"]


def serve_one(key: str, args: argparse.Namespace, skip: set[str], out: Path, data: dict[str, Any]) -> None:
    """serve-c32, the sweep and (llama.cpp) single-stream against one server."""
    from pagedserve.benchmark.model_files import bundled_gguf_path

    port = free_port()
    spec = {
        "pagedserve": lambda: pagedserve_spec(PY, port),
        "vllm": lambda: vllm_spec(port),
        "llamacpp": lambda: llamacpp_spec(bundled_gguf_path(), port),
    }[key]()
    log(f"serving: start {spec.name}")
    server = RunningServer(spec, port, LOGS / f"server_{key}.log")
    try:
        server.ready()
        if "serve" not in skip:
            log(f"serving: serve-c32 against {spec.name}")
            flags = ["serve", "--result-json", str(out / f"serve_{key}.json")]
            if args.quick:
                flags += [
                    "--num-prompts",
                    "8",
                    "--max-concurrency",
                    "4",
                    "--input-len",
                    "32",
                    "--output-len",
                    "16",
                ]
                flags += ["--ignore-eos"]
            else:
                flags += ["--preset", "serve-c32"]
            if key == "pagedserve":
                flags += ["--plot", str(out / "serve-c32-pagedserve.png")]
            run(bench_cli(server.url, *flags), 3600, log_file=LOGS / f"serve_{key}.log")
            data["serve"][key] = json.loads((out / f"serve_{key}.json").read_text())
        if "sweep" not in skip:
            log(f"serving: concurrency sweep against {spec.name}")
            flags = ["sweep", "--ignore-eos", "--result-json", str(out / f"sweep_{key}.json")]
            if args.quick:
                flags += ["--concurrency", "1,4", "--num-prompts", "8", "--min-prompts", "2"]
                flags += ["--prompts-per-concurrency", "2", "--input-len", "32", "--output-len", "16"]
            run(bench_cli(server.url, *flags), 7200, log_file=LOGS / f"sweep_{key}.log")
            data["sweep"][key] = json.loads((out / f"sweep_{key}.json").read_text())
        if key == "llamacpp":
            # Single-stream decode through its server (it has no offline API here): 1000 / median TPOT.
            log("serving: single-stream decode against llama.cpp")
            output_len = "16" if args.quick else "128"
            flags = [
                "serve",
                "--endpoint",
                "/v1/chat/completions",
                "--dataset",
                "topics",
                "--num-prompts",
                "3",
            ]
            flags += ["--max-concurrency", "1", "--output-len", output_len, "--ignore-eos"]
            flags += ["--result-json", str(out / "single_llamacpp.json")]
            run(bench_cli(server.url, *flags), 1800)
            single = json.loads((out / "single_llamacpp.json").read_text())
            data["offline"].append(
                {"workload": "single-stream", "system": "llama.cpp", "output_tokens_per_s": None,
                 "decode_tokens_per_s": 1000.0 / single["median_tpot_ms"] if single["median_tpot_ms"] else None}
            )  # fmt: skip
    finally:
        server.stop()


def machine() -> str:
    from pagedserve.cpu_info import cpu_info

    try:
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kb = 0
    import torch

    load = os.getloadavg()[0]
    busy = (
        f" — WARNING: load average {load:.1f} before the start: other work shares the cores"
        if load > 1.5
        else ""
    )
    # The ISA decides which kernels and which dtype run: numbers from different ISAs are not comparable.
    return (
        f"{cpu_info().describe()}; {os.cpu_count()} cores, {mem_kb / 2**20:.0f} GiB; Python "
        f"{platform.python_version()}, torch {torch.__version__} (ATen {torch.backends.cpu.get_cpu_capability()}); "
        f"{date.today().isoformat()}{busy}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes: checks the harness, numbers mean nothing"
    )
    parser.add_argument("--skip", default="", help=f"comma-separated, any of {', '.join(STEPS)}")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    skip = {s for s in args.skip.split(",") if s}
    if unknown := skip - set(STEPS):
        parser.error(f"unknown --skip entries: {', '.join(sorted(unknown))}")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    missing: dict[str, str] = {}
    data: dict[str, Any] = {
        "machine": machine(),
        "quick": args.quick,
        "offline": [],
        "serve": {},
        "sweep": {},
    }
    data["errors"] = []
    log(data["machine"])

    setup_peers(skip, out, missing)
    if "offline" not in skip:
        offline(args, skip, out, data, missing)
    if "http_overhead" not in skip and not args.quick:
        log("HTTP vs offline on serve-c32's workload (pagedserve)")
        try:
            command = [
                PY,
                str(HERE / "http_overhead.py"),
                "--rounds",
                "2",
                "--json",
                str(out / "http_overhead.json"),
            ]
            run(command, 3600, log_file=LOGS / "http_overhead.log")
            data["http_overhead"] = json.loads((out / "http_overhead.json").read_text())
        except (RuntimeError, subprocess.TimeoutExpired, OSError, json.JSONDecodeError) as exc:
            data["errors"].append(f"http_overhead: {exc}")
    if not {"serve", "sweep"} <= skip:
        for key in ("pagedserve", "vllm", "llamacpp"):
            if key in skip or key in missing:
                continue
            try:
                serve_one(key, args, skip, out, data)
            except (RuntimeError, subprocess.TimeoutExpired, OSError, json.JSONDecodeError) as exc:
                if key == "pagedserve":
                    data["errors"].append(f"pagedserve serving: {exc}")
                else:
                    missing[f"{key} serving"] = str(exc)
    data["missing"] = missing
    data["skipped"] = sorted(skip)
    data["wall_s"] = time.monotonic() - started
    data["logs"] = str(LOGS)
    (out / "all.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    report = render_report(data, out)
    (out / "report.md").write_text(report + "\n")
    print()
    print(report)
    return 1 if data["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
