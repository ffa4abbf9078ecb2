"""LoRA adapters as PEFT's `save_pretrained` writes them (adapter_config.json + adapter_model.safetensors with
`base_model.model.<module>.lora_A.weight` [r, in] and `lora_B.weight` [out, r]), written here without the peft
package, and the merged checkpoint an adapter stands for (W + scaling * B @ A, PEFT's merge_and_unload), which
the engine's output with the adapter is compared against.
"""

from __future__ import annotations

import json
import math
import pathlib

import torch
import transformers
from safetensors.torch import save_file

from pagedserve.lora.adapter import lora_target_shapes

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


def write_adapter(
    folder: pathlib.Path,
    config: transformers.PretrainedConfig,
    targets: tuple[str, ...] = ATTENTION + MLP,
    rank: int = 8,
    alpha: float = 16.0,
    seed: int = 0,
    use_rslora: bool = False,
    std: float = 0.2,
    layers: tuple[int, ...] | None = None,
    config_overrides: dict | None = None,
    zero_b: bool = False,
    layers_prefix: str = "model.layers",
) -> dict[str, torch.Tensor]:
    """Random A and B (B non-zero unless `zero_b`, unlike a fresh PEFT adapter, so the adapter changes the output)
    for `targets` of every decoder layer of a Llama-family model with this config (or of `layers`); returns the
    tensors by their names in the file. `layers_prefix`: where the decoder layers sit (a vision-language model's:
    model.language_model.layers)."""
    generator = torch.Generator().manual_seed(seed)
    shapes = lora_target_shapes(config)
    tensors: dict[str, torch.Tensor] = {}
    for layer in range(config.num_hidden_layers) if layers is None else layers:
        for leaf in targets:
            out_features, in_features = shapes[leaf]
            block = "self_attn" if leaf in ATTENTION else "mlp"
            prefix = f"base_model.model.{layers_prefix}.{layer}.{block}.{leaf}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, in_features, generator=generator) * std
            b = torch.randn(out_features, rank, generator=generator) * std
            tensors[f"{prefix}.lora_B.weight"] = b * 0 if zero_b else b
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": "tiny",
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "target_modules": list(targets),
        "bias": "none",
        "use_rslora": use_rslora,
        "use_dora": False,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "fan_in_fan_out": False,
        "inference_mode": True,
    }
    config.update(config_overrides or {})
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return tensors


def merged_state_dict(
    model: transformers.PreTrainedModel,
    tensors: dict[str, torch.Tensor],
    rank: int,
    alpha: float,
    rslora=False,
) -> dict[str, torch.Tensor]:
    """The model's weights with the adapter merged in: W + scaling * B @ A."""
    scaling = alpha / (math.sqrt(rank) if rslora else rank)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for key, a in tensors.items():
        if ".lora_A." not in key:
            continue
        b = tensors[key.replace(".lora_A.", ".lora_B.")]
        weight = key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
        state[weight] = state[weight] + scaling * (b @ a)
    return state
