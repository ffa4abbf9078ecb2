"""Batched sampling: metadata built per step from each row's SamplingParams, the Sampler, prompt logprobs."""

from pagedserve.sample.logprobs import compute_prompt_logprobs
from pagedserve.sample.metadata import SamplingMetadata, SamplingRow, make_generator
from pagedserve.sample.sampler import Sampler, SamplerOutput

__all__ = [
    "Sampler",
    "SamplerOutput",
    "SamplingMetadata",
    "SamplingRow",
    "compute_prompt_logprobs",
    "make_generator",
]
