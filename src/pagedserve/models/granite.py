"""IBM Granite 3.x (`GraniteForCausalLM`: granite-3.x-2b / 8b base and instruct): the Llama decoder with four
scalars from its config, each applied where transformers applies it: token embeddings times
`embedding_multiplier`, attention scaled by `attention_multiplier` (not head_dim^-0.5), every attention and MLP
output times `residual_multiplier` before it joins the residual stream, and the logits divided by `logits_scaling`.

The embedding and logit scalings sit outside the layers (`embed_input_ids`, `gather_logits`), where CPU decode
graphs leave them; the residual multiplier is a PyTorch multiply inside each layer, so decode steps run eager
(at 2B+ the matrix products dwarf that step's Python).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagedserve.attention.backend import AttentionBackend, AttentionMetadata
from pagedserve.models.llama import LlamaForCausalLM, LlamaModel


class GraniteForCausalLM(LlamaForCausalLM):
    def make_model(self, config: Any, backend: AttentionBackend) -> nn.Module:
        return LlamaModel(
            config, backend, self.attention_shape(config), self.make_mlp, float(config.residual_multiplier)
        )

    def __init__(self, config: Any, backend: AttentionBackend) -> None:
        super().__init__(config, backend)
        self.embedding_multiplier = float(config.embedding_multiplier)
        self.logits_scaling = float(config.logits_scaling)
        for layer in self.model.layers:
            layer.self_attn.scale = float(config.attention_multiplier)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.model.embed_tokens(input_ids)
        return hidden * self.embedding_multiplier  # in the activations' dtype, as transformers multiplies

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        metadata: AttentionMetadata,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.embed_input_ids(input_ids)
        return self.model(None, positions, kv_caches, metadata, inputs_embeds)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return super().compute_logits(hidden) / self.logits_scaling

    def gather_logits(self, local_logits: torch.Tensor) -> torch.Tensor:
        return super().gather_logits(local_logits) / self.logits_scaling
