"""The physical limits the engine works against on this machine, measured (not looked up):

- read bandwidth: a float32 sum over 512 MiB, on one thread and on all;
- GEMM throughput: torch.mm at decode batch 32 and 256 and at a prefill shape, float32 and bfloat16;
- small-batch products (1 row, the bundled model's shapes): our C GEMV at the active ISA level against torch's,
  as weight bytes streamed per second.

    .venv/bin/python benchmarks/machine_limits.py [--json OUT]

torch's own kernels follow ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA and ours PAGEDSERVE_CPU_ISA, so the same
script measures what an older CPU's code paths reach on this one. Best of several repeats (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pagedserve.cpu_info import cpu_info
from pagedserve.ops import build
from pagedserve.ops import cpu as cpu_ops

MODEL_SHAPES = [
    (960, 576),
    (576, 576),
    (3072, 576),
    (576, 1536),
    (49152, 576),
]  # SmolLM2-135M: qkv, o, gate_up, down, head


def best_time(fn, repeats: int = 7, inner: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - start) / inner)
    return best


def read_bandwidth(threads: int) -> float:
    torch.set_num_threads(threads)
    data = torch.ones(128 * 1024**2, dtype=torch.float32)  # 512 MiB: far past every cache
    seconds = best_time(lambda: data.sum(), repeats=5, inner=2)
    return data.numel() * 4 / seconds / 1e9


def gemm_gflops(m: int, k: int, n: int, dtype: torch.dtype) -> float:
    a, b = torch.randn(m, k).to(dtype), torch.randn(n, k).to(dtype)
    seconds = best_time(lambda: F.linear(a, b))
    return 2 * m * k * n / seconds / 1e9


def gemv_bandwidth(dtype: torch.dtype, use_kernel: bool) -> float:
    total_s, total_bytes = 0.0, 0
    for n, k in MODEL_SHAPES:
        w, x = torch.randn(n, k).to(dtype), torch.randn(1, k).to(dtype)
        product = cpu_ops.gemv if use_kernel else F.linear
        total_s += best_time(lambda product=product, x=x, w=w: product(x, w))
        total_bytes += w.numel() * w.element_size()
    return total_bytes / total_s / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    cores = torch.get_num_threads()
    result: dict[str, object] = {
        "cpu": cpu_info().describe(),
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
        "kernels": build.active_level(),
        "read_GBps_1_thread": read_bandwidth(1),
        f"read_GBps_{cores}_threads": read_bandwidth(cores),
    }
    torch.set_num_threads(cores)
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).replace("torch.", "")
        for m, k, n in ((32, 576, 1536), (256, 576, 1536), (2048, 576, 1536)):
            result[f"gemm_GFLOPs_{name}_{m}x{k}x{n}"] = gemm_gflops(m, k, n, dtype)
        result[f"gemv_GBps_{name}_torch"] = gemv_bandwidth(dtype, use_kernel=False)
        if build.load() is not None:
            result[f"gemv_GBps_{name}_ours"] = gemv_bandwidth(dtype, use_kernel=True)
    for key, value in result.items():
        print(f"{key}: {value:.1f}" if isinstance(value, float) else f"{key}: {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
