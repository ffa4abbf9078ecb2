"""`pagedserve plan`'s arithmetic: KV bytes a token, the seed's FAQ sizing, valid tensor-parallel sizes and the
group a request needs. Model specs: test_plan_model_specs.py; the command's output and chart values:
test_plan_cli.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pagedserve.config import KVCacheDType
from pagedserve.kube.gpus import find_gpu
from pagedserve.kube.model_spec import ModelSpec, catalogue, load_model_spec, spec_from_config
from pagedserve.kube.planner import (
    GIB,
    KV_ELEMENT_BYTES,
    PlanRequest,
    kv_bytes_per_token,
    plan_capacity,
    valid_tp_sizes,
)


def plan(model: str, gpu: str, **request: object):  # type: ignore[no-untyped-def]
    spec, _ = load_model_spec(model)
    return plan_capacity(spec, find_gpu(gpu), PlanRequest(**request))  # type: ignore[arg-type]


def test_llama3_8b_kv_bytes_per_token_matches_hand_computation() -> None:
    spec, _ = load_model_spec("llama-3-8b")
    hand = 2 * 32 * 8 * 128 * 2  # K and V x layers x KV heads x head dim x bf16 bytes
    assert hand == 131072
    assert kv_bytes_per_token(spec, 2) == hand
    assert plan("llama-3-8b", "A10G").kv_bytes_per_token == hand
    assert plan("llama-3-8b", "A10G", kv_cache_dtype="fp8").kv_bytes_per_token == hand // 2
    assert plan("llama-3-8b", "A10G", kv_cache_dtype="fp8_e4m3").kv_bytes_per_token == hand // 2
    # --kv-cache-dtype bfloat16 under --dtype float32: 2 bytes an element, whatever the compute dtype.
    assert plan("llama-3-8b", "A10G", dtype="float32", kv_cache_dtype="bfloat16").kv_bytes_per_token == hand
    assert plan("llama-3-8b", "A10G", dtype="float32").kv_bytes_per_token == 2 * hand


def test_every_kv_cache_dtype_serve_takes_is_planned() -> None:
    """The planner takes each --kv-cache-dtype serve does (config.KVCacheDType) and sizes every one but auto."""
    assert set(get_args(KVCacheDType)) == {"auto", *KV_ELEMENT_BYTES}
    with pytest.raises(ValueError, match="kv_cache_dtype must be one of auto, bfloat16, fp8, fp8_e4m3"):
        PlanRequest(kv_cache_dtype="fp8_e5m2").validate()


def test_moe_activations_scale_with_the_experts_a_token_runs() -> None:
    """A token's MLP activations cover its top-k experts, not all 128: Qwen3-30B-A3B plans the activations of a
    dense model of 8 x 768 MLP width (its weights are what make it large)."""
    spec, _ = load_model_spec("qwen3-30b-a3b")
    dense = dataclasses.replace(spec, num_experts=1, experts_per_token=1, intermediate_size=8 * 768)
    gpu = find_gpu("H100-80GB")
    moe_plan, dense_plan = plan_capacity(spec, gpu, PlanRequest()), plan_capacity(dense, gpu, PlanRequest())
    assert moe_plan.candidates[0].activations == dense_plan.candidates[0].activations
    assert moe_plan.weight_bytes > 4 * dense_plan.weight_bytes


@pytest.mark.parametrize("model", ["mistral-7b", "llama-3-8b", "qwen2.5-7b"])
def test_faq_7b_fits_one_a10g(model: str) -> None:
    result = plan(model, "A10G")
    assert result.chosen is not None and result.chosen.tp == 1
    assert result.chosen.max_concurrency >= 1
    assert result.chosen.kv_room > 2 * GIB  # room beyond one full-length sequence


def test_faq_70b_fp16_needs_two_a100_80gb() -> None:
    result = plan("llama-3-70b", "A100-80GB")
    assert result.dtype == "bfloat16"
    assert result.weight_bytes / GIB == pytest.approx(131.4, abs=0.1)
    one, two = result.candidates[0], result.candidates[1]
    assert (one.tp, one.fits, one.headroom_ok) == (1, False, False)
    assert result.chosen is two and two.tp == 2
    # KV room left: ~4 GiB per GPU, ~26.8k tokens: 3 sequences of 8192.
    assert two.kv_room / GIB == pytest.approx(4.1, abs=0.2)
    assert two.max_concurrency == 3


def test_faq_70b_awq_needs_two_a100_40gb() -> None:
    result = plan("llama-3-70b", "A100-40GB", quantization="awq")
    assert result.dtype == "float16"
    assert result.weight_bytes / GIB == pytest.approx(37.0, abs=0.2)
    assert result.candidates[0].fits is False
    assert result.chosen is not None and result.chosen.tp == 2
    assert result.chosen.kv_tokens > 90_000
    # Unquantized it does not fit on two of them: it is the quantization that makes the FAQ's answer work.
    fp16 = plan("llama-3-70b", "A100-40GB")
    assert fp16.chosen is not None and fp16.chosen.tp == 4


def test_concurrency_drives_the_group_size() -> None:
    assert plan("llama-3-8b", "A10G", concurrency=3).chosen.tp == 1  # type: ignore[union-attr]
    assert plan("llama-3-8b", "A10G", concurrency=4).chosen.tp == 2  # type: ignore[union-attr]
    no_fit = plan("llama-3-70b", "L4", concurrency=500)
    assert no_fit.chosen is None


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("qwen2.5-7b", [1, 2, 4]),
        ("smollm2-135m", [1, 3]),
        ("llama-3-70b", [1, 2, 4, 8]),
        ("smollm2-360m", [1, 5]),
    ],
)
def test_valid_tp_sizes_follow_the_heads(model: str, expected: list[int]) -> None:
    spec, _ = load_model_spec(model)
    assert valid_tp_sizes(spec, "none", 8) == expected


def test_awq_group_size_rules_out_shards_with_partial_groups() -> None:
    spec, _ = load_model_spec(
        "qwen2.5-72b"
    )  # intermediate 29568 = 231 groups of 128: only t=1 keeps whole groups
    assert valid_tp_sizes(spec, "awq", 8) == [1]
    result = plan("qwen2.5-72b", "H100-80GB", quantization="awq")
    assert any("ruled out for awq" in note for note in result.notes)


@settings(max_examples=200, deadline=None)
@given(
    kv_heads=st.integers(1, 16),
    group=st.integers(1, 8),
    head_dim=st.sampled_from([64, 80, 96, 128]),
    layers=st.integers(1, 96),
    intermediate_units=st.integers(1, 300),
    quantization=st.sampled_from(["none", "awq", "fp8"]),
    gpu=st.sampled_from(["A10G", "L4", "A100-40GB", "H200"]),
)
def test_never_proposes_an_invalid_tensor_parallel_size(
    kv_heads: int,
    group: int,
    head_dim: int,
    layers: int,
    intermediate_units: int,
    quantization: str,
    gpu: str,
) -> None:
    heads = kv_heads * group
    spec = ModelSpec(
        name="random",
        hidden_size=heads * head_dim,
        intermediate_size=intermediate_units * 64,
        num_layers=layers,
        num_attention_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=32000,
        max_position_embeddings=4096,
    )
    result = plan_capacity(spec, find_gpu(gpu), PlanRequest(quantization=quantization))
    for candidate in result.candidates:
        t = candidate.tp
        assert heads % t == 0 and spec.intermediate_size % t == 0
        assert kv_heads % t == 0 or t % kv_heads == 0
        if quantization == "awq":
            assert (spec.intermediate_size // t) % 128 == 0
    if result.chosen is not None:
        assert result.chosen.tp in result.valid_tp_sizes and result.chosen.fits


def test_quantization_config_in_checkpoint_is_used(tmp_path: Path) -> None:
    config = {
        **catalogue()["llama-3-70b"]["config"],
        "quantization_config": {"quant_method": "awq", "bits": 4},
    }
    spec = spec_from_config(config, name="llama-3-70b-awq")
    result = plan_capacity(spec, find_gpu("A100-40GB"), PlanRequest())
    assert result.quantization == "awq" and result.chosen is not None and result.chosen.tp == 2


def test_gemma3_plan_counts_its_window_layers_blocks_as_the_engine_does() -> None:
    """Gemma 3 27B at 128k: 52 of 62 layers keep a 1024-token window, so a sequence's KV is ~5x smaller than every
    layer keeping every block (vLLM's hybrid KV cache manager, which the engine runs)."""
    spec, _ = load_model_spec("gemma-3-27b")
    request = PlanRequest(max_model_len=131072, concurrency=8)
    plan = plan_capacity(spec, find_gpu("H100-80GB"), request)
    # 7 groups of 10 layers (1 full, 6 window): 10 layers' K and V a token of the pool.
    assert plan.kv_bytes_per_token == 2 * 10 * 16 * 128 * 2
    # Full group: 8192 blocks; each window group: ceil((1023 + 4096) / 16) + 1 = 321 blocks.
    assert plan.seq_tokens == (8192 + 6 * 321) * 16
    fit = plan.chosen
    assert fit is not None and fit.max_concurrency == (fit.kv_tokens - 16) // plan.seq_tokens
    every_block = 2 * 62 * 16 * 128 * 2 * 131072
    assert plan.kv_bytes_per_token * plan.seq_tokens < every_block / 4
    assert any("52 of 62 layers attend to a sliding window (1024 tokens)" in note for note in plan.notes)
