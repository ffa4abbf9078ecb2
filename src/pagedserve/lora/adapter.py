"""A PEFT LoRA adapter folder, read and checked without loading a tensor (pure Python: the API process checks an
adapter before any request uses it; the workers load the tensors, worker/lora_manager.py).

The format is what PEFT's `save_pretrained` writes: `adapter_config.json` (r, lora_alpha, use_rslora, ...) and
`adapter_model.safetensors` with, per adapted linear layer, `base_model.model.<module>.lora_A.weight` [r, in] and
`...lora_B.weight` [out, r]. The layer computes W x + scaling * B (A x), scaling = lora_alpha / r (lora_alpha /
sqrt(r) with use_rslora). What the engine cannot apply (DoRA, trained biases, extra saved modules, per-module rank
or alpha patterns, embedding or LM-head adapters) is refused by name rather than half applied.
"""

from __future__ import annotations

import json
import math
import pathlib
import re
import struct
from dataclasses import dataclass
from typing import Any

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
# The decoder's linear layers an adapter may target (Llama-family names).
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Groups: layer, block, layer name, A or B. A vision-language model's language model (Gemma 3 4B-27B) is named
# language_model.model.layers (transformers 4) or model.language_model.layers (5): both are our model.layers.
_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?:language_model\.)?model\.(?:language_model\.)?layers\.(\d+)\.(self_attn|mlp)\."
    r"(\w+)\.lora_([AB])(?:\.default)?\.weight$"
)
_FLOAT_DTYPES = ("F32", "F16", "BF16")
# A header past this is not an adapter's (PEFT writes ~100 bytes a tensor).
_MAX_HEADER_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class AdaptedModule:
    """One linear layer the adapter changes: the names of its two tensors in the weights file."""

    module: str  # the base model's name for the layer, e.g. model.layers.0.self_attn.q_proj
    a_key: str  # [rank, in]
    b_key: str  # [out, rank]


@dataclass(frozen=True)
class AdapterSpec:
    path: pathlib.Path
    rank: int
    scaling: float  # multiplies B (A x)
    modules: tuple[AdaptedModule, ...]

    @property
    def weights_file(self) -> pathlib.Path:
        return self.path / WEIGHTS_FILE


def lora_target_shapes(hf_config: Any) -> dict[str, tuple[int, int]]:
    """(out, in) of each adaptable layer of a Llama-family model, by its last name (q_proj, ...), unsharded."""
    hidden = hf_config.hidden_size
    heads = hf_config.num_attention_heads
    kv_heads = getattr(hf_config, "num_key_value_heads", None) or heads
    head_dim = getattr(hf_config, "head_dim", None) or hidden // heads
    inter = hf_config.intermediate_size
    return {
        "q_proj": (heads * head_dim, hidden),
        "k_proj": (kv_heads * head_dim, hidden),
        "v_proj": (kv_heads * head_dim, hidden),
        "o_proj": (hidden, heads * head_dim),
        "gate_proj": (inter, hidden),
        "up_proj": (inter, hidden),
        "down_proj": (hidden, inter),
    }


def read_safetensors_header(path: pathlib.Path) -> dict[str, dict[str, Any]]:
    """The tensors' entries (dtype, shape, data_offsets) of a safetensors file, from its JSON header."""
    with path.open("rb") as file:
        prefix = file.read(8)
        if len(prefix) != 8:
            raise ValueError(f"{path} is not a safetensors file (shorter than its header length)")
        (length,) = struct.unpack("<Q", prefix)
        if length > _MAX_HEADER_BYTES:
            raise ValueError(f"{path} is not a safetensors file (header length {length})")
        raw = file.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"{path} is not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path} is not a safetensors file")
    header.pop("__metadata__", None)
    return header


def _read_config(folder: pathlib.Path) -> dict[str, Any]:
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise ValueError(f"LoRA adapter {folder} has no {CONFIG_FILE} (a PEFT adapter folder is expected)")
    try:
        config = json.loads(config_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{config_path} is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_path} must hold a JSON object")
    peft_type = config.get("peft_type", "LORA")
    if peft_type != "LORA":
        raise ValueError(f"{config_path}: peft_type {peft_type!r} is not supported (only LORA)")
    refusals = {
        "use_dora": "DoRA adapters are not supported",
        "modules_to_save": "adapters that also save whole modules are not supported",
        "rank_pattern": "per-module ranks (rank_pattern) are not supported",
        "alpha_pattern": "per-module alphas (alpha_pattern) are not supported",
    }
    for key, reason in refusals.items():
        if config.get(key):
            raise ValueError(f"{config_path}: {key} is set: {reason}")
    if config.get("bias", "none") != "none":
        raise ValueError(
            f"{config_path}: bias {config['bias']!r}: adapters with trained biases are not supported"
        )
    return config


