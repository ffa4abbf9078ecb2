"""Phi-3 / Phi-4 (`Phi3ForCausalLM`): tiny random checkpoints saved by transformers (q|k|v and gate|up fused in the
file) give transformers' logits (float32, 1e-4) over whole prompts, chunked prefills and decode steps, with and
without Phi-3-mini-4k's sliding window (here 7 tokens, so it decides the result); with LongRoPE (Phi-3.5, 128k) and
with LongRoPE plus rotary on 3/4 of each head (Phi-4-mini), its long factor set past the original context and the
short one within it; what is not implemented (quantized fused layers) is refused by name."""

from __future__ import annotations

import pytest
import torch
import transformers
from model_steps import load_model, logits_of

from pagedserve.attention.backend import get_attention_backend
from pagedserve.models.llama import config_for_serving
from pagedserve.models.phi3 import Phi3ForCausalLM
from pagedserve.models.registry import resolve_model_class

ORIGINAL = 24  # the LongRoPE checkpoints' original context: prompts of 30 tokens are past it


def longrope(partial: float = 1.0, seed: int = 0) -> dict:
    """Phi-3.5's rope_scaling shape with random factor sets (one factor per rotary frequency)."""
    pairs = int(16 * partial) // 2  # head_dim 16
    gen = torch.Generator().manual_seed(seed)
    return {
        "rope_type": "longrope",
        "short_factor": (1 + torch.rand(pairs, generator=gen) / 2).tolist(),
        "long_factor": (1 + 6 * torch.rand(pairs, generator=gen)).tolist(),
        "partial_rotary_factor": partial,
    }


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
    long_context = {"original_max_position_embeddings": ORIGINAL, "max_position_embeddings": 256}
    for kind, overrides in (
        ("full", {}),
        ("window", {"sliding_window": 7}),
        ("phi3.5", {"rope_scaling": longrope(), **long_context}),
        ("phi4-mini", {"rope_scaling": longrope(0.75, seed=1), **long_context}),
    ):
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


@pytest.mark.parametrize("kind", ["phi3.5", "phi4-mini"])
@pytest.mark.parametrize("chunks", [[30], [11, 13, 6], [26, 1, 1, 1, 1]])
def test_longrope_past_the_original_context_matches_transformers(checkpoints, kind, chunks):
    """Built alone, the model serves its whole context (256 > 24): the long factors for every position, which is
    what transformers uses for a forward pass longer than the original context."""
    folder, reference = checkpoints[kind]
    config, ours = load_model(folder, keep_quantized=False)
    assert ours.model.rotary.rotary_dim == (12 if kind == "phi4-mini" else 16)
    tokens = torch.randint(3, 97, (sum(chunks),), generator=torch.Generator().manual_seed(2)).tolist()
    got = logits_of(ours, config, tokens, chunks)
    with torch.no_grad():
        expected = reference(torch.tensor([tokens])).logits[0]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["phi3.5", "phi4-mini"])
def test_longrope_within_the_original_context_uses_the_short_factors(checkpoints, kind):
    """Served with max_model_len at the original context (the engine's config_for_serving), every position uses the
    short factors (transformers' choice for sequences that short); a table of 64 rows (the step budget) changes
    nothing; the cos/sin factor still comes from the checkpoint's 256 / 24."""
    folder, reference = checkpoints[kind]
    config, long_model = load_model(folder, keep_quantized=False)
    served = config_for_serving(config, 64, max_model_len=ORIGINAL)
    assert served.max_position_embeddings == 64 and config.max_position_embeddings == 256
    ours = resolve_model_class(served)(served, get_attention_backend("cpu")).float().eval()
    ours.load_state_dict(long_model.state_dict())
    tokens = torch.randint(3, 97, (ORIGINAL,), generator=torch.Generator().manual_seed(3)).tolist()
    got = logits_of(ours, served, tokens, [9, 7, 1, 1, 1, 1, 1, 1, 1, 1])
    with torch.no_grad():
        expected = reference(torch.tensor([tokens])).logits[0]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(logits_of(long_model, config, tokens, [ORIGINAL]), expected, atol=1e-3)


def test_fused_tensors_are_split_into_their_parts(checkpoints):
    folder, reference = checkpoints["full"]
    _, ours = load_model(folder, keep_quantized=False)
    fused = reference.model.layers[1].self_attn.qkv_proj.weight
    torch.testing.assert_close(ours.model.layers[1].self_attn.qkv_proj.weight, fused)  # q|k|v, in that order
    gate_up = reference.model.layers[0].mlp.gate_up_proj.weight
    torch.testing.assert_close(ours.model.layers[0].mlp.gate_up_proj.weight, gate_up)


@pytest.mark.parametrize(
    "overrides,message",
    [({"hidden_act": "gelu"}, "hidden_act")],
)
def test_what_is_not_implemented_is_refused_by_name(overrides, message):
    with pytest.raises(ValueError, match=message):
        Phi3ForCausalLM(phi3_config(**overrides), get_attention_backend("cpu"))


def test_a_quantized_fused_layer_is_refused_by_name():
    ours = Phi3ForCausalLM(phi3_config(), get_attention_backend("cpu"))
    with pytest.raises(ValueError, match=r"quantized checkpoints with fused .* rows \(Phi-3, GLM\)"):
        ours.load_weights(
            [("model.layers.0.self_attn.qkv_proj.qweight", torch.zeros(8, 8, dtype=torch.int32))]
        )
