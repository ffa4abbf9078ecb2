"""The pooling side of a step (--runner pooling): embedding requests' vectors and cross-encoders' scores from the
step's hidden states, and the token types a cross-encoder's pairs need."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagedserve.layers.pooler import PoolingType, pool_rows
from pagedserve.pooling_params import PoolingParams
from pagedserve.worker.inputs import StepInputs


def prompt_spans(step: StepInputs, indices: list[int]) -> list[tuple[int, int]]:
    """(first, last) rows of each sequence's tokens in the step (a whole prompt for CLS / MEAN pooling)."""
    return [
        (step.last_token_rows[i] - step.sequences[i].num_new_tokens + 1, step.last_token_rows[i])
        for i in indices
    ]


def pooled_vectors(
    model: nn.Module,
    hidden: torch.Tensor,
    spans: list[tuple[int, int]],
    params: list[PoolingParams],
    pooling_type: PoolingType,
) -> list[list[float]]:
    """One vector a sequence: its pooled hidden states, or on a sequence classifier the head on the first (CLS) row
    of an encoder or the last row of a decoder (`pooling_type`), one value a label: probabilities (softmax; a
    sigmoid for one label, a cross-encoder's score, vLLM's rule), or the logits where use_activation is off."""
    if getattr(model, "is_classifier", False):
        rows = [last if pooling_type == "LAST" else first for first, last in spans]
        logits = model.classify(hidden[rows]).float()  # type: ignore[operator]
        probs = logits.sigmoid() if logits.shape[1] == 1 else logits.softmax(-1)
        activate = torch.tensor([p.use_activation for p in params], device=logits.device).unsqueeze(1)
        return torch.where(activate, probs, logits).tolist()
    return pool_rows(hidden, spans, pooling_type, [p.normalize for p in params]).tolist()


def token_types(step: StepInputs, pooling: list[Any], device: torch.device) -> torch.Tensor:
    """[T] token types of a cross-encoder's step: 1 from each pair's second text on (`pooling[i]`, the i-th
    sequence's PoolingParams or None), else 0."""
    types = torch.zeros(len(step.input_ids), dtype=torch.long)
    for (first, last), params in zip(prompt_spans(step, list(range(len(step.sequences)))), pooling):
        if params is not None and params.token_type_start is not None:
            types[first + params.token_type_start : last + 1] = 1
    return types.to(device)
