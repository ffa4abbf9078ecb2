"""Linear layers whose parameters know how to load (and later shard) themselves.

Each parameter carries a `weight_loader(param, loaded_weight, shard_id)` (nano-vllm's habit): tensor parallelism
only has to change what a loader copies, not the model definition. `tp_size` is 1 until that issue lands.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pagedserve.ops import cpu as cpu_ops


class LinearBase(nn.Module):
    def __init__(
        self, input_size: int, output_size: int, bias: bool, tp_size: int = 1, tp_rank: int = 0
    ) -> None:
        super().__init__()
        self.input_size = input_size
        self.output_size = output_size
        self.tp_size = tp_size
        self.tp_rank = tp_rank
        self.weight = nn.Parameter(torch.empty(output_size, input_size), requires_grad=False)
        self.weight.weight_loader = self.weight_loader  # type: ignore[attr-defined]
        if bias:
            self.bias = nn.Parameter(torch.empty(output_size), requires_grad=False)
            self.bias.weight_loader = self.weight_loader  # type: ignore[attr-defined]
        else:
            self.register_parameter("bias", None)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: str | None = None) -> None:
        if param.shape != loaded.shape:
            raise ValueError(f"weight shape {tuple(loaded.shape)} does not match {tuple(param.shape)}")
        param.data.copy_(loaded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class ReplicatedLinear(LinearBase):
    """Not sharded (lm_head for now)."""


class MergedLinear(LinearBase):
    """Several projections of the same input stored as one matrix (q|k|v, gate|up): one matmul instead of three."""

    def __init__(self, input_size: int, output_sizes: dict[str, int], bias: bool) -> None:
        super().__init__(input_size, sum(output_sizes.values()), bias)
        self.shard_offsets: dict[str, tuple[int, int]] = {}
        offset = 0
        for name, size in output_sizes.items():
            self.shard_offsets[name] = (offset, size)
            offset += size

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: str | None = None) -> None:
        if shard_id is None:
            return super().weight_loader(param, loaded)
        offset, size = self.shard_offsets[shard_id]
        target = param.data.narrow(0, offset, size)
        if target.shape != loaded.shape:
            raise ValueError(f"{shard_id} shape {tuple(loaded.shape)} does not match {tuple(target.shape)}")
        target.copy_(loaded)


# Above this many rows a float32 x bfloat16-weight product widens the weight once and uses PyTorch's GEMM: the
# widening is then a few % of the product, and on a Zen 3 (AVX2) oneDNN's float32 GEMM and our panel kernel were
# equal within the machine's noise at 1024-2048 rows (93-149 against 95-144 GFLOP/s); at 512 rows and below ours
# was as fast or faster and reads half the weight bytes.
MIXED_GEMM_MAX_ROWS = 512


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, except on the CPU: a few rows go through the C GEMV (small-batch decode only streams the weights,
    and that loop reads them ~2x faster than the general GEMM, ops/csrc/gemv.c), and float32 activations with
    bfloat16 weights (CPUs without bfloat16 instructions) go through the C mixed GEMM."""
    if cpu_ops.can_gemv(x, weight, bias):
        return cpu_ops.gemv(x, weight, bias)
    if weight.dtype != x.dtype:
        if x.dim() == 2 and x.shape[0] <= MIXED_GEMM_MAX_ROWS and cpu_ops.can_mixed_gemm(x, weight, bias):
            return cpu_ops.mixed_gemm(x, weight, bias)
        return F.linear(x, weight.to(x.dtype), bias)
    return F.linear(x, weight, bias)
