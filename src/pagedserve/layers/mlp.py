"""The gated MLP of the Llama family (SiLU; Gemma's GELU): gate|up merged into one column-parallel product, down
row-parallel."""

from __future__ import annotations

import torch
from torch import nn

from pagedserve.distributed import parallel_state
from pagedserve.distributed.partition import even_range
from pagedserve.layers.activation import GeluTanhAndMul, SiluAndMul
from pagedserve.layers.linear import MergedLinear


class GatedMLP(nn.Module):
    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        bias: bool = False,
        reduce: bool = True,
        gelu_tanh: bool = False,
    ) -> None:
        """reduce=False: under tensor parallelism the output is this rank's partial sum, for a caller that sums
        several MLPs with one all-reduce (the experts of layers/moe.py). gelu_tanh: Gemma's gate instead of SiLU."""
        super().__init__()
        tp = parallel_state.get_tp()
        rows = even_range(intermediate_size, tp.rank, tp.size)
        self.gate_up_proj = MergedLinear(
            hidden_size,
            {"gate": intermediate_size, "up": intermediate_size},
            bias=bias,
            part_slices={"gate": rows, "up": rows},
        )
        self.down_proj = MergedLinear(
            intermediate_size, {"down": hidden_size}, bias=bias, input_slice=rows, reduce=reduce
        )
        self.act = GeluTanhAndMul() if gelu_tanh else SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_up_proj(x)))
