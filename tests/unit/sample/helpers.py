"""Shared builders for the sampler tests: rows, batches, and a plain reference of the filtered distribution."""

from __future__ import annotations

import torch

from pagedserve.sample import Sampler, SamplerOutput, SamplingMetadata, SamplingRow, make_generator
from pagedserve.sampling_params import SamplingParams


def make_row(
    params: SamplingParams, prompt: list[int] | None = None, output: list[int] | None = None
) -> SamplingRow:
    generator = make_generator(params.seed, "cpu") if params.seed is not None else None
    return SamplingRow(params, list(prompt or [0]), list(output or []), generator)


def sample(logits: torch.Tensor, rows: list[SamplingRow]) -> SamplerOutput:
    metadata = SamplingMetadata.build(rows, logits.shape[-1], "cpu")
    return Sampler()(logits, metadata)


def reference_distribution(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The distribution one random row should sample from, written plainly (float64, one row, full sort)."""
    x = logits.double() / params.temperature
    probs = torch.softmax(x, dim=-1)
    if params.min_p > 0:
        probs = torch.where(probs >= params.min_p * probs.max(), probs, torch.zeros_like(probs))
        probs = probs / probs.sum()
    order = torch.argsort(probs, descending=True)
    keep = torch.zeros_like(probs, dtype=torch.bool)
    if 0 < params.top_k < logits.shape[-1]:
        keep[order[: params.top_k]] = True
    else:
        keep[:] = True
    probs = torch.where(keep, probs, torch.zeros_like(probs))
    probs = probs / probs.sum()
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        mass_before = torch.cumsum(sorted_probs, dim=0) - sorted_probs
        in_nucleus = (mass_before < params.top_p) & (sorted_probs > 0)
        nucleus = torch.zeros_like(keep)
        nucleus[order[in_nucleus]] = True
        probs = torch.where(nucleus, probs, torch.zeros_like(probs))
        probs = probs / probs.sum()
    return probs
