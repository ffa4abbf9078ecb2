"""Where a GGUF model's single-stream decode spends its matrix products, by matrix: every single-row
`cpu_gguf.gguf_gemm` call timed in-process (eager, so each call is visible), grouped by (GGML type, rows, k,
interleave), with the GB/s of blocks it read. Read the GB/s against the machine's read bandwidth
(`machine_limits.py`) and against the model's other matrices in the same run (the VM's neighbours move all of them).

    .venv/bin/python benchmarks/gemv_by_shape.py MODEL.gguf [--tokens 128]

e.g. the Q4_K_M file `q4km_single_stream.py --tied` writes to .bench-cache/. Set PYTHONPATH to another checkout's
src for a before / after in alternating processes.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

from pagedserve import LLM, SamplingParams
from pagedserve.ops import cpu_gguf


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model")
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    llm = LLM(model=args.model, quantization="gguf", max_model_len=1024, enforce_eager=True)
    params = SamplingParams(temperature=0.0, max_tokens=args.tokens, ignore_eos=True)
    prompt = [{"prompt_token_ids": list(range(100, 140))}]
    llm.generate(prompt, params)  # warm-up

    calls: dict[tuple[int, int, int, int], list[float]] = defaultdict(list)
    nbytes: dict[tuple[int, int, int, int], int] = {}
    plain = cpu_gguf.gguf_gemm

    def timed(x, data, qtype, cols, bias=None, interleave=1, out=None):
        start = time.perf_counter()
        result = plain(x, data, qtype, cols, bias, interleave, out)
        if x.shape[0] == 1:
            key = (qtype, data.shape[0], cols, interleave)
            calls[key].append(time.perf_counter() - start)
            nbytes[key] = data.numel()
        return result

    cpu_gguf.gguf_gemm = timed
    start = time.perf_counter()
    llm.generate(prompt, params)
    wall = time.perf_counter() - start
    print(f"{1000 * wall / args.tokens:.2f} ms a token (eager, timed)")
    total = 0.0
    for key, times in sorted(calls.items(), key=lambda item: -sum(item[1])):
        spent = sum(times)
        total += spent
        qtype, rows, cols, interleave = key
        print(
            f"  type {qtype} {rows} x {cols} interleave {interleave}: {len(times) / args.tokens:.1f} calls a token, "
            f"{1e6 * spent / len(times):.0f} us a call, {nbytes[key] * len(times) / spent / 1e9:.1f} GB/s, "
            f"{1000 * spent / args.tokens:.2f} ms a token"
        )
    print(f"  all single-row GEMVs: {1000 * total / args.tokens:.2f} ms a token")


if __name__ == "__main__":
    main()
