"""The runner's LoRA adapters: read from their folders when a step first needs them, kept up to --max-cpu-loras
(least recently used dropped first, never one the step uses), and put in one of --max-loras slots of every layer
(layers/lora.py) when a step runs them.

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
from pagedserve.layers.lora import LayerLoRA, LoRABatch, stack_parts
from pagedserve.lora.adapter import lora_target_shapes, read_adapter
from pagedserve.lora.request import LoRARequest
from pagedserve.ops import build as cpu_kernels

logger = logging.getLogger("pagedserve")

# One adapter's stacked matrices, by our layer name: (A [rank, in], B [out, rank] scaled), float32.
AdapterWeights = dict[str, tuple[torch.Tensor, torch.Tensor]]


class LoRAManager:
    def __init__(
        self,
        model: nn.Module,
        hf_config: Any,
        max_loras: int,
        cache_size: int,
        max_rank: int,
        max_rows: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        """max_rows: the most rows (tokens) a step runs."""
        use_kernel = (
            device.type == "cpu"
            and dtype in (torch.float32, torch.bfloat16)
            and cpu_kernels.load() is not None
        )
        self.batch = LoRABatch(max_rows, use_kernel, device)
        self.layers: dict[str, MergedLinear] = {}
        for name, module in model.named_modules():
            if isinstance(module, MergedLinear):
                stacked_rank = len(module.shard_offsets) * max_rank
                module.lora = LayerLoRA(
                    self.batch, max_loras, stacked_rank, module.input_size, module.output_size, device
                )
                self.layers[name] = module
        # checkpoint name fragment -> (merged layer fragment, part): q_proj lives in qkv_proj as part q
        self.stacked: dict[str, tuple[str, str]] = getattr(model, "stacked_params", {})
        self.cache_size = cache_size
        self.max_rank = max_rank
        self.target_shapes = lora_target_shapes(hf_config)
        self.num_layers = hf_config.num_hidden_layers
        self.device = device
        self.loaded: OrderedDict[int, AdapterWeights] = OrderedDict()
        self.slot_owner: list[int | None] = [None] * max_loras  # adapter id in each slot
        slot_bytes = sum(
            (t.a.numel() + t.bt.numel()) * 4
            for t in (layer.lora for layer in self.layers.values())
            if t is not None
        )
        logger.info(
            "LoRA: %d adapter slots of rank <= %d: %.0f MiB (float32); delta by %s", max_loras, max_rank,
            slot_bytes / 2**20, "the C kernel (kept in decode graphs)" if use_kernel else "PyTorch (eager steps)",
        )  # fmt: skip

    @property
    def recordable(self) -> bool:
        """Steps with adapters may replay CPU decode graphs (the delta is a recorded kernel call)."""
        return self.batch.use_kernel

    def ensure(self, loras: list[LoRARequest]) -> dict[int, str]:
        """Loads the step's adapters that are not loaded and gives each a slot; returns {adapter id: error} for
        those that could not be loaded (they get no slot)."""
        needed = {lora.lora_int_id for lora in loras}
        failed: dict[int, str] = {}
        for lora in loras:
            lora_id = lora.lora_int_id
            if lora_id in self.loaded:
                self.loaded.move_to_end(lora_id)
            elif lora_id not in failed:
                while len(self.loaded) >= self.cache_size:
                    victim = next((i for i in self.loaded if i not in needed), None)
                    if victim is None:
                        break
                    self.remove(victim)
                try:
                    self.loaded[lora_id] = self._read(lora)
                except (OSError, ValueError, RuntimeError) as error:
                    failed[lora_id] = str(error)
                    logger.error("LoRA adapter %r could not be loaded: %s", lora.lora_name, error)
                    continue
            if lora_id not in self.slot_owner:
                self._fill_slot(lora_id, needed)
        return failed

    def set_step(
        self,
        rows: list[tuple[str, LoRARequest | None, int, int]],
        num_rows: int,
        failed_seq_ids: dict[str, str],
    ) -> bool:
        """The step's sequences as (seq id, adapter, first row, rows): their adapters loaded and in slots, the rows
        mapped onto the slots. A sequence whose adapter could not be loaded lands in `failed_seq_ids` and runs
        without it. Returns whether any row runs an adapter."""
        loras = [lora for _, lora, _, _ in rows if lora is not None]
        failed = self.ensure(loras) if loras else {}
        spans = []
        for seq_id, lora, first, count in rows:
            if lora is None:
                continue
            if lora.lora_int_id in failed:
                failed_seq_ids[seq_id] = failed[lora.lora_int_id]
                continue
            spans.append((self.slot_owner.index(lora.lora_int_id), first, count))
        self.batch.set_step(sorted(spans, key=lambda span: span[1]), num_rows)
        return bool(spans)

    def remove(self, lora_id: int) -> None:
        self.loaded.pop(lora_id, None)
        if lora_id in self.slot_owner:
            self.slot_owner[self.slot_owner.index(lora_id)] = None

    def _fill_slot(self, lora_id: int, needed: set[int]) -> None:
        """A free slot, or one whose adapter this step does not run (the scheduler runs at most --max-loras)."""
        slot = next(
            (i for i, owner in enumerate(self.slot_owner) if owner is None or owner not in needed), None
        )
        if slot is None:
            raise RuntimeError(
                f"a step runs more adapters than the {len(self.slot_owner)} slots (--max-loras)"
            )
        weights = self.loaded[lora_id]
        for name, layer in self.layers.items():
            assert layer.lora is not None
            layer.lora.set_slot(slot, weights.get(name))
        self.slot_owner[slot] = lora_id

    def _target(self, module: str) -> tuple[str, str]:
        """Our merged layer's name and part for a PEFT module name (model.layers.0.self_attn.q_proj)."""
        dotted = module + "."
        for fragment, (merged, part) in self.stacked.items():
            if fragment in dotted:
                return dotted.replace(fragment, merged)[:-1], part
        (part,) = self.layers[module].shard_offsets
        return module, part

    def _read(self, lora: LoRARequest) -> AdapterWeights:
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
        weights = {}
        for name, parts in by_layer.items():
            a, b = stack_parts(parts, self.layers[name].output_size, spec.scaling)
            weights[name] = (a.to(self.device), b.to(self.device))
        logger.info(
            "LoRA adapter %r loaded (id %d, rank %d, %d layers) from %s",
            lora.lora_name, lora.lora_int_id, spec.rank, len(spec.modules), spec.path,
        )  # fmt: skip
        return weights
