"""Rotary scaling as transformers computes it (its ROPE_INIT_FUNCTIONS on a real config are the reference): YaRN's
frequencies and cos/sin factor (Qwen's shape, DeepSeek's mscale pair, untruncated ramps), LongRoPE's sets and
factor; vLLM's derived context lengths; --hf-overrides merged into a config without losing rope_theta."""

from __future__ import annotations

import math

import pytest
import torch
import transformers
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from pagedserve.layers.rope_scaling import resolve_rope, scaled_context, scaled_inv_freq
from pagedserve.models.hf_overrides import apply_hf_overrides
from pagedserve.models.llama import config_for_serving, make_rotary, rope_settings


def qwen3_config(**overrides) -> transformers.Qwen3Config:
    settings = dict(
        vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, max_position_embeddings=4096, rope_theta=1_000_000.0,
    )  # fmt: skip
    settings.update(overrides)
    return transformers.Qwen3Config(**settings)


YARN_CASES = [
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024},  # Qwen2.5 / Qwen3's shape
    {
        "rope_type": "yarn",
        "factor": 8.0,
        "original_max_position_embeddings": 512,
        "beta_fast": 16,
        "beta_slow": 2,
    },
    {
        "rope_type": "yarn",
        "factor": 40.0,
        "original_max_position_embeddings": 1024,
        "mscale": 1.0,
        "mscale_all_dim": 0.707,
    },  # fmt: skip
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024, "truncate": False},
    {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 1024, "attention_factor": 1.5},
]


@pytest.mark.parametrize("scaling", YARN_CASES)
def test_yarn_matches_transformers(scaling) -> None:
    config = qwen3_config(rope_parameters={"rope_theta": 1_000_000.0, **scaling})
    expected, expected_factor = ROPE_INIT_FUNCTIONS["yarn"](config, torch.device("cpu"))
    got, factor = scaled_inv_freq(32, 1_000_000.0, rope_settings(config)[1])
    torch.testing.assert_close(got, expected, atol=0, rtol=1e-6)
    assert factor == pytest.approx(expected_factor, rel=1e-12)


@pytest.mark.parametrize("long", [False, True])
def test_longrope_matches_transformers(long) -> None:
    gen = torch.Generator().manual_seed(0)
    scaling = {
        "rope_type": "longrope", "original_max_position_embeddings": 256,
        "short_factor": (1 + torch.rand(16, generator=gen)).tolist(),
        "long_factor": (1 + 8 * torch.rand(16, generator=gen)).tolist(),
    }  # fmt: skip
    config = transformers.Phi3Config(
        vocab_size=97, hidden_size=128, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=8192, original_max_position_embeddings=256, rope_scaling=scaling,
    )  # fmt: skip
    seq_len = 257 if long else None
    expected, expected_factor = ROPE_INIT_FUNCTIONS["longrope"](config, torch.device("cpu"), seq_len=seq_len)
    resolved = resolve_rope(rope_settings(config)[1], 8192, max_model_len=1024 if long else 256)
    got, factor = scaled_inv_freq(32, 10_000.0, resolved)
    torch.testing.assert_close(got, expected, atol=0, rtol=1e-6)
    assert (
        factor == pytest.approx(expected_factor) == pytest.approx(math.sqrt(1 + math.log(32) / math.log(256)))
    )


def test_config_for_serving_keeps_the_checkpoints_context_in_the_factors() -> None:
    """The runner shrinks the table to what a step reaches; YaRN's original context and LongRoPE's factor stay the
    checkpoint's, so the cos/sin are those of the model built alone, row for row."""
    config = qwen3_config(
        max_position_embeddings=4096, rope_parameters={"rope_theta": 1e6, "rope_type": "yarn", "factor": 4.0}
    )
    alone = make_rotary(config, 32)
    served = config_for_serving(config, 512, max_model_len=512)
    small = make_rotary(served, 32)
    assert small.cos_cache.shape == (512, 32) and config.max_position_embeddings == 4096
    torch.testing.assert_close(small.cos_cache, alone.cos_cache[:512], atol=0, rtol=0)
    torch.testing.assert_close(small.sin_cache, alone.sin_cache[:512], atol=0, rtol=0)


def test_vllms_derived_context_lengths() -> None:
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    assert scaled_context(yarn, 40960) == 131072  # Qwen3: the original context times the factor
    assert scaled_context({"rope_type": "linear", "factor": 4.0}, 4096) == 16384
    assert scaled_context({"rope_type": "llama3", "factor": 8.0}, 131072) == 131072  # already extended
    assert scaled_context(None, 2048) == 2048


def test_hf_overrides_merge_rope_scaling_and_keep_rope_theta() -> None:
    config = apply_hf_overrides(
        qwen3_config(),
        {"rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024}},
    )
    assert config.rope_parameters == {
        "rope_theta": 1_000_000.0, "rope_type": "yarn", "type": "yarn", "factor": 4.0,
        "original_max_position_embeddings": 1024,
    }  # fmt: skip
    apply_hf_overrides(
        config, {"rope_theta": 500_000.0, "max_position_embeddings": 8192, "architectures": ["X"]}
    )
    assert rope_settings(config)[0] == 500_000.0  # what the model reads, not a stray attribute
    assert config.max_position_embeddings == 8192 and config.architectures == ["X"]


def test_hf_overrides_reach_into_sub_configs() -> None:
    config = transformers.Gemma3Config(text_config={"num_hidden_layers": 2, "sliding_window": 512})
    apply_hf_overrides(config, {"text_config": {"sliding_window": 128}})
    assert config.text_config.sliding_window == 128 and config.text_config.num_hidden_layers == 2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"rope_scaling": "yarn"}, "rope_scaling must be a JSON object"), ({1: 2}, "keys must be")],
)
def test_bad_hf_overrides_name_the_field(overrides, message) -> None:
    with pytest.raises(ValueError, match=message):
        apply_hf_overrides(qwen3_config(), overrides)
