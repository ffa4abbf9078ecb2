"""compressed-tensors checkpoints written by the compressed-tensors library: detected from config.json, each
scheme's layers kept quantized in memory (W4A16 / W8A16 as GGUF blocks, W8A8 / FP8 as int8 / float8 rows), their
weights equal to the library's own decompression, and logits within a stated tolerance of the same checkpoint
dequantized at load. Unsupported schemes are refused naming the group and what it asks for."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from model_steps import load_model, logits_of
from tests.ct_writer import reference_weights, write_tiny_ct

from pagedserve.layers.ct_quant import int_to_gguf_blocks, scaled_linear, unpack_int32
from pagedserve.layers.gguf_quant import TYPE_NAMES
from pagedserve.models.ct_scheme import parse_compressed_tensors_config
from pagedserve.models.loader import resolve_model_source, resolve_quantization

# (preset, group size, how the layers are kept, weight bytes kept ÷ float32 at most, logits tolerance)
SCHEMES = [
    # Weight-only: the kept product is the dequantized product up to float32 summation order (measured 1.5e-7),
    # and for the asymmetric scheme Q4_1's float16 offsets (1.3e-4), logits of magnitude ~0.6.
    ("W4A16", 32, "Q4_0", 0.25, 1e-4),
    ("W4A16_ASYM", 64, "Q4_1", 0.25, 1e-3),
    ("W8A16", 32, "Q8_0", 0.35, 1e-4),
    # Dynamic activation quantization changes the product itself: int8 per token rounds each activation by up to
    # 0.4 % of its row's largest, float8 e4m3 by up to 6 % of itself; measured 5.3e-3 (W8A8) and 1.75e-2 (FP8).
    ("W8A8", None, "int8", 0.35, 1e-2),
    ("FP8_DYNAMIC", None, "float8", 0.35, 5e-2),
    # Static activation scales (one input_scale a layer, from a calibration pass): the FP8 preset, and W8A8 so.
    ("FP8", None, "float8", 0.35, 5e-2),
    ("W8A8_STATIC", None, "int8", 0.35, 1e-2),
    # Block FP8: a scale a 32 x 32 block of weights, activations in groups of 32 values of a token.
    ("FP8_BLOCK", None, "float8", 0.35, 5e-2),
]


def kept_kind(module: torch.nn.Module) -> str:
    if module.weight_type is not None:
        return TYPE_NAMES[module.weight_type]
    return {torch.int8: "int8", torch.float8_e4m3fn: "float8"}.get(module.weight.dtype, "float")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct")
    return {
        preset: write_tiny_ct(
            root / preset,
            preset.removesuffix("_STATIC"),
            group_size=group or 32,
            static_activations="STATIC" in preset,
            block=32 if preset == "FP8_BLOCK" else None,
        )
        for preset, group, *_ in SCHEMES
    }


@pytest.mark.parametrize("preset,group,kind,max_bytes,tolerance", SCHEMES, ids=[s[0] for s in SCHEMES])
def test_scheme_is_kept_quantized_and_follows_its_dequantized_reference(
    checkpoints, preset, group, kind, max_bytes, tolerance
) -> None:
    folder = checkpoints[preset]
    source = resolve_model_source(str(folder))
    assert source.quantization_method == "compressed-tensors"
    assert (
        resolve_quantization(None, source.format, False, source.quantization_method) == "compressed-tensors"
    )
    config, kept = load_model(folder, keep_quantized=True)
    _, dense = load_model(folder, keep_quantized=False)

    layer = kept.model.layers[0]
    for module in (
        layer.self_attn.qkv_proj,
        layer.self_attn.o_proj,
        layer.mlp.gate_up_proj,
        layer.mlp.down_proj,
    ):
        assert kept_kind(module) == kind
    assert kept.lm_head.weight.dtype == torch.float32  # ignored by the writer's config: stays float
    matrices = [p for name, p in kept.named_parameters() if "layers" in name and p.dim() == 2]
    dense_matrices = [p for name, p in dense.named_parameters() if "layers" in name and p.dim() == 2]
    kept_bytes = sum(p.numel() * p.element_size() for p in matrices)
    assert kept_bytes <= max_bytes * sum(p.numel() * p.element_size() for p in dense_matrices)

    # Dequantized at load, every layer is exactly what the compressed-tensors library decompresses.
    reference = reference_weights(folder)
    dense_params = dict(dense.named_parameters())
    q, k, v = (reference[f"model.layers.1.self_attn.{p}_proj.weight"] for p in "qkv")
    torch.testing.assert_close(dense_params["model.layers.1.self_attn.qkv_proj.weight"], torch.cat((q, k, v)))
    torch.testing.assert_close(
        dense_params["model.layers.0.mlp.down_proj.weight"], reference["model.layers.0.mlp.down_proj.weight"]
    )

    tokens = torch.randint(3, config.vocab_size, (11,), generator=torch.Generator().manual_seed(1)).tolist()
    got = logits_of(kept, config, tokens, [6, 3, 1, 1])
    expected = logits_of(dense, config, tokens, [6, 3, 1, 1])
    assert (got - expected).abs().max().item() <= tolerance


# Dynamic int8 activations: a last-bit float32 difference upstream (another summation order in a norm or a
# GEMM, which varies with the CPU's kernels) can move an activation across a rounding tie, and that moves the
# layer's output by one quantization step (x scale x weight scale x weight, ~1e-3 here). Measured: 2e-7 on a
# Zen 4 (AVX-512 BF16), 1.4e-3 on an Intel AMX host (2026-12-02; the same on the commit before this change).
# Weight-only schemes kept in GGUF blocks: the decode GEMVs quantize activations to 16 bits (ops/csrc/gguf_q16.h),
# measured 1.2e-5 (W4A16) and 1.5e-5 (W8A16) from transformers, 2026-12-03.
FOLLOW_TOLERANCE = {"W8A8": 3e-3, "W8A8_STATIC": 3e-3, "W4A16": 5e-5, "W8A16": 5e-5}


@pytest.mark.parametrize(
    "preset", ["W4A16", "W8A16", "W8A8", "FP8_DYNAMIC", "FP8", "W8A8_STATIC", "FP8_BLOCK"]
)
def test_kept_logits_follow_transformers_running_the_checkpoint(checkpoints, preset) -> None:
    """transformers runs compressed-tensors checkpoints itself (decompressing, and quantizing activations as the
    scheme says): measured within 2e-7 of ours for each scheme, 2026-12-02 (the static-activation FP8 and W8A8:
    1.2e-7 and 1.5e-7; FP8_BLOCK 1.8e-7; 2026-12-05), except W8A8 on some CPUs and the
    weight-only schemes since their GEMVs quantize activations to 16 bits (FOLLOW_TOLERANCE says why). (It cannot load the asymmetric W4A16 file the library writes: it expects
    unpacked zero points, a transformers/compressed-tensors mismatch.)"""
    folder = checkpoints[preset]
    reference = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    config, kept = load_model(folder, keep_quantized=True)
    tokens = torch.randint(3, config.vocab_size, (1, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(tokens).logits[0]
    tolerance = FOLLOW_TOLERANCE.get(preset, 1e-5)
    torch.testing.assert_close(
        logits_of(kept, config, tokens[0].tolist(), [6, 3, 1, 1]), expected, atol=tolerance, rtol=1e-5
    )


def test_channel_scales_and_an_unignored_lm_head(tmp_path) -> None:
    """W4A16 with one scale per row, the LM head quantized too (repacked into GGUF blocks like the layers)."""
    folder = write_tiny_ct(tmp_path / "w4c", "W4A16", strategy="channel", ignore=())
    config, kept = load_model(folder, keep_quantized=True)
    _, dense = load_model(folder, keep_quantized=False)
    assert kept.lm_head.weight_type == 2 and kept_kind(kept.model.layers[1].mlp.down_proj) == "Q4_0"
    tokens = [5, 9, 14, 3, 22, 7]
    torch.testing.assert_close(
        logits_of(kept, config, tokens, [6]), logits_of(dense, config, tokens, [6]), atol=1e-4, rtol=1e-4
    )


def test_unpacking_and_repacking_against_hand_made_values() -> None:
    # Two int32 words holding the 4-bit values 0..15 (stored with the offset 8): value i at bits 4i.
    words = torch.tensor([[0x76543210, -0x01234568]], dtype=torch.int32)  # 0xFEDCBA98 as a signed int32
    assert unpack_int32(words, 4, 16).tolist() == [[v - 8 for v in range(16)]]
    q = torch.arange(-8, 8, dtype=torch.int8).repeat(2, 4)  # [2, 64]
    scale = torch.tensor([[0.5, 0.25], [2.0, 1.0]])
    blocks = int_to_gguf_blocks(q, scale, None, 4, "layer")
    expected = q.float() * scale.repeat_interleave(32, dim=1)
    torch.testing.assert_close(blocks.dequantize(), expected)
    zero = torch.tensor([[1, -2], [0, 3]], dtype=torch.int8)
    asym = int_to_gguf_blocks(q, scale, zero, 4, "layer")
    torch.testing.assert_close(
        asym.dequantize(),
        (q.float() - zero.float().repeat_interleave(32, 1)) * scale.repeat_interleave(32, 1),
    )


def test_int8_activations_are_quantized_per_token() -> None:
    gen = torch.Generator().manual_seed(0)
    weight = torch.randint(-127, 128, (48, 64), generator=gen, dtype=torch.int8)
    scale = torch.rand(48, generator=gen) / 100
    x = torch.randn(5, 64, generator=gen)
    got = scaled_linear(x, weight, scale, "token", None)
    x_scale = x.abs().amax(1, keepdim=True) / 127.5  # compressed-tensors: absmax over half the 255 steps
    xq = torch.round(x / x_scale).clamp(-128, 127)
    torch.testing.assert_close(
        got, (xq * x_scale) @ (weight.float() * scale[:, None]).T, atol=1e-5, rtol=1e-5
    )


BASE = {"quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed"}
W4 = {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 128, "symmetric": True}


def config_with(group: dict, **extra) -> dict:
    return {**BASE, "config_groups": {"group_0": {"targets": ["Linear"], **group}}, **extra}


@pytest.mark.parametrize(
    "config,message",
    [
        (config_with({"weights": {**W4, "group_size": 16}}), "group_size 16 must be a multiple of 32"),
        (
            config_with({"weights": {**W4, "num_bits": 3}}),
            "weights pack-quantized int3 group 128 are not supported",
        ),
        (
            config_with({"weights": {**W4, "num_bits": 8, "symmetric": False}}),
            "int8 group 128 asymmetric are not supported",
        ),
        (
            config_with(
                {
                    "format": "float-quantized",
                    "weights": {**W4, "type": "float", "num_bits": 8, "strategy": "tensor"},
                    "input_activations": {
                        "num_bits": 8,
                        "type": "float",
                        "strategy": "token",
                        "dynamic": False,
                    },
                }
            ),
            "static input_activations with strategy 'token' are not supported",
        ),  # fmt: skip
        (config_with({"format": "nvfp4-pack-quantized", "weights": W4}), "format 'nvfp4-pack-quantized'"),
        (config_with({"weights": {**W4, "actorder": "group"}}), "actorder 'group' is not supported yet"),
        (
            config_with({"weights": W4}, kv_cache_scheme={"num_bits": 8}),
            "kv_cache_scheme is not supported yet",
        ),
        (config_with({"weights": W4}, quantization_status="frozen"), "quantization_status 'frozen'"),
    ],
)
def test_unsupported_schemes_are_refused_by_name(config, message) -> None:
    with pytest.raises(ValueError, match=message):
        parse_compressed_tensors_config(config)


def test_quantization_flag_must_match_the_checkpoint(checkpoints, tmp_path) -> None:
    assert resolve_quantization("none", "safetensors", False, "compressed-tensors") is None
    with pytest.raises(ValueError, match="quantization 'gguf' does not match the checkpoint"):
        resolve_quantization("gguf", "safetensors", False, "compressed-tensors")
    with pytest.raises(ValueError, match="'compressed-tensors' needs a checkpoint whose config.json"):
        resolve_quantization("compressed-tensors", "safetensors", False, None)
    with pytest.raises(ValueError, match="quant_method 'bitsandbytes' is not supported yet"):
        resolve_quantization(None, "safetensors", False, "bitsandbytes")
    # A layer whose tensors are missing a part is named.
    folder = checkpoints["W8A8"]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((folder / "config.json").read_text())
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight_scale"]
    save_file(tensors, broken / "model.safetensors")
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj: checkpoint lacks weight_scale"):
        load_model(broken, keep_quantized=True)
    assert (
        json.loads((folder / "config.json").read_text())["quantization_config"]["format"] == "int-quantized"
    )
