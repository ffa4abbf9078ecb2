"""Checkpoints that rotate adjacent pairs of each head ((0, 1), (2, 3), ...: GLM, Cohere; llama.cpp's "normal"
rope) served by kernels that rotate split halves (j, j + r/2): each head's q and k rows are reordered at load, even
rotary dims first, then odd ones, then the unrotated dims. q and k share the order, so every q . k, and attention, is
unchanged (docs/architecture.md, "GLM-4")."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from pagedserve.layers.gguf_quant import QuantizedTensor


def half_split_order(head_dim: int, rotary_dim: int) -> torch.Tensor:
    """Row order within a head that turns interleaved rotary pairs into Llama's halves: (0, 2, ..., r - 2, 1, 3,
    ..., r - 1), then the unrotated dims as they are."""
    return torch.cat(
        (torch.arange(0, rotary_dim, 2), torch.arange(1, rotary_dim, 2), torch.arange(rotary_dim, head_dim))
    )


def reorder_rotary_rows(
    weights: Iterable[tuple[str, torch.Tensor]], head_dim: int, rotary_dim: int
) -> Iterator[tuple[str, torch.Tensor]]:
    order = half_split_order(head_dim, rotary_dim)
    for name, tensor in weights:
        if ".self_attn.q_proj." in name or ".self_attn.k_proj." in name:
            rows = (order + head_dim * torch.arange(tensor.shape[0] // head_dim)[:, None]).flatten()
            if isinstance(tensor, QuantizedTensor):  # GGUF blocks: each row quantized alone
                tensor = QuantizedTensor(tensor.data[rows], tensor.qtype, tensor.shape)
            elif (
                isinstance(tensor, torch.Tensor)
                and tensor.is_floating_point()
                and name.endswith((".weight", ".bias"))
            ):
                tensor = tensor[rows]
            else:
                raise ValueError(
                    f"{name}: quantized checkpoints with interleaved rotary pairs (GLM, Cohere) are not supported "
                    "(float, bfloat16 or GGUF files only)"
                )
        yield name, tensor
