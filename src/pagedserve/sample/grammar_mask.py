"""Structured outputs in the sampler: the grammar's allowed-token bitmask applied to the constrained rows only."""

from __future__ import annotations

import numpy as np
import torch

from pagedserve.core.scheduler_output import GrammarBitmask
from pagedserve.ops import cpu as cpu_ops


def allowed_tokens(bitmask: GrammarBitmask, vocab_size: int, device: torch.device | str) -> torch.Tensor:
    """[R, V] bool: True where row r's grammar allows token v (bit v of the row's little-endian int32 words)."""
    rows = np.frombuffer(bitmask.data, dtype=np.uint8).reshape(
        len(bitmask.seq_ids), bitmask.words_per_row * 4
    )
    bits = np.unpackbits(rows, axis=1, count=vocab_size, bitorder="little")
    return torch.from_numpy(bits.view(np.bool_)).to(device)


def apply_grammar_bitmask(
    logits: torch.Tensor, bitmask: GrammarBitmask, rows_of_mask: list[int]
) -> torch.Tensor:
    """float32 logits [B, V] with the tokens each constrained row's grammar forbids at -inf (as vLLM, before the
    sampler, so logprobs see the constraint too). `rows_of_mask`: the logits row of each bitmask row. Never writes
    the caller's tensor."""
    masked = (logits.float() if logits.dtype != torch.float32 else logits.clone()).contiguous()
    rows = torch.tensor(rows_of_mask, dtype=torch.int64)
    words = torch.frombuffer(bytearray(bitmask.data), dtype=torch.int32).view(len(bitmask.seq_ids), -1)
    if masked.device.type == "cpu" and cpu_ops.apply_token_bitmask(masked, rows, words):
        return masked
    rows = rows.to(logits.device)
    allowed = allowed_tokens(bitmask, logits.shape[1], logits.device)
    masked[rows] = masked[rows].masked_fill_(~allowed, float("-inf"))
    return masked
