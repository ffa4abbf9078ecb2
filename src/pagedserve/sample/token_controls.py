"""A request's own say over which tokens come next: allowed_token_ids, bad_words and logit_bias (vLLM's order:
the allowed-token mask, then bad words, then the bias; the sampler applies min_tokens and penalties after them).

Like the penalties, only what some row uses is built, as (row, token) index lists: a [B, V] tensor only for the
rows that restrict themselves to a list of allowed tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from pagedserve.sample.metadata import SamplingRow


@dataclass
class TokenControls:
    """A batch's token controls; a part is None when no row uses it."""

    allowed_rows: torch.Tensor | None  # [A] int64 batch rows that name their allowed tokens
    disallowed: torch.Tensor | None  # [A, V] bool: True where that row's token is not allowed
    banned_rows: torch.Tensor | None  # [N] int64 (row, token) pairs a bad word forbids this step
    banned_tokens: torch.Tensor | None  # [N] int64
    bias_index: torch.Tensor | None  # [M] int64 flat indices row * V + token
    bias: torch.Tensor | None  # [M] float32 added to those logits

    @classmethod
    def build(
        cls, rows: Sequence[SamplingRow], vocab_size: int, device: torch.device | str
    ) -> TokenControls | None:
        params = [row.params for row in rows]
        if not any(p.allowed_token_ids or p.bad_words_token_ids or p.logit_bias for p in params):
            return None  # the usual batch: one pass over the rows instead of three
        allowed = [
            (i, row.params.allowed_token_ids) for i, row in enumerate(rows) if row.params.allowed_token_ids
        ]
        banned = [
            (i, token)
            for i, row in enumerate(rows)
            for token in _banned_by_bad_words(row.params.bad_words_token_ids, row.output_token_ids)
        ]
        bias = [
            (i * vocab_size + token, float(value))
            for i, row in enumerate(rows)
            for token, value in (row.params.logit_bias or {}).items()
            if token < vocab_size  # the input processor refuses larger ids; a direct caller's are ignored
        ]
        if not allowed and not banned and not bias:
            return None

        allowed_rows = disallowed = None
        if allowed:
            disallowed = torch.ones((len(allowed), vocab_size), dtype=torch.bool)
            for position, (_, tokens) in enumerate(allowed):
                disallowed[position, [t for t in tokens if t < vocab_size]] = False
            allowed_rows = torch.tensor([i for i, _ in allowed], dtype=torch.int64, device=device)
            disallowed = disallowed.to(device)

        def column(pairs: list, index: int, dtype: torch.dtype) -> torch.Tensor | None:
            return (
                torch.tensor([pair[index] for pair in pairs], dtype=dtype, device=device) if pairs else None
            )

        return cls(
            allowed_rows,
            disallowed,
            column(banned, 0, torch.int64),
            column(banned, 1, torch.int64),
            column(bias, 0, torch.int64),
            column(bias, 1, torch.float32),
        )

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Apply to contiguous float32 logits [B, V] in place and return them."""
        if self.allowed_rows is not None:
            assert self.disallowed is not None, "rows and mask are built together"
            logits[self.allowed_rows] = logits[self.allowed_rows].masked_fill_(self.disallowed, float("-inf"))
        if self.banned_rows is not None:
            logits[self.banned_rows, self.banned_tokens] = float("-inf")
        if self.bias_index is not None:
            assert self.bias is not None, "index and bias are built together"
            logits.view(-1).index_add_(0, self.bias_index, self.bias)
        return logits


def _banned_by_bad_words(bad_words: list[list[int]], output: list[int]) -> list[int]:
    """The last token of each bad word whose other tokens end the output so far (a one-token word: always)."""
    banned = []
    for word in bad_words:
        prefix = len(word) - 1
        if prefix > len(output):
            continue
        if prefix == 0 or output[-prefix:] == word[:-1]:
            banned.append(word[-1])
    return banned
