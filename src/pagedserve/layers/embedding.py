"""Token embedding and the LM head (tied to the embedding or not)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pagedserve.layers.ct_quant import ScaledTensor
from pagedserve.layers.gguf_quant import QuantizedTensor, dequantize, gguf_linear
from pagedserve.layers.linear import linear


def load_table(
    module: VocabEmbedding | LMHead, loaded: torch.Tensor | QuantizedTensor | ScaledTensor
) -> None:
    """A [vocab, hidden] table: GGUF blocks are kept as they are (a quantized compressed-tensors LM head is
    repacked into them), int8 / float8 tables and float tensors copied in the module's dtype."""
    if isinstance(loaded, QuantizedTensor) and loaded.shape == tuple(module.weight.shape):
        module.weight = nn.Parameter(loaded.data, requires_grad=False)
        module.weight_type = loaded.qtype
        return
    if isinstance(loaded, QuantizedTensor | ScaledTensor):
        loaded = loaded.dequantize()
    if tuple(loaded.shape) != tuple(module.weight.shape):
        raise ValueError(f"weight shape {tuple(loaded.shape)} does not match {tuple(module.weight.shape)}")
    module.weight.data.copy_(loaded.to(module.weight.dtype))


class VocabEmbedding(nn.Module):
    weight_type: int | None = None
    """GGML type of a table kept in GGUF blocks (gguf_quant.py): rows are dequantized as they are looked up."""

    def __init__(self, vocab_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.weight = nn.Parameter(torch.empty(vocab_size, hidden_size), requires_grad=False)
        self.weight.weight_loader = self.weight_loader  # type: ignore[attr-defined]
        # The activations' dtype (the default at construction): the weight may be stored narrower.
        self.output_dtype = torch.get_default_dtype()

    def weight_loader(
        self, param: nn.Parameter, loaded: torch.Tensor | QuantizedTensor, shard_id: str | None = None
    ) -> None:
        load_table(self, loaded)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.weight_type is not None:
            return dequantize(self.weight[input_ids], self.weight_type, self.hidden_size).to(
                self.output_dtype
            )
        return F.embedding(input_ids, self.weight).to(self.output_dtype)


class LMHead(nn.Module):
    weight_type: int | None = None
    """GGML type of a weight kept in GGUF blocks; None for a float weight."""

    def __init__(self, vocab_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.weight = nn.Parameter(torch.empty(vocab_size, hidden_size), requires_grad=False)
        self.weight.weight_loader = self.weight_loader  # type: ignore[attr-defined]

    def weight_loader(
        self, param: nn.Parameter, loaded: torch.Tensor | QuantizedTensor, shard_id: str | None = None
    ) -> None:
        load_table(self, loaded)

    def tie_to(self, embedding: VocabEmbedding) -> None:
        """Share the embedding's table (after loading, which may have replaced it with GGUF blocks)."""
        self.weight = embedding.weight
        self.weight_type = embedding.weight_type

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.weight_type is not None:
            return gguf_linear(hidden, self.weight, self.weight_type, self.hidden_size, None)
        return linear(hidden, self.weight)
