"""Phi-3 / Phi-4 (`Phi3ForCausalLM`): tiny random checkpoints saved by transformers (q|k|v and gate|up fused in the
file) give transformers' logits (float32, 1e-4) over whole prompts, chunked prefills and decode steps, with and
without Phi-3-mini-4k's sliding window (here 7 tokens, so it decides the result); what is not implemented
(LongRoPE, partial rotary, quantized fused layers) is refused by name."""

from __future__ import annotations

import pytest
import torch
import transformers
from model_steps import load_model, logits_of

from pagedserve.attention.backend import get_attention_backend
from pagedserve.models.phi3 import Phi3ForCausalLM


def phi3_config(**overrides) -> transformers.Phi3Config:
    settings = dict(
        vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, original_max_position_embeddings=256,
        rms_norm_eps=1e-5, initializer_range=0.2, tie_word_embeddings=False, pad_token_id=0,
    )  # fmt: skip
    settings.update(overrides)
    config = transformers.Phi3Config(**settings)
    config.architectures = ["Phi3ForCausalLM"]
    return config


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("phi3")
    made = {}
    for kind, overrides in (("full", {}), ("window", {"sliding_window": 7})):
        torch.manual_seed(0)
        model = transformers.Phi3ForCausalLM(phi3_config(**overrides)).to(torch.float32).eval()
        model.save_pretrained(root / kind)
        made[kind] = (root / kind, model)
    return made


@pytest.mark.parametrize("kind", ["full", "window"])
@pytest.mark.parametrize("chunks", [[19], [6, 8, 5], [12, 1, 1, 1, 1, 1, 1, 1]])
def test_logits_match_transformers(checkpoints, kind, chunks):
    folder, reference = checkpoints[kind]
    config, ours = load_model(folder, keep_quantized=False)
    assert type(ours) is Phi3ForCausalLM
    assert ours.model.layers[0].self_attn.sliding_window == (7 if kind == "window" else None)
    tokens = torch.randint(3, 97, (sum(chunks),), generator=torch.Generator().manual_seed(1)).tolist()
    got = logits_of(ours, config, tokens, chunks)
    with torch.no_grad():
        expected = reference(torch.tensor([tokens])).logits[0]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_fused_tensors_are_split_into_their_parts(checkpoints):
    folder, reference = checkpoints["full"]
    _, ours = load_model(folder, keep_quantized=False)
    fused = reference.model.layers[1].self_attn.qkv_proj.weight
    torch.testing.assert_close(ours.model.layers[1].self_attn.qkv_proj.weight, fused)  # q|k|v, in that order
    gate_up = reference.model.layers[0].mlp.gate_up_proj.weight
    torch.testing.assert_close(ours.model.layers[0].mlp.gate_up_proj.weight, gate_up)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            {"rope_scaling": {"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [2.0] * 8}},
            "longrope",
        ),
        ({"partial_rotary_factor": 0.75}, "partial_rotary_factor"),
        ({"hidden_act": "gelu"}, "hidden_act"),
    ],
)
def test_what_is_not_implemented_is_refused_by_name(overrides, message):
    with pytest.raises(ValueError, match=message):
        Phi3ForCausalLM(phi3_config(**overrides), get_attention_backend("cpu"))


def test_a_quantized_fused_layer_is_refused_by_name():
    ours = Phi3ForCausalLM(phi3_config(), get_attention_backend("cpu"))
    with pytest.raises(ValueError, match="quantized Phi-3"):
        ours.load_weights(
            [("model.layers.0.self_attn.qkv_proj.qweight", torch.zeros(8, 8, dtype=torch.int32))]
        )
