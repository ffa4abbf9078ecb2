"""Mistral Small 3.1 / 3.2 (`Mistral3ForConditionalGeneration`) served text-only: a tiny random checkpoint saved by
transformers (a Mistral decoder with an untied LM head beside a 1-layer Pixtral tower and projector) loads its
text_config and language-model tensors only, and gives transformers' text logits (float32, 1e-4) over whole prompts,
chunked prefills and decode steps."""

from __future__ import annotations

import pytest
import torch
import transformers
from model_steps import load_model, logits_of


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mistral3")
    text = transformers.MistralConfig(
        vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, max_position_embeddings=256, sliding_window=None,
        rope_theta=1e9, initializer_range=0.2, tie_word_embeddings=False,
    )  # fmt: skip
    vision = transformers.PixtralVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28,
        patch_size=14, head_dim=8,
    )  # fmt: skip
    config = transformers.Mistral3Config(
        text_config=text, vision_config=vision, image_token_index=96, tie_word_embeddings=False
    )
    torch.manual_seed(3)
    model = transformers.Mistral3ForConditionalGeneration(config).to(torch.float32).eval()
    model.save_pretrained(folder)
    return folder, model


@pytest.mark.parametrize("chunks", [[19], [6, 8, 5], [12, 1, 1, 1, 1, 1, 1, 1]])
def test_text_logits_match_transformers(checkpoint, chunks):
    folder, reference = checkpoint
    config, ours = load_model(folder, keep_quantized=False)
    assert type(ours).__name__ == "Mistral3ForConditionalGeneration"
    assert isinstance(config, transformers.MistralConfig) and not ours.tie_word_embeddings
    tokens = torch.randint(3, 96, (sum(chunks),), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor([tokens])).logits[0]
    torch.testing.assert_close(logits_of(ours, config, tokens, chunks), expected, atol=1e-4, rtol=1e-4)
