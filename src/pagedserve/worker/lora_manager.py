"""The runner's LoRA adapters: loaded from their folders when a step first needs them, kept up to --max-cpu-loras
(least recently used dropped first, never one the step uses), and mapped onto the step's rows before the forward.

Loading reads the PEFT tensors, cuts this rank's part (layers/lora.py says which) and stacks the parts of merged
layers. The adapter was already checked by the front end when it was registered (lora/adapter.py); it is checked
again here because the folder may have changed since.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from pagedserve.layers.linear import MergedLinear
from pagedserve.layers.lora import LayerLoRA, LoRABatch, merge_spans, stack_parts
from pagedserve.lora.adapter import AdapterSpec, lora_target_shapes, read_adapter
from pagedserve.lora.request import LoRARequest

logger = logging.getLogger("pagedserve")


class LoRAManager:
    def __init__(
        self,
        model: nn.Module,
        hf_config: Any,
        capacity: int,
        max_rank: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.batch = LoRABatch()
        self.layers: dict[str, MergedLinear] = {}
        for name, module in model.named_modules():
            if isinstance(module, MergedLinear):
                module.lora = LayerLoRA(self.batch)
                self.layers[name] = module
        # checkpoint name fragment -> (merged layer fragment, part): q_proj lives in qkv_proj as part q
        self.stacked: dict[str, tuple[str, str]] = getattr(model, "stacked_params", {})
        self.capacity = capacity
        self.max_rank = max_rank
        self.target_shapes = lora_target_shapes(hf_config)
        self.num_layers = hf_config.num_hidden_layers
        self.dtype = dtype
        self.device = device
        self.loaded: OrderedDict[int, LoRARequest] = OrderedDict()

    def set_step(self, spans: list[tuple[int, int, int]]) -> None:
        """The step's rows by adapter: (adapter id, first row, rows) spans in row order, adapters already loaded
        (`ensure`)."""
        self.batch.spans = merge_spans(spans)

    def clear_step(self) -> None:
        self.batch.spans = []

    def ensure(self, loras: list[LoRARequest]) -> dict[int, str]:
        """Loads the step's adapters that are not loaded; returns {adapter id: error} for those that failed."""
        needed = {lora.lora_int_id for lora in loras}
        failed: dict[int, str] = {}
        for lora in loras:
            if lora.lora_int_id in self.loaded:
                self.loaded.move_to_end(lora.lora_int_id)
                continue
            if lora.lora_int_id in failed:
                continue
            while len(self.loaded) >= self.capacity:
                victim = next((i for i in self.loaded if i not in needed), None)
                if victim is None:
                    break
                self.remove(victim)
            try:
                self._load(lora)
            except (OSError, ValueError, RuntimeError) as error:
                self.remove(lora.lora_int_id)
                failed[lora.lora_int_id] = str(error)
                logger.error("LoRA adapter %r could not be loaded: %s", lora.lora_name, error)
        return failed

    def remove(self, lora_id: int) -> None:
        self.loaded.pop(lora_id, None)
        for layer in self.layers.values():
            assert layer.lora is not None
            layer.lora.weights.pop(lora_id, None)

    def _target(self, module: str) -> tuple[str, str]:
        """Our merged layer's name and part for a PEFT module name (model.layers.0.self_attn.q_proj)."""
        dotted = module + "."
        for fragment, (merged, part) in self.stacked.items():
            if fragment in dotted:
                return dotted.replace(fragment, merged)[:-1], part
        (part,) = self.layers[module].shard_offsets
        return module, part

    def _load(self, lora: LoRARequest) -> None:
        spec = read_adapter(lora.lora_path, self.max_rank, self.target_shapes, self.num_layers)
        by_layer: dict[str, list[tuple[int, torch.Tensor, torch.Tensor]]] = {}
        with safe_open(str(spec.weights_file), framework="pt") as tensors:
            for adapted in spec.modules:
                name, part = self._target(adapted.module)
                layer = self.layers[name]
                a, b = tensors.get_tensor(adapted.a_key), tensors.get_tensor(adapted.b_key)
                if layer.part_slices is not None:  # column-parallel: this rank's output rows
                    first, count = layer.part_slices[part]
                    b = b[first : first + count]
                if layer.input_slice is not None:  # row-parallel: this rank's input columns
                    first, count = layer.input_slice
                    a = a[:, first : first + count]
                row = layer.shard_offsets[part][0]
                by_layer.setdefault(name, []).append((row, a.float(), b.float()))
        self._install(lora.lora_int_id, spec, by_layer)
        self.loaded[lora.lora_int_id] = lora
        logger.info(
            "LoRA adapter %r loaded (id %d, rank %d, %d layers) from %s",
            lora.lora_name, lora.lora_int_id, spec.rank, len(spec.modules), spec.path,
        )  # fmt: skip

    def _install(
        self,
        lora_id: int,
        spec: AdapterSpec,
        by_layer: dict[str, list[tuple[int, torch.Tensor, torch.Tensor]]],
    ) -> None:
        for name, parts in by_layer.items():
            layer = self.layers[name]
            a, b = stack_parts(parts, layer.output_size, spec.scaling)
            assert layer.lora is not None
            layer.lora.weights[lora_id] = (
                a.to(self.device, self.dtype).contiguous(),
                b.to(self.device, self.dtype).contiguous(),
            )
