"""Token embedding and the LM head (tied to the embedding or not), vocabulary-parallel under tensor parallelism.

Rank r keeps the vocabulary rows `even_range(vocab, r, size)`: the embedding looks up the ids it holds (zeros for
the others) and an all-reduce sums the ranks' rows; the LM head computes its slice of the logits and an all-gather
joins them, so every rank ends with the whole row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pagedserve.distributed import parallel_state
from pagedserve.distributed.partition import even_range
from pagedserve.layers.ct_quant import ScaledTensor
from pagedserve.layers.gguf_quant import (
    INTERLEAVE,
    QuantizedTensor,
    dequantize,
    gather_rows,
    gguf_linear,
    interleavable,
    interleave_rows,
)
from pagedserve.layers.linear import LinearBase, linear
from pagedserve.layers.shard import slice_rows


class VocabParallel(nn.Module):
    """The vocabulary rows this rank keeps: `vocab_slice` = (first row, rows) of the `vocab_size` rows."""

    def __init__(self, vocab_size: int, hidden_size: int) -> None:
        super().__init__()
        tp = parallel_state.get_tp()
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.vocab_slice = even_range(vocab_size, tp.rank, tp.size)
        self.vocab_sizes = [even_range(vocab_size, r, tp.size)[1] for r in range(tp.size)]
        self.weight = nn.Parameter(torch.empty(self.vocab_slice[1], hidden_size), requires_grad=False)
        self.weight.weight_loader = self.weight_loader  # type: ignore[attr-defined]

    def weight_loader(
        self, param: nn.Parameter, loaded: torch.Tensor | QuantizedTensor, shard_id: str | None = None
    ) -> None:
        load_table(self, loaded)


def load_table(
    module: VocabEmbedding | LMHead, loaded: torch.Tensor | QuantizedTensor | ScaledTensor
) -> None:
    """A [vocab, hidden] table (this rank's rows of it): GGUF blocks are kept as they are (a quantized
    compressed-tensors LM head is repacked into them), int8 / float8 tables and float tensors copied in the
    module's dtype."""
    if module.vocab_slice != (0, module.vocab_size) and loaded.shape[0] == module.vocab_size:
        loaded = slice_rows(loaded, *module.vocab_slice)
        loaded = (
            loaded.clone() if isinstance(loaded, torch.Tensor) else loaded
        )  # not the whole table's storage
    if isinstance(loaded, QuantizedTensor) and loaded.shape == tuple(module.weight.shape):
        module.weight = nn.Parameter(loaded.data, requires_grad=False)
        module.weight_type = loaded.qtype
        return
    if isinstance(loaded, QuantizedTensor | ScaledTensor):
        loaded = loaded.dequantize()
    if tuple(loaded.shape) != tuple(module.weight.shape):
        raise ValueError(f"weight shape {tuple(loaded.shape)} does not match {tuple(module.weight.shape)}")
    module.weight.data.copy_(loaded.to(module.weight.dtype))


class VocabEmbedding(VocabParallel):
    weight_type: int | None = None
    """GGML type of a table kept in GGUF blocks (gguf_quant.py): rows are dequantized as they are looked up."""
    weight_interleave: int = 1
    """Rows of GGUF blocks as in the file (1), or regrouped for the GEMV of the LM head tied to this table."""

    def __init__(self, vocab_size: int, hidden_size: int) -> None:
        super().__init__(vocab_size, hidden_size)
        # The activations' dtype (the default at construction): the weight may be stored narrower.
        self.output_dtype = torch.get_default_dtype()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        first, count = self.vocab_slice
        sharded = count != self.vocab_size
        if sharded:
            held = (input_ids >= first) & (input_ids < first + count)
            input_ids = torch.where(held, input_ids - first, 0)
        if self.weight_type is not None:
            looked_up = gather_rows(self.weight, input_ids, self.weight_type, self.weight_interleave)
            rows = dequantize(looked_up, self.weight_type, self.hidden_size).to(self.output_dtype)
        else:
            rows = F.embedding(input_ids, self.weight).to(self.output_dtype)
        if sharded:
            rows = parallel_state.all_reduce(rows * held.unsqueeze(-1).to(rows.dtype))
        return rows


class LMHead(VocabParallel):
    weight_type: int | None = None
    """GGML type of a weight kept in GGUF blocks; None for a float weight."""
    weight_interleave: int = 1
    """Rows of GGUF blocks as in the file (1), or regrouped for the GEMV (`interleave_gguf_rows`)."""
    gguf_bf16: bool = False
    """For GGUF blocks: products past the GEMVs' rows take bfloat16 panels (as LinearBase's)."""

    def tie_to(self, embedding: VocabEmbedding) -> None:
        """Share the embedding's table (after loading, which may have replaced it with GGUF blocks)."""
        self.weight = embedding.weight
        self.weight_type = embedding.weight_type

    def interleave_gguf_rows(self, tied: list[VocabEmbedding]) -> bool:
        """Rows of GGUF blocks regrouped for the CPU GEMV (gguf_quant.interleave_rows), once loading is done; the
        embeddings sharing the table (`tied`) share the regrouped one and gather their rows from it. In the file's
        order a Q6_K head (a tied Q4_K_M embedding) streamed at 24-25 G weights/s against 32 regrouped (Zen 4,
        2 threads, k 2048: BENCHMARKS.md); a lookup copies a row's blocks from four-row groups instead of one run.
        Whether it did."""
        if self.weight_interleave != 1 or not interleavable(self.weight, self.weight_type):
            return False
        self.weight = nn.Parameter(interleave_rows(self.weight.data, self.weight_type), requires_grad=False)
        self.weight_interleave = INTERLEAVE
        for embedding in tied:
            embedding.weight = self.weight
            embedding.weight_interleave = INTERLEAVE
        return True

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.gather(self.local_logits(hidden))

    def local_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """This rank's slice of the logits (all of them at tensor_parallel_size 1)."""
        if self.weight_type is not None:
            return gguf_linear(
                hidden,
                self.weight,
                self.weight_type,
                self.hidden_size,
                None,
                self.weight_interleave,
                self.gguf_bf16,
            )
        return linear(hidden, self.weight)

    def gather(self, logits: torch.Tensor) -> torch.Tensor:
        """Every rank's slice joined: the whole row on every rank."""
        if len(self.vocab_sizes) > 1:
            logits = parallel_state.all_gather_last_dim(logits, self.vocab_sizes)
        return logits


def interleave_gguf_weights(model: nn.Module) -> int:
    """Every GGUF matrix of `model` a GEMV multiplies, rows regrouped for the CPU kernels (linear layers and the LM
    head, with the embedding tied to it; gguf_quant.interleave_rows), after loading; how many changed."""
    tables: dict[int, list[VocabEmbedding]] = {}
    for module in model.modules():
        if isinstance(module, VocabEmbedding):
            tables.setdefault(module.weight.data_ptr(), []).append(module)
    changed = 0
    for module in model.modules():
        if isinstance(module, LinearBase):
            changed += module.interleave_gguf_rows()
        elif isinstance(module, LMHead):
            changed += module.interleave_gguf_rows(tables.get(module.weight.data_ptr(), []))
    return changed
