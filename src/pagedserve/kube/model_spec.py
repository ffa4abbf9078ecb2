"""The model facts the capacity planner needs, read from a config.json, a GGUF file or the built-in catalogue."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class ModelSpec:
    """Shape of a decoder-only transformer, enough to count its weights and its KV cache."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    num_experts: int = 1
    """Routed experts per MoE layer; `intermediate_size` is then one expert's width (Qwen's moe_intermediate_size)."""
    experts_per_token: int = 1
    """Experts each token runs (num_experts_per_tok): what activations scale with."""
    shared_expert_intermediate_size: int = 0
    """Qwen2-MoE's shared expert, run on every token beside the routed ones; 0 when none."""
    torch_dtype: str = "bfloat16"
    checkpoint_quantization: str | None = None
    exact_param_count: int | None = None
    """Set when the parameter count is known exactly (GGUF tensor shapes); otherwise counted from the shape."""
    layer_windows: tuple[int | None, ...] = ()
    """Each layer's sliding window (None: full attention); empty when no layer has one."""

    @property
    def embedding_params(self) -> int:
        """Input embeddings plus the LM head (unless tied): the parts quantization methods keep 16-bit."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    @property
    def layer_linear_params(self) -> int:
        """Linear (matmul) weights of one decoder layer: attention projections and the gated MLP."""
        q_out = self.num_attention_heads * self.head_dim
        kv_out = self.num_kv_heads * self.head_dim
        attention = self.hidden_size * (q_out + 2 * kv_out) + q_out * self.hidden_size
        mlp = 3 * self.hidden_size * self.intermediate_size * self.num_experts
        router = self.hidden_size * self.num_experts if self.num_experts > 1 else 0
        shared = 3 * self.hidden_size * self.shared_expert_intermediate_size
        shared += self.hidden_size if self.shared_expert_intermediate_size else 0  # its sigmoid gate
        return attention + mlp + router + shared

    @property
    def linear_params(self) -> int:
        return self.num_layers * self.layer_linear_params

    @property
    def small_params(self) -> int:
        """Norm weights and attention biases: negligible, kept in the activation dtype."""
        bias = (
            (self.num_attention_heads + 2 * self.num_kv_heads) * self.head_dim if self.attention_bias else 0
        )
        return self.num_layers * (2 * self.hidden_size + bias) + self.hidden_size

    @property
    def param_count(self) -> int:
        if self.exact_param_count is not None:
            return self.exact_param_count
        return self.embedding_params + self.linear_params + self.small_params


def _require_int(config: dict[str, Any], key: str, source: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{source}: config field {key!r} must be a positive integer, got {value!r}")
    return value


# Fields Hub configs leave out because transformers' config class has them as defaults (Gemma 3's text_config in
# the 4B-27B checkpoints names neither its vocabulary nor its context).
_MODEL_TYPE_DEFAULTS: dict[str, dict[str, Any]] = {
    "gemma3_text": {
        "vocab_size": 262_208, "max_position_embeddings": 131_072, "tie_word_embeddings": True, "head_dim": 256,
        "hidden_size": 2304, "intermediate_size": 9216, "num_attention_heads": 8, "num_key_value_heads": 4,
        "num_hidden_layers": 26,
    },
}  # fmt: skip


def layer_windows(config: dict[str, Any], num_layers: int) -> tuple[int | None, ...]:
    """The engine's rule (models/llama.py::attention_window) on a config.json: `sliding_window` on every layer
    (Mistral, Phi-3), only on "sliding_attention" ones where `layer_types` says, Gemma 2's every other layer,
    Gemma 3's five of six and Cohere2's three of four where older configs leave layer_types out (transformers'
    defaults); none with Qwen's use_sliding_window off."""
    window = config.get("sliding_window")
    if config.get("use_sliding_window", True) is False or not isinstance(window, int) or window <= 0:
        return ()
    layer_types = config.get("layer_types")
    if not isinstance(layer_types, list):
        model_type = str(config.get("model_type"))
        if model_type == "gemma2":
            layer_types = ["sliding_attention" if i % 2 == 0 else "full" for i in range(num_layers)]
        elif model_type.startswith("gemma3") or model_type == "cohere2":  # Gemma 3: 5 of 6; Cohere2: 3 of 4
            pattern = int(config.get("sliding_window_pattern") or (4 if model_type == "cohere2" else 6))
            layer_types = ["sliding_attention" if (i + 1) % pattern else "full" for i in range(num_layers)]
        else:
            layer_types = ["sliding_attention"] * num_layers
    return tuple(window if kind == "sliding_attention" else None for kind in layer_types[:num_layers])


