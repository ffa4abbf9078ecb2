"""One Llama-family decoder: Llama 2/3 (llama3 rope scaling), Mistral, Qwen2 (q/k/v bias), Qwen3 (per-head q/k
RMSNorm before the rotation), SmolLM2; LongRoPE and partial rotary for Phi-3.5 / Phi-4-mini (models/phi3.py).

Depends on layers/ and the attention interface only. Parameter names follow Hugging Face after merging q|k|v and
gate|up, so `load_weights` maps checkpoint names onto shards.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch
from torch import nn

from pagedserve.attention.backend import AttentionBackend, AttentionMetadata
from pagedserve.distributed import parallel_state
from pagedserve.distributed.partition import head_shard
from pagedserve.layers.embedding import LMHead, VocabEmbedding
from pagedserve.layers.layernorm import RMSNorm, norm_q_k_heads
from pagedserve.layers.linear import MergedLinear
from pagedserve.layers.mlp import GatedMLP
from pagedserve.layers.rope_scaling import needs_resolving, resolve_rope
from pagedserve.layers.rotary import RotaryEmbedding, StepRotary
from pagedserve.models.multimodal import language_model_weights
from pagedserve.models.param_copy import copy_checkpoint_tensor

# checkpoint name fragment -> (merged parameter fragment, shard id)
_STACKED = {
    ".q_proj.": (".qkv_proj.", "q"),
    ".k_proj.": (".qkv_proj.", "k"),
    ".v_proj.": (".qkv_proj.", "v"),
    ".gate_proj.": (".gate_up_proj.", "gate"),
    ".up_proj.": (".gate_up_proj.", "up"),
}


def rope_settings(config: Any) -> tuple[float, dict[str, Any] | None]:
    """(rope theta, scaling dict): transformers 5 keeps both in `rope_parameters`, older ones apart."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    theta = params.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0
    return float(theta), params or None


def attention_window(config: Any, layer_index: int) -> int | None:
    """The sliding window of one layer's attention, None for full attention: Mistral's `sliding_window` on every
    layer; with `layer_types` (Gemma 3) only on "sliding_attention" layers. Qwen's use_sliding_window is refused
    unless --disable-sliding-window drops every window (engine/core.py)."""
    if getattr(config, "use_sliding_window", True) is False:
        return None  # Qwen2/3 keep a sliding_window value that means nothing while this is off
    window = getattr(config, "sliding_window", None)
    if not isinstance(window, int) or window <= 0:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and layer_types[layer_index] != "sliding_attention":
        return None
    return window


def smallest_attention_window(config: Any) -> int | None:
    """The smallest window of any layer, None when every layer attends to its whole context: what
    --disable-sliding-window caps max_model_len at."""
    windows = [attention_window(config, i) for i in range(config.num_hidden_layers)]
    return min((w for w in windows if w is not None), default=None)


def without_sliding_window(config: Any) -> Any:
    """A copy of `config` whose layers all attend to their whole context (--disable-sliding-window); Gemma 3's
    layer_types stay, since they also pick each layer's rotary table."""
    config = copy.copy(config)
    config.sliding_window = None
    return config


def config_for_serving(config: Any, table_positions: int, max_model_len: int) -> Any:
    """`config` as the model is built to serve: rotary tables of `table_positions` rows (what a step reaches, not
    the model's whole context), LongRoPE's and YaRN's parameters fixed from the checkpoint first, LongRoPE's factor
    set chosen for max_model_len (layers/rope_scaling.py). A copy when anything changes; the engine's config stays
    as read."""
    _, scaling = rope_settings(config)
    checkpoint_positions = getattr(config, "max_position_embeddings", table_positions)
    resolve = needs_resolving(scaling)
    if table_positions == checkpoint_positions and not resolve:
        return config
    config = copy.copy(config)
    config.max_position_embeddings = table_positions
    if resolve:
        config.rope_parameters = resolve_rope(scaling, checkpoint_positions, max_model_len)
    return config


def make_rotary(config: Any, head_dim: int) -> RotaryEmbedding:
    """The model's rotary table: over the first partial_rotary_factor of each head (Phi-4-mini: 0.75); LongRoPE and
    YaRN resolved for the whole context when the config was not made by `config_for_serving` (a model built alone)."""
    theta, scaling = rope_settings(config)
    if needs_resolving(scaling):
        positions = config.max_position_embeddings
        scaling = resolve_rope(scaling, positions, positions)
    return RotaryEmbedding(
        head_dim, config.max_position_embeddings, theta, scaling, rotary_dims(config, head_dim)
    )


def rotary_dims(config: Any, head_dim: int) -> int:
    """The dims of each head the rotation covers: the first partial_rotary_factor of them (Phi-4-mini 0.75, GLM
    0.5), all of them by default."""
    _, scaling = rope_settings(config)
    partial = (
        (scaling or {}).get("partial_rotary_factor") or getattr(config, "partial_rotary_factor", None) or 1.0
    )
    return int(head_dim * float(partial))


