"""Linear layers whose parameters know how to load (and later shard) themselves.

Each parameter carries a `weight_loader(param, loaded_weight, shard_id)` (nano-vllm's habit): tensor parallelism
only changes what a loader copies. A `MergedLinear` built with `part_slices` is column-parallel (each part keeps
some of the checkpoint's rows); one built with `input_slice` is row-parallel (it keeps some input columns, and the
ranks' partial outputs are summed by one all-reduce, the bias added once, by rank 0).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pagedserve.distributed import parallel_state
from pagedserve.layers.ct_quant import FP8_MAX, ScaledTensor, scaled_linear
from pagedserve.layers.gguf_quant import (
    INTERLEAVE,
    QuantizedTensor,
    dequantize,
    gguf_linear,
    gguf_linear_parts,
    interleavable,
    interleave_rows,
)
from pagedserve.layers.input_perm import permute_input, take_input_perm
from pagedserve.layers.lora import LayerLoRA
from pagedserve.layers.shard import slice_columns, slice_rows
from pagedserve.ops import cpu as cpu_ops


class LinearBase(nn.Module):
    def __init__(self, input_size: int, output_size: int, bias: bool) -> None:
        super().__init__()
        self.input_size = input_size
        self.output_size = output_size
        self.weight = nn.Parameter(torch.empty(output_size, input_size), requires_grad=False)
        self.weight.weight_loader = self.weight_loader  # type: ignore[attr-defined]
        if bias:
            self.bias = nn.Parameter(torch.empty(output_size), requires_grad=False)
            self.bias.weight_loader = self.weight_loader  # type: ignore[attr-defined]
        else:
            self.register_parameter("bias", None)
        # A GPTQ act-order weight's column order (input_perm.py); None: the input's own order.
        self.register_buffer("input_perm", None)

    weight_type: int | None = None
    """GGML type of a weight kept in GGUF blocks (gguf_quant.py); None for a float weight."""
    weight_interleave: int = 1
    """For GGUF blocks: 1 while rows are in the file's order, gguf_quant.INTERLEAVE once `interleave_gguf_rows`
    grouped them (after loading)."""
    gguf_bf16: bool = False
    """For GGUF blocks: products past the GEMVs' rows take bfloat16 panels (the model's matrices are bfloat16 and
    the CPU has bfloat16 instructions: worker/dtypes.py `use_bf16_gguf_panels`)."""
    activation_scheme: str | None = None
    """For an int8 / float8 weight (ScaledTensor, with the `weight_scale` buffer): how activations are quantized."""
    weight_block: tuple[int, int] | None = None
    """For a ScaledTensor weight with block scales: (rows, columns) one scale covers; `weight_scale` is then
    [ceil(rows / block rows), ceil(cols / block columns)]."""
    input_scale: float | None = None
    """For activation_scheme "static": the activations' scale (a merged layer's: the largest of its parts', as
    vLLM takes it: one input, one scale)."""

    def shard_rows(self, shard_id: str | None) -> tuple[int, int]:
        """(first row, rows) of the weight that a checkpoint tensor fills."""
        return 0, self.output_size

    def tp_slice(self, loaded: Any, shard_id: str | None, is_bias: bool) -> Any:
        """This rank's part of a checkpoint tensor (all of it without tensor parallelism)."""
        return loaded

    def weight_loader(
        self,
        param: nn.Parameter,
        loaded: torch.Tensor | QuantizedTensor | ScaledTensor,
        shard_id: str | None = None,
    ) -> None:
        self._load_local(param, self.tp_slice(loaded, shard_id, param is self.bias), shard_id)

    def _load_local(self, param: nn.Parameter, loaded: Any, shard_id: str | None) -> None:
        """Copies this rank's part of a checkpoint tensor (already cut by `tp_slice`) into the parameter."""
        offset, size = self.shard_rows(shard_id)
        if param is self.bias:
            target = param.data.narrow(0, offset, size)
        else:
            # The weight may have been replaced (kept quantized, or back to float): never trust `param` for it.
            loaded = self._prepare_weight(take_input_perm(self, loaded, shard_id))
            target = self.weight.data.narrow(0, offset, size)
            if isinstance(loaded, ScaledTensor):
                self._load_scales(loaded, offset, size, shard_id)
            if isinstance(loaded, QuantizedTensor | ScaledTensor):
                loaded = loaded.data
        target.copy_(_checked(loaded, tuple(target.shape), shard_id))

    def _load_scales(self, loaded: ScaledTensor, offset: int, size: int, shard_id: str | None) -> None:
        if self.weight_block is None:
            self.weight_scale.narrow(0, offset, size).copy_(_checked(loaded.scale, (size,), shard_id))
            return
        rows, cols = self.weight_block
        if offset % rows:
            raise ValueError(
                f"{shard_id or 'weight'}: rows from {offset} do not start a {rows}-row block of weight scales"
            )
        target = self.weight_scale.narrow(0, offset // rows, -(-size // rows))
        target.copy_(_checked(loaded.scale, tuple(target.shape), shard_id))

    def _prepare_weight(
        self, loaded: torch.Tensor | QuantizedTensor | ScaledTensor
    ) -> torch.Tensor | QuantizedTensor | ScaledTensor:
        """Keeps GGUF blocks when every tensor of this layer comes in the same type (MergedLinear keeps parts of
        different block types apart); otherwise (float parts beside quantized ones) the layer is float and
        quantized parts are dequantized. int8 /
        float8 weights (ScaledTensor) are kept when every part has the same storage and activation scheme."""
        first = not getattr(self, "_weight_loaded", False)
        self._weight_loaded = True
        if isinstance(loaded, ScaledTensor) or self.activation_scheme is not None:
            return self._prepare_scaled(loaded, first)
        if isinstance(loaded, QuantizedTensor) and loaded.shape[1] == self.input_size:
            if first:
                self._float_dtype = self.weight.dtype
                blocks = torch.empty(self.output_size, loaded.data.shape[1], dtype=torch.uint8)
                self.weight = nn.Parameter(blocks, requires_grad=False)
                self.weight_type = loaded.qtype
                return loaded
            if self.weight_type == loaded.qtype:
                return loaded
        if self.weight_type is not None:  # float parts after quantized ones: widen what has been loaded
            widened = dequantize(self.weight.data, self.weight_type, self.input_size)
            self.weight = nn.Parameter(widened.to(self._float_dtype), requires_grad=False)
            self.weight_type = None
        if isinstance(loaded, QuantizedTensor):
            return loaded.dequantize().to(self.weight.dtype)
        return loaded.to(self.weight.dtype)

    def _prepare_scaled(
        self, loaded: torch.Tensor | QuantizedTensor | ScaledTensor, first: bool
    ) -> ScaledTensor:
        if first and isinstance(loaded, ScaledTensor) and loaded.shape[1] == self.input_size:
            data = torch.empty(self.output_size, self.input_size, dtype=loaded.data.dtype)
            self.weight = nn.Parameter(data, requires_grad=False)
            self.weight_block = loaded.block
            if loaded.block is None:
                scales = torch.empty(self.output_size, dtype=torch.float32)
            else:
                rows, cols = loaded.block
                scales = torch.empty(-(-self.output_size // rows), -(-self.input_size // cols))
            self.register_buffer("weight_scale", scales)
            self.activation_scheme = loaded.activations or ""
            self.input_scale = loaded.input_scale
            return loaded
        if (
            isinstance(loaded, ScaledTensor)
            and self.activation_scheme is not None
            and loaded.data.dtype == self.weight.dtype
            and (loaded.activations or "") == self.activation_scheme
            and loaded.block == self.weight_block
        ):
            if loaded.input_scale is not None and self.input_scale is not None:
                self.input_scale = max(self.input_scale, loaded.input_scale)
            return loaded
        # Parts of one merged layer (q|k|v, gate|up) saved in different schemes: rare enough to refuse.
        raise ValueError(
            f"the parts of one merged layer ({self.output_size}x{self.input_size}) are stored in different "
            "quantization schemes; give them one compressed-tensors config group"
        )

    def quantize_fp8(self) -> bool:
        """vLLM's online FP8 (--quantization fp8 on a float checkpoint): the float weight becomes float8 e4m3 with
        one scale, its absmax / 448 (over every part of a merged layer, as vLLM's), and activations are quantized
        per tensor at run time. False, unchanged, for a weight kept in blocks or already scaled."""
        if (
            self.weight_type is not None
            or self.activation_scheme is not None
            or not self.weight.is_floating_point()
        ):
            return False
        weight = self.weight.data.float()
        scale = (weight.abs().amax() / FP8_MAX).clamp(min=1e-12)
        data = (weight / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        self.weight = nn.Parameter(data, requires_grad=False)
        self.register_buffer("weight_scale", scale.expand(self.output_size).contiguous())
        self.activation_scheme = "tensor"
        return True

    def interleave_gguf_rows(self) -> bool:
        """Rows of GGUF blocks regrouped for the CPU GEMV (gguf_quant.interleave_rows), once loading is done: where
        the C kernels run on this weight and every part's rows fill groups of four. Whether it did."""
        if self.weight_interleave != 1 or not interleavable(self.weight, self.weight_type):
            return False
        self.weight = nn.Parameter(interleave_rows(self.weight.data, self.weight_type), requires_grad=False)
        self.weight_interleave = INTERLEAVE
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = permute_input(x, self.input_perm)
        if self.weight_type is not None:
            return gguf_linear(
                x,
                self.weight,
                self.weight_type,
                self.input_size,
                self.bias,
                self.weight_interleave,
                self.gguf_bf16,
            )
        if self.activation_scheme is not None:
            return scaled_linear(
                x, self.weight, self.weight_scale, self.activation_scheme or None, self.bias, self.input_scale,
                self.weight_block,
            )  # fmt: skip
        return linear(x, self.weight, self.bias)


class ReplicatedLinear(LinearBase):
    """Not sharded (lm_head for now)."""


class MergedLinear(LinearBase):
    """Several projections of the same input stored as one matrix (q|k|v, gate|up): one matmul instead of three.

    GGUF files may store the parts in different block types (Q4_K_M: q and k in Q4_K, v in Q6_K). Then each part
    keeps its own blocks (buffer `weight_part_<shard>`) and is multiplied on its own, the outputs concatenated:
    the weights stay at 4.5-6.5 bits instead of being widened to 16 or 32."""

    part_types: dict[str, int] | None = None
    """Shard id -> GGML type of its blocks, in output order, when the parts differ in type; else None."""

    def __init__(
        self,
        input_size: int,
        output_sizes: dict[str, int],
        bias: bool,
        part_slices: dict[str, tuple[int, int]] | None = None,
        input_slice: tuple[int, int] | None = None,
        reduce: bool = True,
    ) -> None:
        """part_slices: shard id -> (first row, rows) of the checkpoint part this rank keeps (column-parallel; the
        rows become that part's output size). input_slice: (first column, columns) of the checkpoint's input this
        rank keeps (row-parallel); `input_size` is then the checkpoint's. reduce=False leaves a row-parallel
        layer's partial output unsummed, for a caller that sums several layers' outputs with one all-reduce (the
        experts of a mixture-of-experts block)."""
        self.part_slices = part_slices
        self.input_slice = input_slice
        if part_slices is not None:
            output_sizes = {name: part_slices[name][1] for name in output_sizes}
        super().__init__(
            input_size if input_slice is None else input_slice[1], sum(output_sizes.values()), bias
        )
        self.shard_offsets: dict[str, tuple[int, int]] = {}
        offset = 0
        for name, size in output_sizes.items():
            self.shard_offsets[name] = (offset, size)
            offset += size
        # Row-parallel: every rank sums its partial product; rank 0 alone adds the bias.
        self.row_parallel = input_slice is not None and parallel_state.get_tp().size > 1
        self.reduce_output = self.row_parallel and reduce

    def tp_slice(self, loaded: Any, shard_id: str | None, is_bias: bool) -> Any:
        if self.part_slices is not None and shard_id is not None:
            first, count = self.part_slices[shard_id]
            return loaded if (first, count) == (0, loaded.shape[0]) else slice_rows(loaded, first, count)
        if self.row_parallel:
            if is_bias:
                return loaded if parallel_state.get_tp().rank == 0 else torch.zeros_like(loaded)
            what = f"{self.output_size}x{self.input_size} layer, part {shard_id}"
            return slice_columns(loaded, *self.input_slice, what)
        return loaded

    def shard_rows(self, shard_id: str | None) -> tuple[int, int]:
        return (0, self.output_size) if shard_id is None else self.shard_offsets[shard_id]

    def weight_loader(
        self,
        param: nn.Parameter,
        loaded: torch.Tensor | QuantizedTensor | ScaledTensor,
        shard_id: str | None = None,
    ) -> None:
        loaded = self.tp_slice(loaded, shard_id, param is self.bias)  # before the parts are told apart
        if param is not self.bias and shard_id is not None:
            mixed = self.part_types is not None or (
                self.weight_type is not None
                and isinstance(loaded, QuantizedTensor)
                and loaded.qtype != self.weight_type
            )
            if mixed and isinstance(loaded, QuantizedTensor) and loaded.shape[1] == self.input_size:
                self._load_part(loaded, shard_id)
                return
            if self.part_types is not None:  # a float part after parts in blocks: the layer becomes float
                self._widen_parts()
        self._load_local(param, loaded, shard_id)

    def _load_part(self, loaded: QuantizedTensor, shard_id: str) -> None:
        if self.part_types is None:  # split what has been loaded (in one type) into per-part blocks
            self.part_types = {}
            for name, (offset, size) in self.shard_offsets.items():
                self.register_buffer(f"weight_part_{name}", self.weight.data.narrow(0, offset, size).clone())
                self.part_types[name] = self.weight_type  # type: ignore[assignment]
            self.weight = nn.Parameter(torch.empty(0, dtype=torch.uint8), requires_grad=False)
        size = self.shard_offsets[shard_id][1]
        self.register_buffer(
            f"weight_part_{shard_id}", _checked(loaded.data, (size, loaded.data.shape[1]), shard_id).clone()
        )
        self.part_types[shard_id] = loaded.qtype

    def interleave_gguf_rows(self) -> bool:
        if self.part_types is None:
            return super().interleave_gguf_rows()
        parts = {name: getattr(self, f"weight_part_{name}") for name in self.part_types}
        # one interleave a layer: a part that keeps the file's order keeps it for all
        if self.weight_interleave != 1 or not all(
            interleavable(part, self.part_types[name]) for name, part in parts.items()
        ):
            return False
        for name, part in parts.items():
            self.register_buffer(f"weight_part_{name}", interleave_rows(part, self.part_types[name]))
        self.weight_interleave = INTERLEAVE
        return True

    def _widen_parts(self) -> None:
        assert self.part_types is not None and self.weight_interleave == 1  # loading is not done
        parts = [
            dequantize(getattr(self, f"weight_part_{name}"), qtype, self.input_size)
            for name, qtype in self.part_types.items()
        ]
        for name in self.part_types:
            delattr(self, f"weight_part_{name}")
        self.weight = nn.Parameter(torch.cat(parts).to(self._float_dtype), requires_grad=False)
        self.part_types = None
        self.weight_type = None

    lora: LayerLoRA | None = None
    """This layer's LoRA adapters (--enable-lora; worker/lora_manager.py attaches them); None without."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._local_forward(x)
        if self.lora is not None and self.lora.batch.active:
            out = self.lora.add_delta(x, out)  # a row-parallel layer's share, summed with the output's
        return parallel_state.all_reduce(out) if self.reduce_output else out

    def _local_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.part_types is None:
            return super().forward(x)
        x = permute_input(x, self.input_perm)
        parts = [(getattr(self, f"weight_part_{name}"), qtype) for name, qtype in self.part_types.items()]
        return gguf_linear_parts(x, parts, self.input_size, self.bias, self.weight_interleave, self.gguf_bf16)


def _checked(loaded: torch.Tensor, shape: tuple[int, ...], shard_id: str | None) -> torch.Tensor:
    if tuple(loaded.shape) != shape:
        what = f"{shard_id} shape" if shard_id else "weight shape"
        raise ValueError(f"{what} {tuple(loaded.shape)} does not match {shape}")
    return loaded


# Above this many rows a float32 x bfloat16-weight product widens the weight once and uses PyTorch's GEMM: the
# widening is then a few % of the product, and on a Zen 3 (AVX2) oneDNN's float32 GEMM and our panel kernel were
# equal within the machine's noise at 1024-2048 rows (93-149 against 95-144 GFLOP/s); at 512 rows and below ours
# was as fast or faster and reads half the weight bytes.
MIXED_GEMM_MAX_ROWS = 512


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, except on the CPU: a few rows go through the C GEMV (small-batch decode only streams the weights,
    and that loop reads them ~2x faster than the general GEMM, ops/csrc/gemv.c), and float32 activations with
    bfloat16 weights (CPUs without bfloat16 instructions) go through the C mixed GEMM."""
    if cpu_ops.can_gemv(x, weight, bias):
        return cpu_ops.gemv(x, weight, bias)
    if weight.dtype != x.dtype:
        if x.dim() == 2 and x.shape[0] <= MIXED_GEMM_MAX_ROWS and cpu_ops.can_mixed_gemm(x, weight, bias):
            return cpu_ops.mixed_gemm(x, weight, bias)
        return F.linear(x, weight.to(x.dtype), bias)
    return F.linear(x, weight, bias)


def quantize_linears_fp8(model: nn.Module) -> int:
    """LinearBase.quantize_fp8 on every linear layer of `model` (the LM head is not one); how many changed."""
    return sum(module.quantize_fp8() for module in model.modules() if isinstance(module, LinearBase))