def spec_from_config(config: dict[str, Any], name: str, source: str = "config.json") -> ModelSpec:
    """Build a ModelSpec from a Hugging Face config.json dict (multimodal configs: their `text_config`)."""
    if not isinstance(config, dict):
        raise ValueError(f"{source}: expected a JSON object")
    if "text_config" in config and "num_hidden_layers" not in config:
        top_dtype = config.get("torch_dtype") or config.get("dtype")
        config = {"torch_dtype": top_dtype, **config["text_config"]}
    config = {**_MODEL_TYPE_DEFAULTS.get(str(config.get("model_type")), {}), **config}
    hidden = _require_int(config, "hidden_size", source)
    heads = _require_int(config, "num_attention_heads", source)
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    quant_config = config.get("quantization_config") or {}
    quant = quant_config.get("quant_method") if isinstance(quant_config, dict) else None
    num_experts = int(config.get("num_local_experts") or config.get("num_experts") or 1)
    # Qwen2/3-MoE: intermediate_size is the (usually unused) dense MLP's, each expert's is moe_intermediate_size.
    width_key = "moe_intermediate_size" if num_experts > 1 and "moe_intermediate_size" in config else None
    spec = ModelSpec(
        name=name,
        hidden_size=hidden,
        intermediate_size=_require_int(config, width_key or "intermediate_size", source),
        num_layers=_require_int(config, "num_hidden_layers", source),
        num_attention_heads=heads,
        num_kv_heads=int(kv_heads),
        head_dim=int(head_dim),
        vocab_size=_require_int(config, "vocab_size", source),
        max_position_embeddings=int(config.get("max_position_embeddings") or 4096),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        attention_bias=bool(config.get("attention_bias", False)),
        num_experts=num_experts,
        experts_per_token=int(config.get("num_experts_per_tok") or 1) if num_experts > 1 else 1,
        shared_expert_intermediate_size=int(config.get("shared_expert_intermediate_size") or 0),
        torch_dtype=str(config.get("torch_dtype") or config.get("dtype") or "bfloat16"),
        checkpoint_quantization=str(quant).lower() if quant else None,
        layer_windows=layer_windows(config, int(config["num_hidden_layers"])),
    )
    if heads % spec.num_kv_heads:
        raise ValueError(
            f"{source}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
        )
    return spec


def gguf_layer_windows(reader: Any) -> tuple[int | None, ...]:
    """A GGUF file's sliding windows, as llama.cpp lays them out: Gemma 2 every other layer, Gemma 3 five layers of
    six, Phi-3 every layer (the architecture's `attention.sliding_window` key; none without it)."""
    arch = str(reader.fields["general.architecture"].contents())
    window = reader.fields.get(f"{arch}.attention.sliding_window")
    num_layers = int(reader.fields[f"{arch}.block_count"].contents())
    config = {"sliding_window": int(window.contents()) if window is not None else None, "model_type": arch}
    return layer_windows(config, num_layers)


