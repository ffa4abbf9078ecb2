"""SmolLM3 (`SmolLM3ForCausalLM`, Hugging Face's 3B): the Llama decoder where the layers `no_rope_layers` marks 0
(every fourth, the config's default) attend without rotary embeddings (NoPE); the others rotate as Llama's.
"""

from __future__ import annotations

from typing import Any

from pagedserve.attention.backend import AttentionBackend
from pagedserve.models.llama import LlamaForCausalLM


class SmolLM3ForCausalLM(LlamaForCausalLM):
    def __init__(self, config: Any, backend: AttentionBackend) -> None:
        super().__init__(config, backend)
        flags = list(getattr(config, "no_rope_layers", None) or [1] * config.num_hidden_layers)
        if len(flags) != config.num_hidden_layers:
            raise ValueError(
                f"SmolLM3 config: no_rope_layers has {len(flags)} entries for {config.num_hidden_layers} layers"
            )
        for layer, uses_rope in zip(self.model.layers, flags):
            layer.self_attn.use_rope = bool(uses_rope)
