"""A Hugging Face model folder: config.json, generation_config.json and *.safetensors shards."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator
from typing import Any

import transformers
from safetensors import safe_open

from pagedserve.models.weight_progress import StoredTensor

# model_type → the architecture name pagedserve implements for it.
SUPPORTED_MODEL_TYPES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "cohere": "CohereForCausalLM",
    "cohere2": "Cohere2ForCausalLM",
    "glm": "GlmForCausalLM",
    "glm4": "Glm4ForCausalLM",
    "granite": "GraniteForCausalLM",
    "smollm3": "SmolLM3ForCausalLM",
    "olmo2": "Olmo2ForCausalLM",
    "mistral3": "Mistral3ForConditionalGeneration",  # served text-only, as gemma3
    "gemma3_text": "Gemma3ForCausalLM",
    "gemma3": "Gemma3ForConditionalGeneration",  # served text-only: text_config (language_model_config)
    # Encoders, served as embedding models only (--runner pooling): models/bert.py.
    "bert": "BertModel",
    "roberta": "RobertaModel",
    "xlm-roberta": "XLMRobertaModel",
}
# generation_config.json keys that become default sampling parameters (the set vLLM honours).
GENERATION_DEFAULT_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_new_tokens")
SAFETENSORS_INDEX = "model.safetensors.index.json"
# Buffers some older checkpoints saved; models recompute them.
_SKIPPED_SUFFIXES = ("rotary_emb.inv_freq",)


def load_folder_config(folder: pathlib.Path) -> transformers.PretrainedConfig:
    config_file = folder / "config.json"
    if not config_file.is_file():
        hint = ""
        if gguf_files := sorted(p.name for p in folder.glob("*.gguf")):
            hint = f"; to serve a GGUF file pass the file itself, e.g. {folder / gguf_files[0]}"
        raise FileNotFoundError(f"model folder {folder} has no config.json{hint}")
    raw = _read_json(config_file)
    if raw.get("auto_map") and raw.get("model_type") not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{config_file} asks for the checkpoint's own code (auto_map) for model type {raw.get('model_type')!r}: "
            "pagedserve runs no code from model folders, with or without --trust-remote-code, and does not "
            f"implement it (supported: {', '.join(sorted(SUPPORTED_MODEL_TYPES))})"
        )
    try:
        # Never runs code shipped with a checkpoint: unknown model types fail here instead.
        config = transformers.AutoConfig.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"cannot read {config_file}: {error}") from error
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"model type {model_type!r} in {config_file} is not supported "
            f"(supported: {', '.join(sorted(SUPPORTED_MODEL_TYPES))})"
        )
    if not config.architectures:
        config.architectures = [SUPPORTED_MODEL_TYPES[model_type]]
    if model_type in ("gemma3", "mistral3"):
        config = language_model_config(config)
    return config


def language_model_config(config: transformers.PretrainedConfig) -> transformers.PretrainedConfig:
    """A vision-language checkpoint's text part as the model's config: its `text_config`, keeping the top level's
    architecture (which names the weights' layout), dtype, eos ids and quantization."""
    text = config.text_config
    text.architectures = list(config.architectures)
    for name in ("dtype", "eos_token_id", "quantization_config"):
        if getattr(text, name, None) is None and getattr(config, name, None) is not None:
            setattr(text, name, getattr(config, name))
    return text


def _read_json(path: pathlib.Path) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read {path}: {error}") from error
    if not isinstance(content, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return content


def _as_id_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(item) for item in value] if isinstance(value, list) else [int(value)]


def read_generation_config(folder: pathlib.Path) -> tuple[dict[str, Any], list[int]]:
    """(sampling defaults, eos ids) from generation_config.json; ({}, []) when the file is absent."""
    path = folder / "generation_config.json"
    if not path.is_file():
        return {}, []
    content = _read_json(path)
    defaults = {key: content[key] for key in GENERATION_DEFAULT_KEYS if content.get(key) is not None}
    return defaults, _as_id_list(content.get("eos_token_id"))


def merged_eos_token_ids(*sources: Any) -> list[int]:
    """Union of eos ids (ints or lists) in order of first appearance."""
    ids: list[int] = []
    for source in sources:
        for token_id in _as_id_list(source):
            if token_id not in ids:
                ids.append(token_id)
    return ids


def find_safetensors_files(folder: pathlib.Path) -> list[pathlib.Path]:
    """Shards named by the index when there is one; otherwise every *.safetensors file. Mistral's repos also
    ship `consolidated.safetensors` (same weights, other names), which is ignored when HF-named files exist."""
    index_path = folder / SAFETENSORS_INDEX
    if index_path.is_file():
        weight_map = _read_json(index_path).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index_path} has no weight_map")
        files = [folder / name for name in dict.fromkeys(weight_map.values())]
        if missing := [file.name for file in files if not file.is_file()]:
            raise FileNotFoundError(f"{index_path} names shards that are missing: {', '.join(missing)}")
        return files
    files = sorted(folder.glob("*.safetensors"))
    hf_named = [file for file in files if not file.name.startswith("consolidated")]
    files = hf_named or files
    if not files:
        found = sorted(p.name for p in folder.glob("*.bin")) or sorted(p.name for p in folder.glob("*.pt"))
        hint = f" (found {', '.join(found[:3])}: convert PyTorch checkpoints to safetensors)" if found else ""
        raise FileNotFoundError(f"model folder {folder} has no *.safetensors weights{hint}")
    return files


