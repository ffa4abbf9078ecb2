"""Embeddings from the final hidden states (vLLM's LAST pooling, the rule of causal models served as embedders)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pool_last_rows(hidden: torch.Tensor, rows: list[int], normalize: list[bool]) -> torch.Tensor:
    """float32 [len(rows), hidden]: each prompt's last position after the final norm, scaled to unit L2 norm where
    `normalize` says (vLLM's default for embeddings)."""
    vectors = hidden[rows].float()
    scale = torch.tensor(normalize, device=vectors.device).unsqueeze(1)
    return torch.where(scale, F.normalize(vectors, dim=-1), vectors)