class AttentionShape(NamedTuple):
    """What differs between the family's attention blocks."""

    qkv_bias: bool
    o_bias: bool
    qk_norm: bool = False  # Qwen3: RMSNorm over each q and k head (weights of head_dim) before the rotation


class LlamaAttention(nn.Module):
    def __init__(
        self, config: Any, backend: AttentionBackend, shape: AttentionShape, layer_index: int = 0
    ) -> None:
        super().__init__()
        total_heads = config.num_attention_heads
        total_kv_heads = getattr(config, "num_key_value_heads", None) or total_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // total_heads
        self.scale = self.head_dim**-0.5
        # This rank's heads (all of them without tensor parallelism): distributed/partition.py.
        tp = parallel_state.get_tp()
        shard = head_shard(total_heads, total_kv_heads, tp.rank, tp.size)
        self.num_heads, self.num_kv_heads = shard.num_q_heads, shard.num_kv_heads
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q_rows = (shard.first_q_head * self.head_dim, q_size)
        kv_rows = (shard.first_kv_head * self.head_dim, kv_size)
        self.qkv_proj = MergedLinear(
            config.hidden_size,
            {"q": q_size, "k": kv_size, "v": kv_size},
            bias=shape.qkv_bias,
            part_slices={"q": q_rows, "k": kv_rows, "v": kv_rows},
        )
        self.o_proj = MergedLinear(
            total_heads * self.head_dim, {"o": config.hidden_size}, bias=shape.o_bias, input_slice=q_rows
        )
        self.q_norm = self.k_norm = None
        if shape.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.backend = backend
        self.sliding_window = attention_window(config, layer_index)
        self.softcap: float | None = None  # Gemma 2's attention logit soft-capping (models/gemma2.py)
        self.use_rope = True  # SmolLM3 leaves every fourth layer unrotated (models/smollm3.py)
        self.q_size, self.kv_size = q_size, kv_size

    def q_k_heads(self, qkv: torch.Tensor) -> torch.Tensor:
        """[T, Hq + Hkv, D] q and k heads of the merged projection, normed where the model norms them (Qwen3: each
        head; OLMo 2 overrides this), before the rotation."""
        # q and k heads sit side by side in the merged projection: rotate them in one pass.
        qk = qkv[:, : self.q_size + self.kv_size].view(
            qkv.shape[0], self.num_heads + self.num_kv_heads, self.head_dim
        )
        if self.q_norm is not None:
            qk = norm_q_k_heads(qk, self.q_norm, self.k_norm, self.num_heads)
        return qk

    def forward(self, rope: StepRotary, hidden, kv_cache, metadata: AttentionMetadata) -> torch.Tensor:
        tokens = hidden.shape[0]
        qkv = self.qkv_proj(hidden)
        qk = self.q_k_heads(qkv)
        if self.use_rope:
            qk = rope.rotate(qk)
        q, k = qk.split((self.num_heads, self.num_kv_heads), dim=1)
        v = qkv[:, self.q_size + self.kv_size :].reshape(tokens, self.num_kv_heads, self.head_dim)
        out = self.backend.forward(
            q, k, v, kv_cache[0], kv_cache[1], metadata, self.scale, self.sliding_window, self.softcap
        )
        return self.o_proj(out.reshape(tokens, -1))


class LlamaMLP(GatedMLP):
    def __init__(self, config: Any) -> None:
        super().__init__(
            config.hidden_size, config.intermediate_size, bias=getattr(config, "mlp_bias", False)
        )


MlpFactory = Callable[[Any, int], nn.Module]
"""(config, layer index) -> that layer's feed-forward block: LlamaMLP, or a mixture of experts (models/moe.py)."""


def dense_mlp(config: Any, layer_index: int) -> nn.Module:
    return LlamaMLP(config)


class LlamaDecoderLayer(nn.Module):
    def __init__(
        self,
        config: Any,
        backend: AttentionBackend,
        shape: AttentionShape,
        mlp: nn.Module,
        layer_index: int,
        residual_multiplier: float | None = None,
    ) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(config, backend, shape, layer_index)
        self.mlp = mlp
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        # Granite: each block's output is scaled before it joins the residual stream (models/granite.py).
        self.residual_multiplier = residual_multiplier

    def forward(self, rope: StepRotary, hidden, residual, kv_cache, metadata):
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(rope, hidden, kv_cache, metadata)
        if self.residual_multiplier is not None:
            hidden = hidden * self.residual_multiplier
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        hidden = self.mlp(hidden)
        if self.residual_multiplier is not None:
            hidden = hidden * self.residual_multiplier
        return hidden, residual


