"""The dtypes a model runs in: `--dtype` (auto chooses by checkpoint and hardware) and the storage of its matrices."""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import torch

from pagedserve.cpu_info import cpu_info
from pagedserve.layers.embedding import LMHead, VocabEmbedding
from pagedserve.layers.linear import LinearBase
from pagedserve.ops import build as cpu_kernels
from pagedserve.ops import cpu_gguf

logger = logging.getLogger("pagedserve")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelDtypes(NamedTuple):
    compute: torch.dtype
    """Activations, norms and biases; the KV cache too, except bfloat16 matrices under float32 compute keep a
    bfloat16 cache (worker/kv_cache.py)."""

    weights: torch.dtype
    """The matrices (projections, embedding, LM head); bfloat16 under float32 compute where that is faster."""


# Quantization methods whose matrices the CPU keeps in GGUF blocks and multiplies with float32 activations.
GGUF_BLOCK_METHODS = frozenset({"gguf", "awq", "gptq"})


def resolve_dtype(
    name: str, hf_config: Any, quantized_source: bool, device: torch.device, quantization: str | None = None
) -> ModelDtypes:
    """An explicit name is obeyed for everything; `auto` chooses by checkpoint and hardware, and logs why."""
    if name != "auto":
        if name not in _DTYPES:
            raise ValueError(f"dtype must be one of auto, {', '.join(_DTYPES)}; got {name!r}")
        return ModelDtypes(_DTYPES[name], _DTYPES[name])
    if device.type == "cpu" and quantization in GGUF_BLOCK_METHODS and cpu_kernels.load() is not None:
        # The GGUF kernels take and return float32: bfloat16 activations only add two conversions a product, and
        # those PyTorch casts keep decode graphs from capturing the step (worker/cpu_graph.py). Measured on the
        # bundled Q4_1 file, one stream, AVX-512 BF16: see docs/architecture.md ("CPU decode graphs").
        logger.info("dtype auto: float32 compute (%s blocks are multiplied in float32)", quantization)
        return ModelDtypes(torch.float32, torch.bfloat16)
    stored = str(getattr(hf_config, "torch_dtype", "") or "").replace("torch.", "")
    if stored == "float32" and not quantized_source:
        logger.info("dtype auto: float32 (the checkpoint is float32)")
        return ModelDtypes(torch.float32, torch.float32)
    if device.type == "cpu" and not cpu_info().fast_bf16:
        # Without AVX512_BF16 or AMX, PyTorch's bf16 matmul is emulated: ~15 GFLOP/s against ~106 for float32 on
        # a Zen 3 (issue 10). The C kernels multiply float32 activations by bfloat16 weights widened in
        # registers, as fast as oneDNN's float32 GEMM at decode batch sizes and twice as fast at one row (half the
        # bytes): see docs/architecture.md. Without them, plain float32.
        mixed = cpu_kernels.load() is not None
        logger.info(
            "dtype auto: float32 compute with %s weights, since this CPU has no bfloat16 instructions (%s)",
            "bfloat16" if mixed else "float32", cpu_info().describe(),
        )  # fmt: skip
        return ModelDtypes(torch.float32, torch.bfloat16 if mixed else torch.float32)
    # 16-bit and quantized checkpoints; float16 is slow on CPUs, bfloat16 uses AVX512_BF16 / AMX / tensor cores.
    logger.info("dtype auto: bfloat16 (%s checkpoint, bfloat16 in hardware)", stored or "16-bit or quantized")
    return ModelDtypes(torch.bfloat16, torch.bfloat16)


def has_gguf_panel_kernels(device: torch.device) -> bool:
    """True where the C kernels multiply GGUF blocks at every batch size (ops/csrc/gguf.c, every x86 level with
    AVX2): elsewhere past 8 rows each matrix is dequantized per call."""
    library = cpu_kernels.load() if device.type == "cpu" else None
    return library is not None and bool(library.gguf_has_panels())


def gguf_blocks_by_default(device: torch.device) -> bool:
    """Whether a .gguf file keeps its blocks when --quantization is unset: where the kernels take every batch size,
    except on CPUs with AMX, whose bfloat16 tiles make a GEMM on weights dequantized at load the likelier winner
    past a few rows (not measured against the blocks there). With AVX512_BF16 alone (a Zen 4, 2026-12-07, bundled
    Q4_1, alternating processes) the blocks gave 227 against 68 tok/s for one stream, 341 against 244 at 4, 0.94x
    at 16 and 256, 1.01-1.16x at 32, in a third of the memory (docs/architecture.md)."""
    return has_gguf_panel_kernels(device) and not cpu_info().has_amx


def use_bf16_gguf_panels(model: torch.nn.Module) -> int:
    """Marks the model's GGUF matrices (`gguf_bf16`) to multiply more rows than a GEMV's (prefills, big decode
    batches) in bfloat16 panels: where its matrices are bfloat16 (`ModelDtypes.weights`) and the kernels have the
    panels (avx512_bf16). How many; 0 where the kernels lack them."""
    if not cpu_gguf.has_bf16_panels():
        return 0
    marked = 0
    for module in model.modules():
        if isinstance(module, (LinearBase, LMHead)) and module.weight_type is not None:
            module.gguf_bf16 = True
            marked += 1
    return marked


_FLOAT_MATRIX_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def cast_matrix_weights(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Stores the model's float matrices (not norms or biases, nor quantized ones) in `dtype`; tied matrices are
    one parameter."""
    for module in model.modules():
        if (
            isinstance(module, (LinearBase, VocabEmbedding, LMHead))
            and module.weight.dtype in _FLOAT_MATRIX_DTYPES
            and module.weight.dtype != dtype
        ):
            module.weight.data = module.weight.data.to(dtype)
