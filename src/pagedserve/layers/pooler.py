"""Embeddings from the final hidden states: vLLM's LAST pooling (causal models served as embedders), and the CLS and
MEAN pooling of encoder models (sentence-transformers' `pooling_mode_cls_token` / `pooling_mode_mean_tokens`)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

PoolingType = Literal["LAST", "CLS", "MEAN"]
POOLING_TYPES: tuple[PoolingType, ...] = ("LAST", "CLS", "MEAN")


def pool_rows(
    hidden: torch.Tensor, spans: list[tuple[int, int]], pooling_type: PoolingType, normalize: list[bool]
) -> torch.Tensor:
    """float32 [len(spans), hidden]: one vector per prompt from its rows `(first, last)` (inclusive) of the step,
    scaled to unit L2 norm where `normalize` says (vLLM's default for embeddings). LAST and CLS take one row; MEAN
    averages every row of the prompt (special tokens included, as sentence-transformers does), so the prompt must
    run whole in the step."""
    if pooling_type == "MEAN":
        vectors = torch.stack([hidden[first : last + 1].float().mean(0) for first, last in spans])
    else:
        rows = [last if pooling_type == "LAST" else first for first, last in spans]
        vectors = hidden[rows].float()
    scale = torch.tensor(normalize, device=vectors.device).unsqueeze(1)
    return torch.where(scale, F.normalize(vectors, dim=-1), vectors)
