"""How much of the engine's offline throughput the HTTP server keeps (issue 3's target: >= 90 % at 32 clients).

The same workload both ways, measured in one run on the same machine, alternating so drift hits both:
- offline: `LLM.generate` on serve-c32's 200 random 128-token prompts, 128 output tokens each (ignore_eos), with
  `max_num_seqs=32`, so the batch holds 32 requests as it does behind 32 clients;
- HTTP: `pagedserve serve` (default flags, bfloat16) under `pagedserve bench serve --preset serve-c32`: 32
  streaming clients on /v1/completions, the load generator on the same cores; once with the engine core in its own
  process (the default) and once on a thread of the server (PAGEDSERVE_ENABLE_ENGINE_PROCESS=0).
Each side runs in its own process. Prints the output throughputs (best of `--rounds`), their ratios to offline, and
the HTTP sides' TTFT p50/p99 (of the round with the best throughput).

    .venv/bin/python benchmarks/http_overhead.py [--rounds 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # peers/ (server start/stop helpers)

from peers.servers import RunningServer, free_port, pagedserve_spec  # noqa: E402

PY = sys.executable


def offline_once() -> dict[str, float]:
    """One timed offline run of serve-c32's requests (this runs in a child process)."""
    from pagedserve import LLM, SamplingParams
    from pagedserve.benchmark.datasets import random_requests
    from pagedserve.benchmark.presets import SERVE_PRESETS

    preset = SERVE_PRESETS["serve-c32"]
    llm = LLM(dtype="bfloat16", max_num_seqs=preset.max_concurrency)
    requests = random_requests(llm.get_tokenizer(), preset.num_prompts, preset.input_len, preset.output_len)
    params = SamplingParams(temperature=0.0, max_tokens=preset.output_len, ignore_eos=True)
    llm.generate(requests[0].prompt, SamplingParams(max_tokens=4), use_tqdm=False)  # untimed, as bench serve
    start = time.perf_counter()
    outputs = llm.generate([r.prompt for r in requests], params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return {"output_tokens": tokens, "duration_s": elapsed, "output_throughput": tokens / elapsed}


def offline_in_child() -> dict[str, float]:
    result = subprocess.run(
        [PY, __file__, "--offline-child"], capture_output=True, text=True, timeout=1800, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


# name -> the server's environment
LAYOUTS = {"engine process": {}, "engine thread": {"PAGEDSERVE_ENABLE_ENGINE_PROCESS": "0"}}


def http_once(logs: Path, round_number: int, layout: str) -> dict[str, float]:
    port = free_port()
    spec = pagedserve_spec(PY, port)
    spec.env.update(LAYOUTS[layout])
    log = logs / f"http_overhead_server_{layout.replace(' ', '_')}_{round_number}.log"
    server = RunningServer(spec, port, log)
    try:
        server.ready()
        result_json = logs / f"http_overhead_serve_{round_number}.json"
        command = [PY, "-m", "pagedserve.cli.main", "bench", "serve", "--base-url", server.url, "--preset",
                   "serve-c32", "--disable-tqdm", "--result-json", str(result_json)]  # fmt: skip
        subprocess.run(command, check=True, timeout=3600, stdout=subprocess.DEVNULL)
        data = json.loads(result_json.read_text())
        if data.get("failed"):
            raise RuntimeError(f"{data['failed']} requests failed through HTTP")
        return {
            "output_tokens": data["total_output_tokens"],
            "duration_s": data["duration"],
            "output_throughput": data["output_throughput"],
            "p50_ttft_ms": data["median_ttft_ms"],
            "p99_ttft_ms": data["p99_ttft_ms"],
        }
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rounds", type=int, default=2, help="offline/HTTP pairs; the best of each is compared"
    )
    parser.add_argument("--json", type=Path, help="write the result here")
    parser.add_argument("--offline-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.offline_child:
        print(json.dumps(offline_once()))
        return
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    offline: list[dict[str, float]] = []
    http: dict[str, list[dict[str, float]]] = {layout: [] for layout in LAYOUTS}
    with tempfile.TemporaryDirectory() as tmp:
        for round_number in range(args.rounds):
            offline.append(offline_in_child())
            print(
                f"round {round_number + 1}: offline {offline[-1]['output_throughput']:.1f} tok/s", flush=True
            )
            for layout, results in http.items():
                results.append(http_once(Path(tmp), round_number, layout))
                print(f"round {round_number + 1}: HTTP, {layout}: {_describe(results[-1])}", flush=True)
    best_offline = max(r["output_throughput"] for r in offline)
    summary: dict[str, object] = {"offline": offline, "http": http}
    print(f"serve-c32 workload: offline {best_offline:.1f} tok/s")
    for layout, results in http.items():
        best = max(results, key=lambda r: r["output_throughput"])
        ratio = best["output_throughput"] / best_offline
        summary[f"ratio {layout}"] = ratio
        print(f"  HTTP (32 streaming clients), {layout}: {_describe(best)}; HTTP / offline = {ratio:.3f}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


def _describe(result: dict[str, float]) -> str:
    return (
        f"{result['output_throughput']:.1f} tok/s, TTFT p50 {result['p50_ttft_ms']:.0f} ms, "
        f"p99 {result['p99_ttft_ms']:.0f} ms"
    )


if __name__ == "__main__":
    main()
