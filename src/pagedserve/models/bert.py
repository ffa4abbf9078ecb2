"""BERT-family encoders served as embedding models (--runner pooling): BERT (all-MiniLM, bge-*-en, e5-*-v2, gte-base)
and XLM-RoBERTa / RoBERTa (multilingual-e5, bge-m3); and as cross-encoders that score a (query, document) pair with
their sequence-classification head (ms-marco-MiniLM, bge-reranker-base / large / v2-m3): /score and /rerank.

Post-norm layers (x = LayerNorm(x + attention(x)); x = LayerNorm(x + dense(gelu(dense(x))))), learned absolute
positions (RoBERTa's counted from pad_token_id + 1), token types (0, and 1 over a pair's second text), bidirectional
attention over each whole prompt (attention/encoder.py). Parameter names are transformers' `BertModel` / `XLMRobertaModel` ones, with
query|key|value merged. The checkpoint's pooler (dense + tanh, for next-sentence prediction) and masked-LM head are not
loaded: embeddings pool the last layer's hidden states (layers/pooler.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pagedserve.attention.backend import AttentionBackend, AttentionMetadata
from pagedserve.attention.encoder import encoder_attention
from pagedserve.layers.linear import MergedLinear
from pagedserve.models.param_copy import copy_checkpoint_tensor

_ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}
_MERGED = {".query.": (".qkv_proj.", "q"), ".key.": (".qkv_proj.", "k"), ".value.": (".qkv_proj.", "v")}
# Checkpoint parts a model does not run: masked-LM heads, and cached position ids.
_SKIPPED_PREFIXES = ("cls.", "lm_head.")
_SKIPPED_SUFFIXES = ("position_ids",)
# BertForMaskedLM and friends prefix the encoder's names with the model type.
_MODEL_PREFIXES = ("bert.", "roberta.")


def check_encoder_config(config: Any) -> None:
    """ValueError naming what this implementation does not run."""
    act = getattr(config, "hidden_act", "gelu")
    if act not in _ACTIVATIONS:
        raise ValueError(
            f"hidden_act {act!r} is not supported for {config.model_type} (supported: {', '.join(_ACTIVATIONS)})"
        )
    kind = getattr(config, "position_embedding_type", "absolute") or "absolute"
    if kind != "absolute":
        raise ValueError(f"position_embedding_type {kind!r} is not supported (only absolute positions)")
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        raise ValueError(
            f"{config.model_type} as a decoder (is_decoder, add_cross_attention) is not supported"
        )


def position_offset(config: Any) -> int:
    """Where positions start in the embedding table: RoBERTa's count from pad_token_id + 1, BERT's from 0."""
    if config.model_type in ("roberta", "xlm-roberta"):
        return int(config.pad_token_id) + 1
    return 0


class BertEmbeddings(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.offset = position_offset(config)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        hidden = self.word_embeddings(input_ids) + self.position_embeddings(positions + self.offset)
        if token_type_ids is None:  # one text a prompt: every token of type 0
            return self.LayerNorm(hidden + self.token_type_embeddings.weight[0])
        return self.LayerNorm(hidden + self.token_type_embeddings(token_type_ids))


class BertSelfAttention(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.num_heads
        size = self.num_heads * self.head_dim
        self.qkv_proj = MergedLinear(config.hidden_size, {"q": size, "k": size, "v": size}, bias=True)

    def forward(self, hidden: torch.Tensor, metadata: AttentionMetadata) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden).view(hidden.shape[0], 3, self.num_heads, self.head_dim).unbind(1)
        out = encoder_attention(q, k, v, metadata, self.head_dim**-0.5)
        return out.reshape(hidden.shape[0], -1)


class DenseNorm(nn.Module):
    """BERT's output blocks: LayerNorm(residual + dense(x))."""

    def __init__(self, input_size: int, config: Any) -> None:
        super().__init__()
        self.dense = MergedLinear(input_size, {"out": config.hidden_size}, bias=True)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = DenseNorm(config.hidden_size, config)


