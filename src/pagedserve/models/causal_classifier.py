"""Decoder models with a classification head (vLLM's `...ForSequenceClassification` for Llama, Mistral, Qwen2 and
Qwen3): reward and classifier checkpoints (`score.weight`, one row a label, no bias) and LLM rerankers.

The head reads the last token's final hidden state (transformers' rule for these classes, vLLM's LAST pooling), so
prompts keep chunked prefill and prefix caching. Qwen3-Reranker ships as a causal LM and is served as vLLM serves it,
with `--hf-overrides '{"architectures": ["Qwen3ForSequenceClassification"], "classifier_from_token": ["no", "yes"],
"is_original_qwen3_reranker": true}'`: its LM-head rows for "yes" minus "no" become a one-label head, whose sigmoid
is the model's softmax probability of "yes" against "no" (vLLM's from_2_way_softmax). `classifier_from_token`
without that flag takes those tokens' LM-head rows as they are, one label a token (vLLM's rule).
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from pagedserve.attention.backend import AttentionBackend
from pagedserve.models.llama import (
    LlamaForCausalLM,
    MistralForCausalLM,
    Qwen2ForCausalLM,
    Qwen3ForCausalLM,
)

CLASSIFIER_TOKEN_IDS = "classifier_token_ids"
"""Config attribute `resolve_classifier_tokens` sets: the vocabulary ids of `classifier_from_token`."""


def resolve_classifier_tokens(config: Any, model_path: pathlib.Path) -> None:
    """For a config with vLLM's `classifier_from_token`: the tokens' ids (from the folder's tokenizer.json) and the
    label count the head will have (1 for Qwen3-Reranker's two-way conversion)."""
    tokens = getattr(config, "classifier_from_token", None)
    if tokens is None:
        return
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise ValueError(f"classifier_from_token must be a list of token strings, got {tokens!r}")
    two_way = bool(getattr(config, "is_original_qwen3_reranker", False))
    if two_way and len(tokens) != 2:
        raise ValueError(
            f"is_original_qwen3_reranker: classifier_from_token must name two tokens (false, true), got {tokens}"
        )
    tokenizer_file = model_path / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise ValueError(f"classifier_from_token needs the model folder's tokenizer.json ({tokenizer_file})")
    import tokenizers

    vocab = tokenizers.Tokenizer.from_file(str(tokenizer_file))
    ids = [vocab.token_to_id(token) for token in tokens]
    missing = [token for token, i in zip(tokens, ids) if i is None]
    if missing:
        raise ValueError(f"classifier_from_token: {missing} are not tokens of the model's vocabulary")
    setattr(config, CLASSIFIER_TOKEN_IDS, ids)
    config.num_labels = 1 if two_way else len(ids)


def _score_rows(config: Any, lm_head: torch.Tensor) -> torch.Tensor:
    """The head made from the LM head's rows for classifier_from_token: true minus false for the two-way
    conversion, else the rows themselves."""
    ids = getattr(config, CLASSIFIER_TOKEN_IDS)
    rows = lm_head[ids].float()
    if getattr(config, "is_original_qwen3_reranker", False):
        return (rows[1] - rows[0]).unsqueeze(0)
    return rows


def _sequence_classifier(base: type[LlamaForCausalLM]) -> type[LlamaForCausalLM]:
    class ForSequenceClassification(base):  # type: ignore[valid-type, misc]
        is_classifier = True
        """Serves /score, /rerank and /classify (pooling runner): `classify` instead of an LM head."""

        def __init__(self, config: Any, backend: AttentionBackend) -> None:
            super().__init__(config, backend)
            if getattr(config, "classifier_from_token", None) is not None and not hasattr(
                config, CLASSIFIER_TOKEN_IDS
            ):
                raise ValueError("classifier_from_token: the token ids were not resolved from the tokenizer")
            del self.lm_head  # the head is `score`; the checkpoint's lm_head (if any) only feeds it
            self.tie_word_embeddings = False
            self.score = nn.Linear(config.hidden_size, int(config.num_labels), bias=False)

        def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
            raise ValueError(f"{type(self).__name__} has no language-model head: it serves scores only")

        def classify(self, last_states: torch.Tensor) -> torch.Tensor:
            """[n, hidden] last-token states -> [n, num_labels] logits."""
            return self.score(last_states)

        def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
            from_tokens = hasattr(self.config, CLASSIFIER_TOKEN_IDS)
            tied = bool(getattr(self.config, "tie_word_embeddings", False))
            head_rows: list[torch.Tensor] = []

            def decoder_weights() -> Iterator[tuple[str, torch.Tensor]]:
                for name, tensor in weights:
                    if from_tokens and name == ("model.embed_tokens.weight" if tied else "lm_head.weight"):
                        if not isinstance(tensor, torch.Tensor):
                            raise ValueError(f"{name}: a quantized LM head cannot make a classifier head")
                        head_rows.append(_score_rows(self.config, tensor))
                    elif name == "score.weight":
                        head_rows.append(tensor.float())
                    if name not in ("score.weight", "lm_head.weight"):  # the decoder's own tensors
                        yield name, tensor

            loaded = super().load_weights(decoder_weights())
            if len(head_rows) != 1:
                raise ValueError(
                    f"{type(self).__name__}: expected one head, score.weight or (with classifier_from_token) the "
                    f"LM head's rows; found {len(head_rows)}"
                )
            if head_rows[0].shape != self.score.weight.shape:
                raise ValueError(
                    f"score.weight: shape {tuple(head_rows[0].shape)} does not match {tuple(self.score.weight.shape)}"
                    " (num_labels x hidden_size)"
                )
            self.score.weight.data.copy_(head_rows[0])
            return loaded | {"score.weight"}

    ForSequenceClassification.__name__ = base.__name__.replace("ForCausalLM", "ForSequenceClassification")
    ForSequenceClassification.__qualname__ = ForSequenceClassification.__name__
    return ForSequenceClassification


CAUSAL_CLASSIFIERS: dict[str, type[nn.Module]] = {
    base.__name__.replace("ForCausalLM", "ForSequenceClassification"): _sequence_classifier(base)
    for base in (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM)
}
