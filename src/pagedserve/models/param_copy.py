"""One checkpoint tensor into one parameter, as every model's `load_weights` ends."""

from __future__ import annotations

from typing import Any

from torch import nn

from pagedserve.layers.gguf_quant import TYPE_NAMES, QuantizedTensor


def copy_checkpoint_tensor(param: nn.Parameter, name: str, tensor: Any, shard_id: str | None) -> None:
    """Through the parameter's `weight_loader` when it has one (it converts to the parameter's dtype itself, or keeps
    GGUF blocks, and places a merged layer's part); else a float copy of the same shape."""
    loader = getattr(param, "weight_loader", None)
    if loader is not None:
        loader(param, tensor, shard_id)
    elif isinstance(tensor, QuantizedTensor):
        raise ValueError(f"{name}: a {TYPE_NAMES[tensor.qtype]} tensor where a float one is needed")
    elif param.shape != tensor.shape:
        raise ValueError(f"{name}: shape {tuple(tensor.shape)} does not match {tuple(param.shape)}")
    else:
        param.data.copy_(tensor)
