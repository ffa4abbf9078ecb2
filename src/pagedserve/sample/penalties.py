"""Repetition, frequency and presence penalties, and the min_tokens stop-token mask.

Repetition follows HF/vLLM (over prompt + output tokens: positive logits divided, negative multiplied);
frequency and presence follow OpenAI (over output tokens only: subtract penalty * count, penalty * seen).

Only (row, token) pairs that occur in some sequence are touched: a few hundred per row against a vocabulary of
tens of thousands, so the state is a list of flat indices, never a [B, V] mask.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from pagedserve.sample.metadata import SamplingRow


@dataclass
class PenaltyTensors:
    """Penalties of a batch as flat indices into logits.view(-1); a part is None when no row uses it."""

    repetition_index: torch.Tensor | None  # [N] int64, unique: tokens of prompt + output of rows with rp != 1
    repetition_penalty: torch.Tensor | None  # [N] float32, that row's repetition penalty
    additive_index: torch.Tensor | None  # [M] int64, unique: output tokens of rows with frequency/presence
    additive_penalty: torch.Tensor | None  # [M] float32: frequency * count + presence, to subtract

    @classmethod
    def build(
        cls, rows: Sequence[SamplingRow], vocab_size: int, device: torch.device | str
    ) -> PenaltyTensors | None:
        repetition_rows = [i for i, row in enumerate(rows) if row.params.repetition_penalty != 1.0]
        additive_rows = [
            i
            for i, row in enumerate(rows)
            if row.params.frequency_penalty != 0.0 or row.params.presence_penalty != 0.0
        ]
        if not repetition_rows and not additive_rows:
            return None

        repetition_index = repetition_penalty = None
        if repetition_rows:
            index, _ = _unique_flat_tokens(
                [rows[i].prompt_token_ids + rows[i].output_token_ids for i in repetition_rows],
                repetition_rows,
                vocab_size,
            )
            per_row = torch.tensor(
                [float(row.params.repetition_penalty) for row in rows], dtype=torch.float32
            )
            repetition_index = index.to(device)
            repetition_penalty = per_row[index // vocab_size].to(device)

        additive_index = additive_penalty = None
        if additive_rows:
            index, counts = _unique_flat_tokens(
                [rows[i].output_token_ids for i in additive_rows], additive_rows, vocab_size
            )
            frequency = torch.tensor(
                [float(row.params.frequency_penalty) for row in rows], dtype=torch.float32
            )
            presence = torch.tensor([float(row.params.presence_penalty) for row in rows], dtype=torch.float32)
            row_of = index // vocab_size
            additive_index = index.to(device)
            # Every listed token occurs at least once, so presence applies to all of them.
            additive_penalty = (frequency[row_of] * counts + presence[row_of]).to(device)

        return cls(repetition_index, repetition_penalty, additive_index, additive_penalty)


def _unique_flat_tokens(
    token_lists: list[list[int]], row_indices: list[int], vocab_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique flat indices row * V + token of token_lists[i] placed in row row_indices[i], with counts.

    Built on the CPU (it starts from Python lists); the caller moves the result to the device.
    """
    lengths = [len(tokens) for tokens in token_lists]
    # numpy flattens Python int lists ~10x faster than torch.tensor on a list comprehension.
    flat_tokens = torch.from_numpy(
        np.fromiter(itertools.chain.from_iterable(token_lists), dtype=np.int64, count=sum(lengths))
    )
    flat_rows = torch.repeat_interleave(
        torch.tensor(row_indices, dtype=torch.int64), torch.tensor(lengths, dtype=torch.int64)
    )
    # Ids past the model's vocabulary (a tokenizer larger than the embedding) cannot be penalised.
    valid = (flat_tokens >= 0) & (flat_tokens < vocab_size)
    flat_index = (flat_rows * vocab_size + flat_tokens)[valid]
    index, counts = torch.unique(flat_index, return_counts=True)
    return index, counts.to(torch.float32)


def apply_penalties(logits: torch.Tensor, penalties: PenaltyTensors) -> torch.Tensor:
    """Penalise contiguous float32 logits [B, V] in place and return them."""
    flat = logits.view(-1)
    if penalties.repetition_index is not None:
        assert penalties.repetition_penalty is not None, "index and penalty are built together"
        index, penalty = penalties.repetition_index, penalties.repetition_penalty
        values = flat[index]
        flat[index] = torch.where(values > 0, values / penalty, values * penalty)
    if penalties.additive_index is not None:
        assert penalties.additive_penalty is not None, "index and penalty are built together"
        flat[penalties.additive_index] -= penalties.additive_penalty
    return logits


def apply_min_tokens(logits: torch.Tensor, mask: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Forbid the stop tokens of rows that have not yet produced min_tokens tokens (in place)."""
    row_indices, token_ids = mask
    logits[row_indices, token_ids] = float("-inf")
    return logits
