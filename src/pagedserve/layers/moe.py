"""A mixture-of-experts feed-forward block (Mixtral, Qwen2-MoE, Qwen3-MoE): a router scores every expert for each
token, the top k experts' SiLU MLPs run on the tokens routed to them, and their outputs are summed with the
router's weights.

Each expert is the dense model's `GatedMLP` (its partial sum left unreduced), so experts load, shard and
quantize as the dense MLP does (checkpoints store them one expert at a time). Under tensor parallelism every rank
keeps a slice of every expert's intermediate rows (vLLM's layout for TP without expert parallelism): each rank's
experts produce partial sums, and the block makes one all-reduce for all of them instead of one per expert.

Tokens are grouped by expert (one sort), so each expert runs one matrix product over its tokens. The grouping is
data-dependent (a host sync for the group sizes), which is why MoE models run eager CUDA steps. On the CPU, when
every expert keeps its matrices in GGUF blocks (`prepare_moe_kernels`, after loading), a decode step's block is one
C call (csrc/gguf_moe.c: routing, the chosen experts read through tables of their blocks' addresses, the weighted
sum): no host sync, nothing that depends on the routing in Python, so those steps are CPU decode graphs too.
"""

from __future__ import annotations

import torch
from torch import nn

from pagedserve.distributed import parallel_state
from pagedserve.layers.linear import MergedLinear, ReplicatedLinear
from pagedserve.layers.mlp import GatedMLP
from pagedserve.ops import cpu_gguf

# Tokens a step's block sends through the C kernel: a decode batch (the GEMVs' row limit, ops/csrc/gguf.c, and the
# largest CPU decode graph). Past it every token re-reads its experts; grouping tokens by expert reads them once.
KERNEL_MAX_TOKENS = 8

ExpertTable = tuple[torch.Tensor, int, int]
"""Each expert's blocks of one projection, for csrc/gguf_moe.c: (addresses int64 [experts], GGML type, interleave)."""


def _expert_table(layers: list[MergedLinear]) -> ExpertTable | None:
    """The table of one projection when every expert keeps it in GGUF blocks of one type and layout that the CPU
    kernels read (no parts of other types, no bias, rows in groups of four: the kernel's unit of work); else
    None."""
    first = layers[0]
    if first.output_size % 4:
        return None
    kinds = {(layer.weight_type, layer.weight_interleave) for layer in layers}
    plain = all(
        layer.part_types is None and layer.bias is None and layer.input_perm is None and layer.lora is None
        for layer in layers
    )
    if first.weight_type is None or len(kinds) != 1 or not plain:
        return None
    if not all(cpu_gguf.can_gguf(layer.weight) for layer in layers):
        return None
    addresses = torch.tensor([layer.weight.data_ptr() for layer in layers], dtype=torch.int64)
    return addresses, first.weight_type, first.weight_interleave


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
        self.kernel_tables: tuple[ExpertTable, ExpertTable] | None = None
        """(gate|up, down) for the C kernel once `prepare_kernel` found every expert in GGUF blocks; else None."""

    def prepare_kernel(self) -> bool:
        """Tables of the experts' blocks for csrc/gguf_moe.c, once loading (and regrouping rows) is done: the
        addresses stay put from then on. Whether the block can use the kernel."""
        gate_up = _expert_table([expert.gate_up_proj for expert in self.experts])
        down = _expert_table([expert.down_proj for expert in self.experts])
        self.kernel_tables = None if gate_up is None or down is None else (gate_up, down)
        return self.kernel_tables is not None

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
        if self.kernel_tables is not None and tokens <= KERNEL_MAX_TOKENS:
            return self._kernel_forward(x)
        weights, experts = self.route(x)
        if tokens == 1:
            out = self._one_token(x, weights[0].tolist(), experts[0].tolist())
        else:
            out = self._grouped(x, weights, experts)
        if self.shared_expert is not None and self.shared_expert_gate is not None:
            out += torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return parallel_state.all_reduce(out) if self.reduce else out

    def _kernel_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Routing, experts and their weighted sum in one C call (csrc/gguf_moe.c). A float32 router (and shared
        expert gate) is multiplied in the kernel, at any batch size (the float GEMV takes <= 4 rows, past which
        PyTorch's product would keep a step off the decode graphs); a bfloat16 one (an AVX-512 BF16 host) by its own
        layer first. The shared expert is its own layer's C calls."""
        assert self.kernel_tables is not None
        gate_up, down = self.kernel_tables
        x32 = x.float().contiguous()
        shared = None
        if self.shared_expert is not None and self.shared_expert_gate is not None:
            gate = self.shared_expert_gate.weight  # [1, hidden]
            gate = gate if gate.dtype == torch.float32 else self.shared_expert_gate(x).float()
            shared = (self.shared_expert(x).float(), gate.contiguous())
        router = self.gate.weight
        in_kernel = router.dtype == torch.float32 and router.is_contiguous()
        weight, logits = (router, None) if in_kernel else (None, self.gate(x).float().contiguous())
        inter = self.experts[0].down_proj.input_size
        out = cpu_gguf.gguf_moe(
            x32, weight, logits, gate_up, down, inter, self.top_k, self.renormalize, shared
        )
        out = out if x.dtype == torch.float32 else out.to(x.dtype)
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


def prepare_moe_kernels(model: nn.Module) -> tuple[int, int]:
    """SparseMoeBlock.prepare_kernel on every block of `model`, after loading: (blocks, blocks that use the C
    kernel)."""
    blocks = [module for module in model.modules() if isinstance(module, SparseMoeBlock)]
    return len(blocks), sum(block.prepare_kernel() for block in blocks)


def moe_kernels_ready(model: nn.Module) -> bool:
    """Every mixture-of-experts block of `model` decodes through the C kernel (`prepare_moe_kernels` found its
    experts in GGUF blocks): then its decode steps are kernel calls only."""
    blocks = [module for module in model.modules() if isinstance(module, SparseMoeBlock)]
    return bool(blocks) and all(block.kernel_tables is not None for block in blocks)
