"""config.architectures[0] -> model class."""

from __future__ import annotations

from typing import Any

from torch import nn

from pagedserve.models.bert import ENCODER_MODELS
from pagedserve.models.causal_classifier import CAUSAL_CLASSIFIERS
from pagedserve.models.cohere import COHERE_MODELS
from pagedserve.models.gemma2 import Gemma2ForCausalLM
from pagedserve.models.gemma3 import GEMMA3_MODELS
from pagedserve.models.glm import GLM_MODELS
from pagedserve.models.granite import GraniteForCausalLM
from pagedserve.models.llama import (
    LlamaForCausalLM,
    Mistral3ForConditionalGeneration,
    MistralForCausalLM,
    Qwen2ForCausalLM,
    Qwen3ForCausalLM,
)
from pagedserve.models.moe import MOE_MODELS
from pagedserve.models.olmo2 import Olmo2ForCausalLM
from pagedserve.models.phi3 import Phi3ForCausalLM
from pagedserve.models.smollm3 import SmolLM3ForCausalLM

MODEL_REGISTRY: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": MistralForCausalLM,
    "Mistral3ForConditionalGeneration": Mistral3ForConditionalGeneration,
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
    "Phi3ForCausalLM": Phi3ForCausalLM,
    "Gemma2ForCausalLM": Gemma2ForCausalLM,
    "GraniteForCausalLM": GraniteForCausalLM,
    "SmolLM3ForCausalLM": SmolLM3ForCausalLM,
    "Olmo2ForCausalLM": Olmo2ForCausalLM,
    **GLM_MODELS,
    **COHERE_MODELS,
    **MOE_MODELS,
    **GEMMA3_MODELS,
    **ENCODER_MODELS,
    **CAUSAL_CLASSIFIERS,
}


def resolve_model_class(config: Any) -> type[nn.Module]:
    architectures = getattr(config, "architectures", None) or []
    for name in architectures:
        if name in MODEL_REGISTRY:
            return MODEL_REGISTRY[name]
    raise ValueError(
        f"model architecture {architectures or '(none)'} is not supported; supported: {', '.join(MODEL_REGISTRY)}"
    )
