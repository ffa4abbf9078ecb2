"""RMSNorm (float32 accumulation), optionally fused with the residual add.

On the CPU with the C kernels built, one call does the add and the norm (ops/csrc/layer_ops.c); elsewhere torch's
fused `rms_norm` does the norm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pagedserve.ops import cpu as cpu_ops


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        """The norm alone, with PyTorch operations (any shape)."""
        # One fused op instead of six small ones: per-op overhead dominates a batch-1 decode step.
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)

    def _use_kernel(self, x: torch.Tensor, residual: torch.Tensor | None) -> bool:
        return (
            x.dim() == 2
            and x.is_contiguous()
            and cpu_ops.norm_code(x, self.weight) is not None
            and (residual is None or (residual.is_contiguous() and residual.dtype == x.dtype))
            and cpu_ops.available(x, self.weight)
        )

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Without `residual`: norm(x). With it: (norm(x + residual), x + residual); the sum may be written into
        `residual`'s storage, so callers must not reuse the tensor they passed."""
        if self._use_kernel(x, residual):
            out = cpu_ops.rms_norm(x, self.weight, self.eps, residual)
            return out if residual is None else (out, residual)
        if residual is None:
            return self.norm(x)
        residual = x + residual
        return self.norm(residual), residual


def norm_q_k_heads(qk: torch.Tensor, q_norm: RMSNorm, k_norm: RMSNorm, num_q_heads: int) -> torch.Tensor:
    """qk: [T, Hq + Hkv, D] (q heads then k heads; rows may be strided) -> each q head through q_norm and each k
    head through k_norm (Qwen3). With the C kernels: in place, one call; elsewhere a new tensor."""
    weights = (q_norm.weight, k_norm.weight)
    if (
        cpu_ops.usable_rows(qk)
        and cpu_ops.norm_code(qk, weights[0]) is not None
        and cpu_ops.available(qk, *weights)
    ):
        return cpu_ops.rms_norm_heads_(qk, *weights, num_q_heads, q_norm.eps)
    return torch.cat((q_norm.norm(qk[:, :num_q_heads]), k_norm.norm(qk[:, num_q_heads:])), dim=1)


class GemmaRMSNorm(RMSNorm):
    """Gemma's RMSNorm: the normalized row times (1 + weight), all in float32, then cast to the input's dtype.
    The parameter holds 1 + weight in float32 (added at load): `1 + w` rounded to bfloat16 would move every output
    by up to 2^-9 relative, on top of the output's own rounding. The C kernels take that float32 weight under float32
    and bfloat16 activations alike (rounding once, as transformers)."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__(hidden_size, eps)
        self.weight.data = self.weight.data.float()
        self.weight.weight_loader = self.weight_loader  # type: ignore[attr-defined]

    @staticmethod
    def weight_loader(param: nn.Parameter, stored: torch.Tensor, shard_id: str | None = None) -> None:
        if param.shape != stored.shape:
            raise ValueError(
                f"norm weight of shape {tuple(stored.shape)} where {tuple(param.shape)} is needed"
            )
        param.data.copy_(stored.float() + 1.0)

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), self.weight.shape, self.weight.float(), self.eps).to(x.dtype)
