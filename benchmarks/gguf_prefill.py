"""Prefill speed of a GGUF file: pagedserve (`--quantization gguf`, dtype auto, one prompt of N tokens, no prefix
cache, prompt tokens / wall seconds of a 1-token request in-process: sampling and the step included) against
llama.cpp's server on the same file (its own `timings.prompt_per_second`, cache_prompt off). Each system runs in
its own process, rounds alternating; `--baseline-src` adds another checkout's pagedserve (a before / after).

    .venv/bin/python benchmarks/gguf_prefill.py [--tokens 512] [--rounds 2] [--baseline-src /tmp/base/src]

The default model is the Q4_K_M file of `q4km_single_stream.py --tied` (Llama 3.2 1B's shape, written once into
.bench-cache/). Prints a markdown table with the CPU's ISA.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gguf_single_stream import print_table  # noqa: E402
from peers.servers import LLAMA_SERVER, missing_reason  # noqa: E402
from q4km_single_stream import write_llama  # noqa: E402
from random_gguf import cached_model  # noqa: E402

from pagedserve.cpu_info import cpu_info  # noqa: E402

PORT = 8765


def prompt(tokens: int, variant: int) -> list[int]:
    """Token ids inside SmolLM2's vocabulary, the first one varied per request (no cache can help)."""
    ids = [(i * 7919) % 40000 + 100 for i in range(tokens)]
    ids[0] += variant
    return ids


def pagedserve_rates(model: Path, tokens: int, requests: int) -> list[float]:
    from pagedserve import LLM, SamplingParams

    llm = LLM(model=str(model), max_model_len=tokens + 64, quantization="gguf", enable_prefix_caching=False)
    params = SamplingParams(temperature=0.0, max_tokens=1)
    rates = []
    for r in range(requests + 1):  # the first warms up
        start = time.perf_counter()
        llm.generate([{"prompt_token_ids": prompt(tokens, r)}], params, use_tqdm=False)
        if r:
            rates.append(tokens / (time.perf_counter() - start))
    return rates


def llamacpp_rates(model: Path, tokens: int, requests: int) -> list[float]:
    command = [str(LLAMA_SERVER), "-m", str(model), "--host", "127.0.0.1", "--port", str(PORT), "-np", "1"]
    command += ["-c", str(tokens + 64), "-t", str(os.cpu_count() or 2)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health")
                break
            except OSError:
                time.sleep(0.5)
        rates = []
        for r in range(requests + 1):
            body = json.dumps({"prompt": prompt(tokens, r), "n_predict": 1, "cache_prompt": False}).encode()
            request = urllib.request.Request(
                f"http://127.0.0.1:{PORT}/completion", body, {"Content-Type": "application/json"}
            )
            timings = json.load(urllib.request.urlopen(request))["timings"]
            if r:
                rates.append(timings["prompt_per_second"])
        return rates
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=3, help="timed requests a round (after one warm-up)")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--baseline-src", type=Path, default=None, help="another checkout's src folder")
    parser.add_argument("--system", default=None, help=argparse.SUPPRESS)  # one system, in a child process
    args = parser.parse_args()
    model = args.model or cached_model("llama-1b-shaped-q4_k_m-tied.gguf", lambda out: write_llama(out, True))
    if args.system is not None:
        rates = (llamacpp_rates if args.system == "llama.cpp" else pagedserve_rates)(
            model, args.tokens, args.requests
        )
        print(json.dumps(rates))
        return
    systems = {"pagedserve": None}
    if args.baseline_src is not None:
        systems[f"pagedserve from {args.baseline_src}"] = str(args.baseline_src.resolve())
    if missing := missing_reason("llamacpp"):
        print(f"llama.cpp: missing: {missing}")
    else:
        systems["llama.cpp"] = None
    numbers: dict[str, list[float]] = {name: [] for name in systems}
    for round_ in range(args.rounds):
        for name, src in systems.items():
            env = dict(os.environ, **({"PYTHONPATH": src} if src else {}))
            command = [
                sys.executable,
                __file__,
                "--system",
                "llama.cpp" if name == "llama.cpp" else "pagedserve",
            ]
            command += ["--tokens", str(args.tokens), "--requests", str(args.requests), "--model", str(model)]
            out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
            rates = json.loads(out.strip().splitlines()[-1])
            numbers[name].append(statistics.median(rates))
            print(
                f"[{time.strftime('%H:%M:%S')}] round {round_ + 1} {name}: {numbers[name][-1]:.1f} tok/s",
                flush=True,
            )
    print(f"\nCPU: {cpu_info().describe()}; {model.name}, one prompt of {args.tokens} tokens")
    print_table(numbers, "prefill tok/s")


if __name__ == "__main__":
    main()
