"""The GGUF GEMV alone (one activation row, `cpu_gguf.gguf_gemm`), rows in the file's order against rows
interleaved in groups of four (`gguf_quant.interleave_rows`, what the runner multiplies after loading): in cache (a
256 x 1152 matrix again and again: what the kernel computes) and streamed from DRAM (twelve 6912 x 1152 matrices
in turn, ~54 MB in Q4_0: what decode sees), on 1 and 2 threads; billions of weights and GB of blocks a second,
best of 3, the two layouts alternated within each round.

    .venv/bin/python benchmarks/gguf_gemv.py [--types Q4_0 Q4_1 Q8_0 Q4_K Q6_K] [--rows M] [--k K]

`--rows M` multiplies M activation rows at once (a decode batch of M sequences: 2-8 take the multi-row GEMV, 2-32
of Q4_0 / Q4_1 / Q8_0 on the AVX-512 levels);
G weights/s counts the matrix's weights, each used M times. `--k K` sets the weights a row (576: SmolLM2's hidden
size, 2048: Llama 3.2 1B's). Set PYTHONPATH to another checkout's src to measure
its kernels (a before / after in alternating processes).
"""

from __future__ import annotations

import argparse
import time

import gguf
import numpy as np
import torch

from pagedserve.layers.gguf_quant import INTERLEAVE, interleave_rows
from pagedserve.ops import cpu_gguf

K = 1152  # Gemma 3 1B's hidden size (1024 for the K-quants: whole 256-weight super-blocks)


def matrix(rows: int, cols: int, seed: int, qtype: gguf.GGMLQuantizationType) -> torch.Tensor:
    """Random blocks (speed does not depend on the values; the gguf package cannot write K-quants), their
    float16 scales small and finite."""
    per_block, size = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (rows, cols // per_block, size), dtype=np.uint8)
    at = 208 if qtype == gguf.GGMLQuantizationType.Q6_K else 0
    raw[..., at : at + 2] = (
        rng.uniform(-0.02, 0.02, (rows, cols // per_block, 1)).astype(np.float16).view(np.uint8)
    )
    return torch.from_numpy(raw.reshape(rows, -1))


def rate(
    matrices: list[torch.Tensor], qtype: int, cols: int, interleave: int, repeats: int, rows: int
) -> float:
    x = torch.randn(rows, cols)
    start = time.perf_counter()
    for _ in range(repeats):
        for m in matrices:
            cpu_gguf.gguf_gemm(x, m, qtype, cols, None, interleave)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--types", nargs="+", default=["Q4_0"])
    parser.add_argument("--rows", type=int, default=1, help="activation rows (sequences of a decode batch)")
    parser.add_argument(
        "--k", type=int, default=None, help="weights a row (default 1152; 1024 for the K-quants)"
    )
    args = parser.parse_args()
    for name in args.types:
        qtype = gguf.GGMLQuantizationType[name]
        cols = args.k or (1024 if name in ("Q4_K", "Q6_K") else K)
        cases = (
            ("in cache 256 rows", [matrix(256, cols, 0, qtype)], 4000),
            ("streamed 6912 rows x 12", [matrix(6912, cols, i, qtype) for i in range(12)], 40),
        )
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for case, plain, repeats in cases:
                grouped = [interleave_rows(m, int(qtype)) for m in plain]
                best = {1: float("inf"), INTERLEAVE: float("inf")}
                for _ in range(3):
                    best[1] = min(best[1], rate(plain, int(qtype), cols, 1, repeats, args.rows))
                    best[INTERLEAVE] = min(
                        best[INTERLEAVE], rate(grouped, int(qtype), cols, INTERLEAVE, repeats, args.rows)
                    )
                weights = repeats * sum(m.shape[0] for m in plain) * cols
                nbytes = repeats * sum(m.numel() for m in plain)
                line = ", ".join(
                    f"{label} {weights / best[il] / 1e9:.2f} G weights/s {nbytes / best[il] / 1e9:.2f} GB/s"
                    for label, il in (("file order", 1), ("interleaved", INTERLEAVE))
                )
                print(
                    f"{name} rows {args.rows} threads {threads} {case}: {line} ({best[1] / best[INTERLEAVE]:.2f}x)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