class BertIntermediate(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.dense = MergedLinear(config.hidden_size, {"out": config.intermediate_size}, bias=True)
        self.act = _ACTIVATIONS[getattr(config, "hidden_act", "gelu")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class BertLayer(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = DenseNorm(config.intermediate_size, config)

    def forward(self, hidden: torch.Tensor, metadata: AttentionMetadata) -> torch.Tensor:
        hidden = self.attention.output(self.attention.self(hidden, metadata), hidden)
        return self.output(self.intermediate(hidden), hidden)


class BertEncoder(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))


class BertModel(nn.Module):
    """The encoder stack; `forward` gives each token's last hidden state (what the pooler averages or picks)."""

    is_encoder = True
    """Bidirectional over whole prompts: pooling only, no KV cache, no chunked prefill or prefix caching."""
    is_classifier = False
    """A sequence classifier: its head (`classify`) gives one probability a label (one label: a pair's score)
    instead of an embedding."""
    skipped_prefixes: tuple[str, ...] = ("pooler.", *_SKIPPED_PREFIXES)
    """Checkpoint names not loaded (an embedder pools hidden states; the next-sentence pooler is not run)."""

    def __init__(self, config: Any, backend: AttentionBackend | None = None) -> None:
        super().__init__()
        check_encoder_config(config)
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        metadata: AttentionMetadata,
        inputs_embeds: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if inputs_embeds is not None:
            raise ValueError("an encoder model takes token ids, not prompt embeddings")
        hidden = self.embeddings(input_ids, positions, token_type_ids)
        for layer in self.encoder.layer:
            hidden = layer(hidden, metadata)
        return hidden

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        raise ValueError(f"{type(self).__name__} has no language-model head: it serves embeddings only")

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            for prefix in _MODEL_PREFIXES:
                name = name.removeprefix(prefix)
            if name.startswith(self.skipped_prefixes) or name.endswith(_SKIPPED_SUFFIXES):
                continue
            shard_id = None
            for fragment, (merged, shard) in _MERGED.items():
                if fragment in name:
                    name, shard_id = name.replace(fragment, merged), shard
                    break
            # transformers 4 saved some LayerNorms as gamma / beta.
            name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace(
                "LayerNorm.beta", "LayerNorm.bias"
            )
            param = params.get(name)
            if param is None:
                raise ValueError(
                    f"checkpoint tensor {name!r} has no matching parameter in {type(self).__name__}"
                )
            if not isinstance(tensor, torch.Tensor):
                raise ValueError(f"{name}: quantized encoder checkpoints are not supported")
            copy_checkpoint_tensor(param, name, tensor, shard_id)
            loaded.add(name)
        return loaded


class XLMRobertaModel(BertModel):
    pass


class BertForSequenceClassification(BertModel):
    """A BERT sequence classifier: the next-sentence pooler (dense + tanh) on the CLS state, then one logit a label
    (one label: a cross-encoder's score)."""

    is_classifier = True
    skipped_prefixes = _SKIPPED_PREFIXES

    def __init__(self, config: Any, backend: AttentionBackend | None = None) -> None:
        super().__init__(config, backend)
        self.pooler = nn.Module()
        self.pooler.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def classify(self, cls_states: torch.Tensor) -> torch.Tensor:
        """[n, hidden] CLS states -> [n, num_labels] logits."""
        return self.classifier(torch.tanh(self.pooler.dense(cls_states)))


class XLMRobertaForSequenceClassification(BertModel):
    """A RoBERTa / XLM-R sequence classifier (bge-reranker with one label): its head (dense + tanh, out_proj) on
    <s>."""

    is_classifier = True
    skipped_prefixes = _SKIPPED_PREFIXES

    def __init__(self, config: Any, backend: AttentionBackend | None = None) -> None:
        super().__init__(config, backend)
        self.classifier = nn.Module()
        self.classifier.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.classifier.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def classify(self, cls_states: torch.Tensor) -> torch.Tensor:
        """[n, hidden] <s> states -> [n, num_labels] logits."""
        return self.classifier.out_proj(torch.tanh(self.classifier.dense(cls_states)))


ENCODER_MODELS: dict[str, type[nn.Module]] = {
    "BertModel": BertModel,
    "RobertaModel": XLMRobertaModel,
    "XLMRobertaModel": XLMRobertaModel,
    "BertForSequenceClassification": BertForSequenceClassification,
    "RobertaForSequenceClassification": XLMRobertaForSequenceClassification,
    "XLMRobertaForSequenceClassification": XLMRobertaForSequenceClassification,
}
