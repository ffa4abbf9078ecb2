"""A mixture-of-experts feed-forward block (Mixtral, Qwen2-MoE, Qwen3-MoE): a router scores every expert for each
token, the top k experts' SiLU MLPs run on the tokens routed to them, and their outputs are summed with the
router's weights.

Each expert is a gate|up and a down `MergedLinear`, so experts load, shard and quantize as the dense MLP does
(checkpoints store them one expert at a time). Under tensor parallelism every rank keeps a slice of every
expert's intermediate rows (vLLM's layout for TP without expert parallelism): each rank's experts produce partial
sums, and the block makes one all-reduce for all of them instead of one per expert.

Tokens are grouped by expert (one sort), so each expert runs one matrix product over its tokens. The grouping is
data-dependent (a host sync for the group sizes), which is why MoE models run eager decode steps: no CPU decode
graphs, no CUDA graphs.
"""

from __future__ import annotations

import torch
from torch import nn

from pagedserve.distributed import parallel_state
from pagedserve.distributed.partition import even_range
from pagedserve.layers.activation import SiluAndMul
from pagedserve.layers.linear import MergedLinear, ReplicatedLinear


class RouterLinear(ReplicatedLinear):
    """The router (and Qwen2-MoE's shared-expert gate): whole on every rank, and never quantized at load (vLLM
    keeps it in the model's dtype: a few thousand weights a layer decide which experts run)."""

    def quantize_fp8(self) -> bool:
        return False


class ExpertMLP(nn.Module):
    """One expert's SiLU MLP; under tensor parallelism its output is this rank's partial sum (not reduced)."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        tp = parallel_state.get_tp()
        rows = even_range(intermediate_size, tp.rank, tp.size)
        self.gate_up_proj = MergedLinear(
            hidden_size,
            {"gate": intermediate_size, "up": intermediate_size},
            bias=False,
            part_slices={"gate": rows, "up": rows},
        )
        self.down_proj = MergedLinear(
            intermediate_size, {"down": hidden_size}, bias=False, input_slice=rows, reduce=False
        )
        self.act = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_up_proj(x)))


class SparseMoeBlock(nn.Module):
    def __init__(
        self,
        hidden_size: int,
        num_experts: int,
        top_k: int,
        intermediate_size: int,
        renormalize: bool,
        shared_intermediate_size: int = 0,
    ) -> None:
        """renormalize: the top k weights are rescaled to sum to 1 (Mixtral always; Qwen's norm_topk_prob).
        shared_intermediate_size: Qwen2-MoE's shared expert, run on every token and scaled by a sigmoid gate."""
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(
                f"num_experts_per_tok must be between 1 and num_experts ({num_experts}), got {top_k}"
            )
        self.num_experts, self.top_k, self.renormalize = num_experts, top_k, renormalize
        self.gate = RouterLinear(hidden_size, num_experts, bias=False)
        self.experts = nn.ModuleList(ExpertMLP(hidden_size, intermediate_size) for _ in range(num_experts))
        self.shared_expert: ExpertMLP | None = None
        self.shared_expert_gate: RouterLinear | None = None
        if shared_intermediate_size:
            self.shared_expert = ExpertMLP(hidden_size, shared_intermediate_size)
            self.shared_expert_gate = RouterLinear(hidden_size, 1, bias=False)
        self.reduce = parallel_state.get_tp().size > 1

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights, expert ids), each [tokens, top_k]: softmax over all experts in float32, then the top k, as
        transformers and vLLM compute it."""
        probabilities = torch.softmax(self.gate(x), dim=-1, dtype=torch.float32)
        weights, experts = probabilities.topk(self.top_k, dim=-1)
        if self.renormalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights.to(x.dtype), experts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, experts = self.route(x)
        flat = experts.flatten()
        order = flat.argsort(stable=True)
        # One host sync per layer: how many of the tokens' choices went to each expert.
        counts = torch.bincount(flat, minlength=self.num_experts).tolist()
        token_rows = order // self.top_k
        choice_weights = weights.flatten()[order].unsqueeze(1)
        out = torch.zeros_like(x)
        start = 0
        for expert, count in zip(self.experts, counts):
            if count:
                rows = token_rows[start : start + count]
                out.index_add_(0, rows, expert(x[rows]) * choice_weights[start : start + count])
                start += count
        if self.shared_expert is not None and self.shared_expert_gate is not None:
            out += torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return parallel_state.all_reduce(out) if self.reduce else out