def spec_from_gguf(path: Path) -> ModelSpec:
    """Read shape and exact parameter count from a GGUF file's metadata (weights are served dequantized)."""
    from gguf import GGUFReader  # only this path needs the gguf package

    reader = GGUFReader(str(path))

    def field(key: str) -> Any:
        found = reader.fields.get(key)
        if found is None:
            raise ValueError(f"{path}: GGUF metadata has no {key!r}")
        return found.contents()

    arch = field("general.architecture")
    heads = int(field(f"{arch}.attention.head_count"))
    hidden = int(field(f"{arch}.embedding_length"))
    vocab_field = reader.fields.get(f"{arch}.vocab_size")
    vocab = int(vocab_field.contents()) if vocab_field is not None else len(field("tokenizer.ggml.tokens"))
    tensor_names = {t.name for t in reader.tensors}
    key_length = reader.fields.get(f"{arch}.attention.key_length")  # qwen3: its own head size

    def optional(key: str) -> int:
        found = reader.fields.get(key)
        return 0 if found is None else int(found.contents())

    num_layers = int(field(f"{arch}.block_count"))
    num_experts = optional(f"{arch}.expert_count")
    # Mixtral (llama) keeps the expert width in feed_forward_length; qwen2moe / qwen3moe in its own key.
    width = optional(f"{arch}.expert_feed_forward_length") if num_experts else 0
    return ModelSpec(
        name=path.stem,
        hidden_size=hidden,
        intermediate_size=width or int(field(f"{arch}.feed_forward_length")),
        num_layers=num_layers,
        num_attention_heads=heads,
        num_kv_heads=int(field(f"{arch}.attention.head_count_kv")),
        head_dim=int(key_length.contents()) if key_length is not None else hidden // heads,
        vocab_size=vocab,
        max_position_embeddings=int(field(f"{arch}.context_length")),
        tie_word_embeddings="output.weight" not in tensor_names,
        num_experts=max(num_experts, 1),
        experts_per_token=optional(f"{arch}.expert_used_count") or 1,
        shared_expert_intermediate_size=optional(f"{arch}.expert_shared_feed_forward_length"),
        exact_param_count=sum(int(t.n_elements) for t in reader.tensors),
        layer_windows=gguf_layer_windows(reader),
    )


@cache
def catalogue() -> dict[str, dict[str, Any]]:
    text = resources.files("pagedserve.kube").joinpath("data/models.yaml").read_text()
    return yaml.safe_load(text)


def catalogue_names() -> list[str]:
    return sorted(catalogue())


def _catalogue_entry(name: str) -> tuple[str, dict[str, Any]] | None:
    wanted = name.lower()
    for key, entry in catalogue().items():
        names = [key, entry["id"], *entry.get("aliases", [])]
        if wanted in (n.lower() for n in names):
            return key, entry
    return None


def load_model_spec(model: str) -> tuple[ModelSpec, str]:
    """Resolve MODEL: a folder with config.json, a config.json file, a .gguf file, or a catalogue name.

    Returns the spec and the name to serve it under (the Hugging Face id for catalogue models).
    """
    path = Path(model).expanduser()
    if path.is_dir():
        config_path = path / "config.json"
        if not config_path.is_file():
            raise ValueError(f"model folder {path} has no config.json")
        return _spec_from_file(config_path, name=path.name), str(path)
    if path.is_file():
        if path.suffix == ".gguf":
            return spec_from_gguf(path), str(path)
        return _spec_from_file(path, name=path.parent.name or path.stem), str(path.parent)
    found = _catalogue_entry(model)
    if found is None:
        raise ValueError(
            f"model {model!r} is neither a local folder/config.json/.gguf nor in the built-in catalogue "
            f"({', '.join(catalogue_names())})"
        )
    key, entry = found
    return spec_from_config(entry["config"], name=key, source=f"catalogue entry {key}"), entry["id"]


def _spec_from_file(config_path: Path, name: str) -> ModelSpec:
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{config_path} is not valid JSON: {exc}") from None
    return spec_from_config(config, name=name, source=str(config_path))