def read_adapter(
    path: str | pathlib.Path,
    max_rank: int,
    target_shapes: dict[str, tuple[int, int]],
    num_layers: int,
) -> AdapterSpec:
    """Checks a PEFT adapter folder against the base model and --max-lora-rank; ValueError naming what is wrong."""
    folder = pathlib.Path(path)
    if not folder.is_dir():
        raise ValueError(f"LoRA adapter path {str(path)!r} is not a folder")
    config = _read_config(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        pickled = [p.name for p in folder.glob("adapter_model.*") if p.suffix in (".bin", ".pt")]
        hint = f" ({pickled[0]} is a pickle, never loaded: save it with safetensors)" if pickled else ""
        raise ValueError(f"LoRA adapter {folder} has no {WEIGHTS_FILE}{hint}")
    header = read_safetensors_header(weights)
    pairs: dict[str, dict[str, str]] = {}
    for key, entry in header.items():
        match = _KEY.match(key)
        if match is None or match.group(3) not in TARGET_MODULES:
            raise ValueError(
                f"{weights}: tensor {key!r} is not a LoRA weight of a supported layer "
                f"({', '.join(TARGET_MODULES)}); embedding and LM-head adapters are not supported"
            )
        if int(match.group(1)) >= num_layers:
            raise ValueError(
                f"{weights}: tensor {key!r} names layer {match.group(1)}; the model has {num_layers}"
            )
        if entry.get("dtype") not in _FLOAT_DTYPES:
            raise ValueError(
                f"{weights}: tensor {key!r} has dtype {entry.get('dtype')}; expected F32, F16 or BF16"
            )
        module = f"model.layers.{match.group(1)}.{match.group(2)}.{match.group(3)}"
        pairs.setdefault(module, {})[match.group(4)] = key
    if not pairs:
        raise ValueError(f"{weights} holds no LoRA weights")
    rank = int(config.get("r", 0))
    modules = []
    for module, keys in sorted(pairs.items()):
        if set(keys) != {"A", "B"}:
            raise ValueError(f"{weights}: {module} has lora_{''.join(keys)} without its other half")
        out_size, in_size = target_shapes[module.rsplit(".", 1)[1]]
        a_shape, b_shape = header[keys["A"]]["shape"], header[keys["B"]]["shape"]
        if a_shape != [rank, in_size] or b_shape != [out_size, rank]:
            raise ValueError(
                f"{weights}: {module} has lora_A {a_shape} and lora_B {b_shape}; this model and r = {rank} need "
                f"{[rank, in_size]} and {[out_size, rank]}"
            )
        modules.append(AdaptedModule(module, keys["A"], keys["B"]))
    if not 1 <= rank <= max_rank:
        raise ValueError(f"LoRA adapter {folder} has rank {rank}; --max-lora-rank is {max_rank}")
    alpha = float(config.get("lora_alpha", rank))
    scaling = alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
    return AdapterSpec(folder, rank, scaling, tuple(modules))


class AdapterChecker:
    """The front end's check of a request's adapter against the model: once per (adapter id, folder)."""

    # Adapter ids remembered as checked; past this the memory starts over (a re-check reads two small files).
    MAX_REMEMBERED = 1024

    def __init__(self, hf_config: Any, max_rank: int) -> None:
        self.target_shapes = lora_target_shapes(hf_config)
        self.num_layers = int(hf_config.num_hidden_layers)
        self.max_rank = max_rank
        self._checked: set[tuple[int, str]] = set()

    def check(self, lora_int_id: int, lora_path: str) -> None:
        """ValueError saying what is wrong with the adapter."""
        key = (lora_int_id, lora_path)
        if key in self._checked:
            return
        read_adapter(lora_path, self.max_rank, self.target_shapes, self.num_layers)
        if len(self._checked) >= self.MAX_REMEMBERED:
            self._checked.clear()
        self._checked.add(key)
