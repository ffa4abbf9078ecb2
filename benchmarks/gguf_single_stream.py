"""Single-stream decode of the bundled Q4_1 GGUF: pagedserve with its blocks kept, pagedserve dequantized at load,
and llama.cpp's server on the same file, each measured the same way (issue 11's performance target).

Every system is an HTTP server on loopback, started alone (2 cores: never two at once), and measured by
`pagedserve bench serve` with one request in flight: 3 chat prompts x 128 tokens, EOS ignored; decode tok/s =
1000 / median TPOT. Rounds are interleaved (system A, B, C, A, B, C, ...) and the report gives medians and each
round, with the CPU's ISA.

    .venv/bin/python benchmarks/gguf_single_stream.py [--rounds 3] [--output-len 128] [--systems ...] [--isa avx2]

`--isa avx2` stands in for an AVX2-only CPU on an AVX-512 host: pagedserve runs its AVX2 kernels (and torch its
AVX2 paths), llama.cpp the build from `LLAMA_CPP_ISA=avx2 benchmarks/peers/setup_llamacpp.sh`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from isa_compare import MODES  # noqa: E402
from peers.servers import (  # noqa: E402
    CACHE,
    REPO,
    RunningServer,
    ServerSpec,
    free_port,
    llamacpp_spec,
    missing_reason,
    pagedserve_spec,
)

from pagedserve.cpu_info import cpu_info  # noqa: E402
from pagedserve.models.loader import resolve_model_source  # noqa: E402

LLAMA_SERVER_AVX2 = CACHE / "llama-server-avx2"


def pagedserve(port: int, isa: str, *flags: str) -> ServerSpec:
    spec = pagedserve_spec(sys.executable, port, "--max-model-len", "1024", *flags, dtype="auto")
    spec.env.update(MODES[isa])  # avx2: this host's AVX2 code paths (ours, ATen's, oneDNN's)
    return spec


SYSTEMS = {
    "pagedserve gguf (blocks kept)": lambda port, isa: pagedserve(port, isa, "--quantization", "gguf"),
    "pagedserve gguf eager (--enforce-eager)": lambda port, isa: pagedserve(
        port, isa, "--quantization", "gguf", "--enforce-eager"
    ),
    "pagedserve dequantized (dtype auto)": lambda port, isa: pagedserve(port, isa, "--quantization", "none"),
    "llama.cpp": lambda port, isa: llamacpp(port, isa),
}


def llamacpp(port: int, isa: str) -> ServerSpec:
    spec = llamacpp_spec(resolve_model_source(None).path, port, slots=1)
    if isa == "avx2":
        spec.command[0] = str(LLAMA_SERVER_AVX2)
    elif "amx_int8" in cpu_info().features:
        # llama.cpp's AMX backend (weights repacked at load) died with SIGSEGV in ggml_backend_amx_mul_mat on the
        # Q4_1 file (2026-12-03, Sapphire Rapids-class VM); without repacking it runs its AVX-512 VNNI kernels.
        spec.command.append("--no-repack")
    return spec


def measure(spec: ServerSpec, port: int, output_len: int, logs: Path, concurrency: int = 1) -> float:
    """Decode tok/s of one stream (1000 / median TPOT), or with `concurrency` streams at once (3 prompts each) the
    output tok/s of all of them over the run."""
    server = RunningServer(spec, port, logs / f"{spec.name.replace(' ', '_')}_{port}.log")
    try:
        server.ready()
        result = logs / f"result_{port}.json"
        command = [
            sys.executable, "-m", "pagedserve.cli.main", "bench", "serve", "--base-url", server.url,
            "--endpoint", "/v1/chat/completions", "--dataset", "topics", "--num-prompts", str(3 * concurrency),
            "--max-concurrency", str(concurrency), "--output-len", str(output_len), "--ignore-eos", "--disable-tqdm",
            "--result-json", str(result),
        ]  # fmt: skip
        subprocess.run(command, cwd=REPO, check=True, capture_output=True, timeout=1800)
        metrics = json.loads(result.read_text())
        return 1000.0 / metrics["median_tpot_ms"] if concurrency == 1 else metrics["output_throughput"]
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument(
        "--systems", default=",".join(SYSTEMS), help="comma-separated names from: " + ", ".join(SYSTEMS)
    )
    parser.add_argument("--isa", choices=("native", "avx2"), default="native")
    args = parser.parse_args()
    names = [name.strip() for name in args.systems.split(",")]
    llama_missing = missing_reason("llamacpp") if args.isa == "native" else None
    if args.isa == "avx2" and not LLAMA_SERVER_AVX2.exists():
        llama_missing = (
            f"{LLAMA_SERVER_AVX2} is not built (LLAMA_CPP_ISA=avx2 benchmarks/peers/setup_llamacpp.sh)"
        )
    if "llama.cpp" in names and llama_missing:
        print(f"llama.cpp: missing: {llama_missing}")
        names.remove("llama.cpp")
    numbers: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for name in names:
                port = free_port()
                numbers[name].append(measure(SYSTEMS[name](port, args.isa), port, args.output_len, Path(tmp)))
                print(
                    f"[{time.strftime('%H:%M:%S')}] round {round_ + 1} {name}: {numbers[name][-1]:.1f} tok/s",
                    flush=True,
                )
    print(f"\nCPU: {cpu_info().describe()}; code paths: {args.isa}")
    print_table(numbers)


def print_table(numbers: dict[str, list[float]], unit: str = "decode tok/s") -> None:
    """Median tok/s of each system, its rounds, and its ratio to llama.cpp's median (when it ran)."""
    reference = statistics.median(numbers["llama.cpp"]) if "llama.cpp" in numbers else None
    print(f"\n| system | {unit} (median) | rounds | ÷ llama.cpp |\n|---|---|---|---|")
    for name, values in numbers.items():
        median = statistics.median(values)
        ratio = f"{median / reference:.2f}×" if reference else "-"
        print(f"| {name} | {median:.1f} | {', '.join(f'{v:.1f}' for v in values)} | {ratio} |")


if __name__ == "__main__":
    main()
