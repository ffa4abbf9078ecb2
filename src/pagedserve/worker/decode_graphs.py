"""Which recorded decode steps a model runner replays: CUDA graphs, CPU decode graphs (recorded C calls) or none."""

from __future__ import annotations

import logging
from typing import Any

import torch

from pagedserve.distributed import parallel_state
from pagedserve.layers.moe import moe_kernels_ready
from pagedserve.worker.cpu_graph import DecodeGraphs
from pagedserve.worker.cuda_graph import CudaDecodeGraphs

logger = logging.getLogger("pagedserve")


def make_decode_graphs(
    model: Any,
    kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
    attention_backend: str,
    device: torch.device,
    dtype: torch.dtype,
    hidden_size: int,
    block_size: int,
    max_num_seqs: int,
    max_model_len: int,
    tp_size: int,
    layer_groups: list[int] | None = None,
) -> DecodeGraphs | CudaDecodeGraphs | None:
    """Recorded decode steps for this device and backend. Under tensor parallelism only on the CPU with the
    shared-memory collectives (C calls, replayed with the step); gloo's are not, and CUDA graphs of NCCL calls
    are untested."""
    if tp_size > 1 and (device.type != "cpu" or not parallel_state.collectives_replayable()):
        return None
    if getattr(model, "is_moe", False) and (device.type != "cpu" or not moe_kernels_ready(model)):
        # Routing groups tokens by expert, sizes known only at run time: nothing a graph can replay, unless every
        # block decodes through the C kernel (experts in GGUF blocks, layers/moe.py).
        logger.info(
            "decode graphs: off for a mixture-of-experts model whose experts are not all in GGUF blocks on the CPU "
            "(eager decode steps)"
        )
        return None
    if device.type == "cuda" and attention_backend == "triton":
        graphs = CudaDecodeGraphs(
            model, kv_caches, max_num_seqs, max_model_len, block_size, device, layer_groups
        )
        graphs.capture()
        return graphs
    if DecodeGraphs.usable(device, False) and attention_backend == "cpu":
        return DecodeGraphs(
            model, kv_caches, hidden_size, -(-max_model_len // block_size), dtype, layer_groups
        )
    return None
