"""The GGUF Q4_0 GEMV alone (one activation row, `cpu_ops.gguf_gemm`): in cache (a 256 x 1152 matrix again and
again: what the kernel computes) and streamed from DRAM (twelve 6912 x 1152 matrices in turn, 54 MB: what decode
sees), on 1 and 2 threads; billions of weights and GB of blocks a second, best of 3.

    .venv/bin/python benchmarks/gguf_gemv.py
"""

from __future__ import annotations

import time

import gguf
import numpy as np
import torch

from pagedserve.ops import cpu as cpu_ops

Q4_0 = gguf.GGMLQuantizationType.Q4_0
K = 1152  # Gemma 3 1B's hidden size


def matrix(rows: int, seed: int) -> torch.Tensor:
    values = np.random.default_rng(seed).standard_normal((rows, K), dtype=np.float32) * np.float32(0.02)
    return torch.from_numpy(np.ascontiguousarray(gguf.quants.quantize(values, Q4_0)))


def main() -> None:
    cases = (
        ("in cache 256x1152", [matrix(256, 0)], 4000),
        ("streamed 6912x1152", [matrix(6912, i) for i in range(12)], 40),
    )
    x = torch.randn(1, K)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for name, matrices, repeats in cases:
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                for _ in range(repeats):
                    for m in matrices:
                        cpu_ops.gguf_gemm(x, m, int(Q4_0), K, None)
                best = min(best, time.perf_counter() - start)
            weights = repeats * sum(m.shape[0] for m in matrices) * K
            nbytes = repeats * sum(m.numel() for m in matrices)
            print(
                f"threads {threads} {name}: {weights / best / 1e9:.2f} G weights/s, {nbytes / best / 1e9:.2f} GB/s"
            )


if __name__ == "__main__":
    main()
