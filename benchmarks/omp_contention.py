"""OpenMP wait policy against CPU contention: decode speed of the bundled model, quiet and with other processes
busy on the same cores, for each libgomp setting the engine process could start with.

Each setting runs in a fresh process (libgomp reads its environment when torch loads it). The busy load is one
shell busy-loop per `--busy` (default 1: "the other core busy", as CI runs beside other jobs, or a pod sharing
its CPU quota). Prints tok/s per (setting, load) and each setting's ratio to the default.

    .venv/bin/python benchmarks/omp_contention.py --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CHILD = r"""
import json, os, sys, time
from pagedserve.entrypoints.llm import LLM
from pagedserve.sampling_params import SamplingParams
llm = LLM(max_model_len=1024, max_num_seqs=16)
single = SamplingParams(max_tokens=64, ignore_eos=True, temperature=0)
batch = SamplingParams(max_tokens=32, ignore_eos=True, temperature=0)
llm.generate(["Warm up:"], SamplingParams(max_tokens=8, ignore_eos=True))
t = time.perf_counter(); llm.generate(["Tell me a story about a ship:"], single); s = time.perf_counter() - t
t = time.perf_counter(); llm.generate([f"Story {i}:" for i in range(16)], batch); b = time.perf_counter() - t
print(json.dumps({"single_tok_s": 64 / s, "batch16_tok_s": 16 * 32 / b}))
"""

SETTINGS: dict[str, dict[str, str]] = {
    "default": {},
    "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
    "GOMP_SPINCOUNT=1000": {"GOMP_SPINCOUNT": "1000"},
    "GOMP_SPINCOUNT=100": {"GOMP_SPINCOUNT": "100"},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
}


def run_child(extra_env: dict[str, str]) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env.update(extra_env)
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"child failed ({extra_env}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--busy", type=int, default=1, help="busy-loop processes for the loaded runs")
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    args = parser.parse_args()
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        for load in ("quiet", "busy"):
            hogs = [
                subprocess.Popen(["sh", "-c", "while :; do :; done"])
                for _ in range(args.busy if load == "busy" else 0)
            ]
            try:
                for name in args.settings:
                    results.setdefault((name, load), []).append(run_child(SETTINGS[name]))
                    time.sleep(1)
            finally:
                for hog in hogs:
                    hog.kill()
                    hog.wait()
    print(f"{'setting':26} {'load':6} {'single tok/s':>13} {'batch-16 tok/s':>15}  (median of {args.rounds})")
    for (name, load), runs in results.items():
        single = statistics.median(r["single_tok_s"] for r in runs)
        batch = statistics.median(r["batch16_tok_s"] for r in runs)
        print(f"{name:26} {load:6} {single:13.1f} {batch:15.1f}")


if __name__ == "__main__":
    main()