class LlamaModel(nn.Module):
    layer_class: type[LlamaDecoderLayer] = LlamaDecoderLayer
    """The decoder layer (GLM-4 adds norms around its blocks: models/glm.py)."""

    def __init__(
        self,
        config: Any,
        backend: AttentionBackend,
        shape: AttentionShape,
        make_mlp: MlpFactory = dense_mlp,
        residual_multiplier: float | None = None,
    ) -> None:
        super().__init__()
        self.embed_tokens = VocabEmbedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            self.layer_class(config, backend, shape, make_mlp(config, index), index, residual_multiplier)
            for index in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        num_heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_heads
        # One table for all layers; a step's positions are looked up once (for_step).
        self.rotary = make_rotary(config, head_dim)

    def forward(self, input_ids, positions, kv_caches, metadata, inputs_embeds=None) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        rope = self.rotary.for_step(positions, hidden.dtype)
        residual = None
        for i, (layer, kv_cache) in enumerate(zip(self.layers, kv_caches)):
            hidden, residual = layer(rope, hidden, residual, kv_cache, metadata.for_layer(i))
        hidden, _ = self.norm(hidden, residual)
        return hidden


class LlamaForCausalLM(nn.Module):
    stacked_params: dict[str, tuple[str, str | None]] = _STACKED
    """Checkpoint name fragment -> (merged parameter fragment, part): also how a LoRA adapter's layers map."""
    renamed_params: dict[str, str] = {}
    """Checkpoint name fragment -> ours, applied before `stacked_params` (Mixtral's block_sparse_moe is our mlp)."""
    is_moe = False
    """A mixture-of-experts model (models/moe.py): no LoRA; decode graphs only where every block decodes through
    the C kernel (GGUF experts, layers/moe.py)."""
    make_mlp: MlpFactory = staticmethod(dense_mlp)

    @staticmethod
    def attention_shape(config: Any) -> AttentionShape:
        bias = bool(getattr(config, "attention_bias", False))
        return AttentionShape(bias, bias)

    def make_model(self, config: Any, backend: AttentionBackend) -> nn.Module:
        """The decoder stack under the LM head (Gemma 3's differs: models/gemma3.py)."""
        return LlamaModel(config, backend, self.attention_shape(config), self.make_mlp)

    def __init__(self, config: Any, backend: AttentionBackend) -> None:
        super().__init__()
        self.config = config
        self.model = self.make_model(config, backend)
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        self.lm_head = LMHead(config.vocab_size, config.hidden_size)
        if self.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The token embeddings that `forward(inputs_embeds=...)` takes (vLLM's split of the two)."""
        return self.model.embed_tokens(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        metadata: AttentionMetadata,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.model(input_ids, positions, kv_caches, metadata, inputs_embeds)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    def compute_local_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """This rank's vocabulary slice of the logits; `gather_logits` joins the slices (compute_logits = both)."""
        return self.lm_head.local_logits(hidden)

    def gather_logits(self, local_logits: torch.Tensor) -> torch.Tensor:
        return self.lm_head.gather(local_logits)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Copy checkpoint tensors into parameters; returns the parameter names that were loaded."""
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            if "rotary_emb.inv_freq" in name:
                continue
            if name == "lm_head.weight" and self.tie_word_embeddings:
                continue
            for fragment, ours in self.renamed_params.items():
                name = name.replace(fragment, ours)
            shard_id = None
            for fragment, (merged, shard) in self.stacked_params.items():
                if fragment in name:
                    name, shard_id = name.replace(fragment, merged), shard
                    break
            param = params.get(name)
            if param is None:
                raise ValueError(
                    f"checkpoint tensor {name!r} has no matching parameter in {type(self).__name__}"
                )
            copy_checkpoint_tensor(param, name, tensor, shard_id)
            loaded.add(name)
        if self.tie_word_embeddings:
            self.lm_head.tie_to(self.model.embed_tokens)
        return loaded


class Qwen2ForCausalLM(LlamaForCausalLM):
    @staticmethod
    def attention_shape(config: Any) -> AttentionShape:
        return AttentionShape(qkv_bias=True, o_bias=False)


class Qwen3ForCausalLM(LlamaForCausalLM):
    @staticmethod
    def attention_shape(config: Any) -> AttentionShape:
        bias = bool(getattr(config, "attention_bias", False))
        return AttentionShape(bias, bias, qk_norm=True)


class MistralForCausalLM(LlamaForCausalLM):
    pass


class Mistral3ForConditionalGeneration(MistralForCausalLM):
    """Mistral Small 3.1 / 3.2 served text-only: built from the checkpoint's `text_config` (a Mistral decoder,
    models/hf_folder.py), the Pixtral vision tower and projector skipped (models/multimodal.py)."""

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return super().load_weights(language_model_weights(weights))