def iter_safetensors_weights(files: list[pathlib.Path]) -> Iterator[StoredTensor]:
    """Tensors in stored dtype, read one at a time (safe_open memory-maps each shard)."""
    for file in files:
        with safe_open(str(file), framework="pt") as shard:
            for name in shard.keys():
                if name.endswith(_SKIPPED_SUFFIXES):
                    continue
                tensor = shard.get_tensor(name)
                yield StoredTensor(name, tensor, tensor.numel() * tensor.element_size(), file.name)


# sentence-transformers' Pooling modes -> the pooling pagedserve runs (layers/pooler.py).
_POOLING_MODES = {"lasttoken": "LAST", "cls_token": "CLS", "mean_tokens": "MEAN"}
# Modules that leave the pooled vector as it is (Normalize: vLLM normalizes by default, `normalize` says).
_NEUTRAL_MODULES = ("Transformer", "Pooling", "Normalize")


def sentence_transformers_pooling(path: pathlib.Path) -> str | None:
    """The pooling a sentence-transformers folder declares (modules.json's Pooling module): LAST, CLS or MEAN; None
    without modules.json. Other modes (max, weighted mean, several at once) and modules that change the vector
    after pooling (Dense, LayerNorm...) are refused by name, never pooled another way."""
    folder = path if path.is_dir() else path.parent
    modules = folder / "modules.json"
    if not modules.is_file():
        return None
    try:
        entries = json.loads(modules.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read {modules}: {error}") from error
    pooling = None
    for entry in entries if isinstance(entries, list) else []:
        kind = str(entry.get("type", "")).rsplit(".", 1)[-1] if isinstance(entry, dict) else ""
        if kind not in _NEUTRAL_MODULES:
            raise ValueError(f"{modules}: sentence-transformers module {kind or entry!r} is not supported")
        if kind != "Pooling":
            continue
        config = _read_json(folder / str(entry.get("path", "")) / "config.json")
        modes = sorted(
            k.removeprefix("pooling_mode_") for k, v in config.items() if k.startswith("pooling_mode_") and v
        )
        if len(modes) != 1 or modes[0] not in _POOLING_MODES:
            raise ValueError(
                f"{folder}: sentence-transformers pooling {', '.join(modes) or 'none'} is not supported "
                f"(supported: {', '.join(_POOLING_MODES)})"
            )
        pooling = _POOLING_MODES[modes[0]]
    return pooling
