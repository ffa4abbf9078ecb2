"""Tiny random-weight Hugging Face checkpoints with the bundled model's tokenizer, written as transformers writes them
(tests that serve a real folder: embeddings, Hub-cache layouts)."""

from __future__ import annotations

import pathlib
from typing import Any

import torch
import transformers


def bundled_tokenizer() -> Any:
    from pagedserve.models.bundled import bundled_model_path

    path = bundled_model_path()
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def write_tiny_qwen(folder: pathlib.Path, version: int = 3, max_positions: int = 2048, seed: int = 0) -> Any:
    """A 2-layer Qwen2 or Qwen3 (its own head size, q/k norms) with tied embeddings; returns the float32 model."""
    tokenizer = bundled_tokenizer()
    common = dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
    )  # fmt: skip
    if version == 3:
        config = transformers.Qwen3Config(**common, head_dim=32)
        config.architectures = ["Qwen3ForCausalLM"]
    else:
        config = transformers.Qwen2Config(**common)
        config.architectures = ["Qwen2ForCausalLM"]
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def write_tiny_moe(folder: pathlib.Path, kind: str) -> Any:
    """A 2-layer Mixtral (4 experts, top 2) or Qwen3-MoE (6 experts of width 40, top 2, renormalized) with tied
    embeddings, in transformers' Hub layout (each expert's matrices apart); returns the float32 model."""
    tokenizer = bundled_tokenizer()
    common = dict(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, initializer_range=0.1,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
    )  # fmt: skip
    if kind == "mixtral":
        config = transformers.MixtralConfig(
            **common, intermediate_size=48, num_local_experts=4, num_experts_per_tok=2
        )
    else:  # 6 experts of width 40: at TP=2 each rank keeps 20 rows of every expert
        config = transformers.Qwen3MoeConfig(
            **common, head_dim=32, intermediate_size=96, moe_intermediate_size=40, num_experts=6,
            num_experts_per_tok=2, norm_topk_prob=True,
        )  # fmt: skip
    torch.manual_seed(5)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model
