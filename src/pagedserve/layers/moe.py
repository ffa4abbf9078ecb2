"""A mixture-of-experts feed-forward block (Mixtral, Qwen2-MoE, Qwen3-MoE): a router scores every expert for each
token, the top k experts' SiLU MLPs run on the tokens routed to them, and their outputs are summed with the
router's weights.

Each expert is the dense model's `GatedMLP` (its partial sum left unreduced), so experts load, shard and
quantize as the dense MLP does (checkpoints store them one expert at a time). Under tensor parallelism every rank
keeps a slice of every expert's intermediate rows (vLLM's layout for TP without expert parallelism): each rank's
experts produce partial sums, and the block makes one all-reduce for all of them instead of one per expert.

Tokens are grouped by expert (one sort), so each expert runs one matrix product over its tokens. The grouping is
data-dependent (a host sync for the group sizes), which is why MoE models run eager decode steps: no CPU decode
graphs, no CUDA graphs.
"""

from __future__ import annotations

import torch
from torch import nn

from pagedserve.distributed import parallel_state
from pagedserve.layers.linear import ReplicatedLinear
from pagedserve.layers.mlp import GatedMLP


class RouterLinear(ReplicatedLinear):
    """The router (and Qwen2-MoE's shared-expert gate): whole on every rank, and never quantized at load (vLLM
    keeps it in the model's dtype: a few thousand weights a layer decide which experts run)."""

    def quantize_fp8(self) -> bool:
        return False


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
        self.experts = nn.ModuleList(
            GatedMLP(hidden_size, intermediate_size, reduce=False) for _ in range(num_experts)
        )
        self.shared_expert: GatedMLP | None = None
        self.shared_expert_gate: RouterLinear | None = None
        if shared_intermediate_size:
            self.shared_expert = GatedMLP(hidden_size, shared_intermediate_size, reduce=False)
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
        tokens = x.shape[0]
        weights, experts = self.route(x)
        if tokens == 1:
            out = self._one_token(x, weights[0].tolist(), experts[0].tolist())
        else:
            out = self._grouped(x, weights, experts)
        if self.shared_expert is not None and self.shared_expert_gate is not None:
            out += torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return parallel_state.all_reduce(out) if self.reduce else out

    def _one_token(self, x: torch.Tensor, weights: list[float], experts: list[int]) -> torch.Tensor:
        """Single-stream decode: the k experts' outputs summed with their weights, nothing to group (the grouping's
        sort, gather, scatter and batched sum took ~0.9 ms of a 4.6 ms Qwen3-30B-A3B-shaped layer here)."""
        out = self.experts[experts[0]](x).mul_(weights[0])
        for weight, expert in zip(weights[1:], experts[1:]):
            out.add_(self.experts[expert](x), alpha=weight)
        return out

    def _grouped(self, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        tokens = x.shape[0]
        flat = experts.flatten()
        order = flat.argsort(stable=True)
        # One host sync per layer: how many of the tokens' choices went to each expert.
        counts = torch.bincount(flat, minlength=self.num_experts).tolist()
        grouped = x[order // self.top_k]  # each choice's token row, in expert order: one gather
        outputs = torch.empty_like(grouped)
        start = 0
        for expert, count in zip(self.experts, counts):
            if count:
                outputs[start : start + count] = expert(grouped[start : start + count])
                start += count
        # Back to (token, choice) order with one scatter, then the weighted sum over each token's choices: no
        # accumulation per expert (index_add_ per expert was one parallel region each, 8 a layer at decode).
        by_choice = torch.empty_like(outputs)
        by_choice[order] = outputs
        return torch.bmm(weights.unsqueeze(1), by_choice.view(tokens, self.top_k, -1)).squeeze(1)
