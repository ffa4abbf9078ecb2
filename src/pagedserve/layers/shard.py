"""Cutting one tensor-parallel rank's slice out of a checkpoint tensor, in whatever form the loader gives it.

Rows (a column-parallel layer's output channels) slice every form directly. Columns (a row-parallel layer's input
channels) must fall on whole GGUF blocks: 32 weights, or 256 for the K-quants; an int8 / float8 weight keeps its
per-row scale, and a block-scaled float8 weight is cut on its scale blocks. A GPTQ act-order weight
(PermutedWeight) mixes its input channels, so it cannot be split by columns.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from pagedserve.layers.ct_quant import ScaledTensor
from pagedserve.layers.gguf_quant import KEPT_BLOCKS, TYPE_NAMES, QuantizedTensor
from pagedserve.layers.input_perm import PermutedWeight


def slice_rows(loaded: Any, first: int, count: int) -> Any:
    if isinstance(loaded, QuantizedTensor):
        return QuantizedTensor(loaded.data.narrow(0, first, count), loaded.qtype, (count, loaded.shape[1]))
    if isinstance(loaded, ScaledTensor):
        data = loaded.data.narrow(0, first, count)
        if loaded.block is None:
            return replace(loaded, data=data, scale=loaded.scale.narrow(0, first, count))
        start, stop = _scale_blocks(first, count, loaded.block[0], loaded.shape[0], "rows")
        return replace(loaded, data=data, scale=loaded.scale[start:stop])
    if isinstance(loaded, PermutedWeight):
        return PermutedWeight(slice_rows(loaded.weight, first, count), loaded.perm)
    return loaded.narrow(0, first, count)


def slice_columns(loaded: Any, first: int, count: int, what: str) -> Any:
    if isinstance(loaded, PermutedWeight):
        raise ValueError(
            f"{what}: a GPTQ act-order weight (desc_act) cannot be split by input channels for tensor parallelism"
        )
    if isinstance(loaded, QuantizedTensor):
        weights, size = KEPT_BLOCKS[loaded.qtype]
        if first % weights or count % weights:
            raise ValueError(
                f"{what}: a {TYPE_NAMES[loaded.qtype]} weight splits only on {weights}-column blocks; this rank's "
                f"columns [{first}, {first + count}) do not (try another tensor_parallel_size)"
            )
        data = loaded.data[:, first // weights * size : (first + count) // weights * size]
        return QuantizedTensor(data, loaded.qtype, (loaded.shape[0], count))
    if isinstance(loaded, ScaledTensor):
        data = loaded.data[:, first : first + count]
        if loaded.block is None:
            return replace(loaded, data=data)
        start, stop = _scale_blocks(first, count, loaded.block[1], loaded.shape[1], f"{what} columns")
        return replace(loaded, data=data, scale=loaded.scale[:, start:stop])
    return loaded[:, first : first + count] if isinstance(loaded, torch.Tensor) else loaded


def _scale_blocks(first: int, count: int, block: int, total: int, what: str) -> tuple[int, int]:
    """The block scales of weights [first, first + count): they must start a block and end on one (or at the end)."""
    if first % block or ((first + count) % block and first + count != total):
        raise ValueError(
            f"block-scaled float8 weight: this rank's {what} [{first}, {first + count}) do not fall on whole "
            f"{block}-wide scale blocks (try another tensor_parallel_size)"
        )
    return first // block, -(-(first + count) // block)
