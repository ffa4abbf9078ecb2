"""Load a checkpoint into the model as the engine does, and run prefill chunks and decode steps on it: the
logits, for tests that compare one way of loading with another."""

from __future__ import annotations

import pathlib

import torch

from pagedserve.attention.backend import get_attention_backend
from pagedserve.core.scheduler_output import ScheduledSequence
from pagedserve.models.loader import resolve_model_source
from pagedserve.models.registry import resolve_model_class
from pagedserve.worker.inputs import prepare_inputs
from pagedserve.worker.kv_cache import allocate_kv_caches

BLOCK = 4


def load_model(path: pathlib.Path, keep_quantized: bool):
    source = resolve_model_source(str(path))
    model = (
        resolve_model_class(source.hf_config)(source.hf_config, get_attention_backend("cpu")).float().eval()
    )
    model.load_weights(source.iter_weights(keep_quantized))
    return source.hf_config, model


def logits_of(model, config, tokens: list[int], chunks: list[int]) -> torch.Tensor:
    blocks = list(range(-(-len(tokens) // BLOCK)))
    caches = allocate_kv_caches(config, max(8, len(blocks)), BLOCK, torch.float32, torch.device("cpu"))
    outputs = []
    start = 0
    for size in chunks:
        seq = ScheduledSequence("r", start, tokens[start : start + size], blocks, samples=False)
        step = prepare_inputs([seq], BLOCK, torch.device("cpu"))
        with torch.no_grad():
            outputs.append(model.compute_logits(model(step.input_ids, step.positions, caches, step.metadata)))
        start += size
    return torch.cat(outputs)
