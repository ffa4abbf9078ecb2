"""AWQ (AutoAWQ GEMM) and GPTQ (AutoGPTQ / GPTQModel, v1 and v2) checkpoints in their real on-disk layouts
(tests/awq_gptq_writer.py says which reference code each field follows): detected from config.json, each layer
repacked into GGUF blocks and kept quantized (act-order GPTQ layers with their input permutation), equal to the
checkpoint's dequantized weights within the float16 rounding of Q4_1's offset, logits within a stated tolerance of
the same checkpoint dequantized at load (`--quantization none`), which itself equals transformers running the
dequantized weights. What the engine does not run is refused by name."""

from __future__ import annotations

import pytest
import torch
from model_steps import load_model, logits_of
from safetensors.torch import load_file, save_file
from tests.awq_gptq_writer import reference_model, write_checkpoint

from pagedserve.layers.gguf_quant import Q4_0, Q4_1, Q8_0, dequantize
from pagedserve.models.awq_gptq import unpack_awq, unpack_words
from pagedserve.models.awq_gptq_config import AwqGptqConfig, parse_awq_gptq_config
from pagedserve.models.loader import resolve_model_source, resolve_quantization

# (id, writer arguments, GGML type the layers are kept in, logits tolerance against the dequantized model).
# Q4_0 and Q8_0 hold the checkpoint's weights exactly: the products differ by float32 summation order (3.6e-7
# and 4.6e-7 measured, logits of magnitude ~0.8) and by the decode GEMVs' 16-bit activations (ops/csrc/gguf_q16.h:
# 2.3e-5 to 2.6e-5 measured, 2026-12-03). Q4_1 rounds its offset m = -scale * zero once to float16
# (relative error <= 2^-11): measured 4.5e-4 here (4-bit, groups of 32-128 and per channel).
CASES = [
    ("awq-g128", {"method": "awq"}, Q4_1, 1e-3),
    ("gptq-g128-asym", {"method": "gptq"}, Q4_1, 1e-3),
    ("gptq-g128-sym", {"method": "gptq", "symmetric": True}, Q4_0, 5e-5),
    ("gptq-g64-asym-desc-act", {"method": "gptq", "desc_act": True, "group_size": 64}, Q4_1, 1e-3),
    ("gptq-v2-g32-sym-desc-act",
     {"method": "gptq", "desc_act": True, "symmetric": True, "fmt": "gptq_v2", "group_size": 32}, Q4_0, 5e-5),
    ("gptq-v2-channel-asym", {"method": "gptq", "group_size": -1, "fmt": "gptq_v2"}, Q4_1, 1e-3),
    ("gptq-int8-sym", {"method": "gptq", "bits": 8, "symmetric": True}, Q8_0, 5e-5),
]  # fmt: skip
TOKENS = torch.randint(3, 256, (11,), generator=torch.Generator().manual_seed(1)).tolist()
CHUNKS = [6, 3, 1, 1]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("awq_gptq")
    return {case: write_checkpoint(root / case, **kwargs) for case, kwargs, *_ in CASES}


def layers_of(model):
    """(checkpoint prefix, our parameter name, our layer, the checkpoint layers merged into it)."""
    for index, layer in enumerate(model.model.layers):
        attn, mlp = f"model.layers.{index}.self_attn", f"model.layers.{index}.mlp"
        yield attn, f"{attn}.qkv_proj", layer.self_attn.qkv_proj, ("q_proj", "k_proj", "v_proj")
        yield attn, f"{attn}.o_proj", layer.self_attn.o_proj, ("o_proj",)
        yield mlp, f"{mlp}.gate_up_proj", layer.mlp.gate_up_proj, ("gate_proj", "up_proj")
        yield mlp, f"{mlp}.down_proj", layer.mlp.down_proj, ("down_proj",)


def kept_weight(module) -> torch.Tensor:
    """The kept blocks dequantized, columns back in the input's order."""
    stored = dequantize(module.weight.data, module.weight_type, module.input_size)
    if module.input_perm is None:
        return stored
    weight = torch.empty_like(stored)
    weight[:, module.input_perm] = stored
    return weight


@pytest.mark.parametrize("case,kwargs,qtype,tolerance", CASES, ids=[c[0] for c in CASES])
def test_checkpoint_is_kept_quantized_and_follows_its_dequantized_weights(
    checkpoints, case, kwargs, qtype, tolerance
) -> None:
    folder, reference = checkpoints[case]
    method = kwargs["method"]
    source = resolve_model_source(str(folder))
    assert source.quantization_method == method and source.awq_gptq is not None
    assert resolve_quantization(None, source.format, False, method) == method
    assert resolve_quantization(method, source.format, False, method) == method
    config, kept = load_model(folder, keep_quantized=True)
    _, dense = load_model(folder, keep_quantized=False)

    dense_params = dict(dense.named_parameters())
    for prefix, name, module, parts in layers_of(kept):
        assert module.weight_type == qtype
        expected = torch.cat([reference[f"{prefix}.{part}.weight"] for part in parts])
        # Dequantized at load (--quantization none): exactly the checkpoint's (q - zero) * scale, in float32.
        assert torch.equal(dense_params[f"{name}.weight"], expected)
        # Kept: the same weights, up to Q4_1's float16 offset (2^-11 of |scale * zero| <= 2^-11 of the group's
        # largest |weight| plus one step), and float32's rounding of d * q + m.
        bound = 2**-11 * (expected.abs().amax(1, keepdim=True) * 2) + 2**-22 * expected.abs()
        assert ((kept_weight(module) - expected).abs() <= bound).all()
        if qtype != Q4_1:
            assert torch.equal(kept_weight(module), expected)
        if kwargs.get("desc_act"):  # a real act order: the columns are stored permuted, one order per input
            assert module.input_perm is not None
            assert not torch.equal(module.input_perm, torch.arange(module.input_size))
        else:
            assert module.input_perm is None
    assert kept.lm_head.weight.dtype == torch.float32  # not quantized by the writers: stays float
    if kwargs.get("desc_act"):
        attn = kept.model.layers[0].self_attn
        assert not torch.equal(attn.qkv_proj.input_perm, attn.o_proj.input_perm)

    got = logits_of(kept, config, TOKENS, CHUNKS)
    expected_logits = logits_of(dense, config, TOKENS, CHUNKS)
    assert (got - expected_logits).abs().max().item() <= tolerance
    # The dequantized model computes what transformers computes with the checkpoint's weights.
    with torch.no_grad():
        hf_logits = reference_model(folder, reference)(torch.tensor([TOKENS])).logits[0]
    torch.testing.assert_close(expected_logits, hf_logits, atol=1e-5, rtol=1e-5)


def test_layers_left_in_float_pass_through(tmp_path) -> None:
    """AWQ's modules_to_not_convert: those layers are saved as float `weight` tensors and loaded as they are."""
    folder, reference = write_checkpoint(tmp_path / "awq", "awq", group_size=64, not_converted=("down_proj",))
    config, kept = load_model(folder, keep_quantized=True)
    _, dense = load_model(folder, keep_quantized=False)
    mlp = kept.model.layers[1].mlp
    assert mlp.gate_up_proj.weight_type == Q4_1 and mlp.down_proj.weight_type is None
    assert torch.equal(mlp.down_proj.weight, reference["model.layers.1.mlp.down_proj.weight"])
    got, expected = logits_of(kept, config, TOKENS, CHUNKS), logits_of(dense, config, TOKENS, CHUNKS)
    assert (got - expected).abs().max().item() <= 1e-3


def test_unpacking_against_hand_made_words() -> None:
    words = torch.tensor([[0x76543210]], dtype=torch.int32)
    assert unpack_words(words, 4).tolist() == [[0, 1, 2, 3, 4, 5, 6, 7]]
    assert unpack_words(words, 8).tolist() == [[0x10, 0x32, 0x54, 0x76]]
    # AutoAWQ puts column [0, 2, 4, 6, 1, 3, 5, 7][i] in value i: columns 0..7 hold 0, 4, 1, 5, 2, 6, 3, 7.
    config = AwqGptqConfig("awq", 4, 32, False, zero_offset=0, desc_act=False)
    parts = {
        "qweight": words.repeat(32, 1),  # [in 32, out 8 / 8]
        "qzeros": torch.tensor([[0x11111111]], dtype=torch.int32),  # every zero point 1
        "scales": torch.full((1, 8), 0.5, dtype=torch.float16),
    }
    weight = unpack_awq(parts, config, "layer").dequantize()
    assert weight[:, 0].tolist() == [(v - 1) * 0.5 for v in (0, 4, 1, 5, 2, 6, 3, 7)]


def rewrite(folder, copy, change):
    """A copy of the checkpoint, in the folder `copy`, whose tensors went through `change`."""
    copy.mkdir()
    (copy / "config.json").write_text((folder / "config.json").read_text())
    tensors = load_file(folder / "model.safetensors")
    change(tensors)
    save_file(tensors, copy / "model.safetensors")
    return copy


def test_merged_parts_with_different_act_orders_are_refused(checkpoints, tmp_path) -> None:
    """q|k|v is one matrix of one input: parts whose g_idx order the channels differently cannot share it.
    Dequantized at load, no order is needed, and the checkpoint loads."""
    folder, _ = checkpoints["gptq-g64-asym-desc-act"]

    def reorder_k(tensors):
        name = "model.layers.1.self_attn.k_proj.g_idx"
        tensors[name] = tensors[name].flip(0).contiguous()  # still 64 channels a group, another order

    changed = rewrite(folder, tmp_path / "changed", reorder_k)
    with pytest.raises(
        ValueError, match=r"layers\.1\.self_attn\.[qkv]_proj: its input channels are ordered differently"
    ):
        load_model(changed, keep_quantized=True)
    load_model(changed, keep_quantized=False)


def test_act_order_groups_of_unequal_size_are_refused(checkpoints, tmp_path) -> None:
    folder, _ = checkpoints["gptq-g64-asym-desc-act"]

    def unbalance(tensors):
        name = "model.layers.0.mlp.down_proj.g_idx"
        g_idx = tensors[name].clone()
        g_idx[(g_idx == 1).nonzero()[0]] = 0  # group 0 gets 65 channels, group 1 63
        tensors[name] = g_idx

    changed = rewrite(folder, tmp_path / "changed", unbalance)
    with pytest.raises(ValueError, match=r"down_proj: g_idx gives its groups 63 to 65 input channels"):
        load_model(changed, keep_quantized=True)
    load_model(changed, keep_quantized=False)


def test_missing_parts_are_named_and_a_missing_g_idx_means_input_order(checkpoints, tmp_path) -> None:
    folder, reference = checkpoints["gptq-g128-asym"]
    broken = rewrite(
        folder, tmp_path / "broken", lambda tensors: tensors.pop("model.layers.1.mlp.up_proj.qzeros")
    )
    with pytest.raises(
        ValueError, match=r"layers\.1\.mlp\.up_proj: checkpoint lacks qzeros for its gptq int4"
    ):
        load_model(broken, keep_quantized=True)

    def drop_g_idx(tensors):
        for name in [name for name in tensors if name.endswith(".g_idx")]:
            del tensors[name]

    _, dense = load_model(rewrite(folder, tmp_path / "no_g_idx", drop_g_idx), keep_quantized=False)
    assert torch.equal(dict(dense.named_parameters())["model.layers.0.mlp.down_proj.weight"],
                       reference["model.layers.0.mlp.down_proj.weight"])  # fmt: skip


AWQ = {"quant_method": "awq", "zero_point": True, "group_size": 128, "bits": 4, "version": "gemm"}
GPTQ = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True,
        "checkpoint_format": "gptq"}  # fmt: skip


@pytest.mark.parametrize(
    "config,message",
    [
        ({**AWQ, "bits": 8}, "AWQ quantization_config: bits 8 is not supported"),
        ({**AWQ, "version": "gemv"}, "version 'gemv' is not supported"),
        ({**AWQ, "version": "marlin"}, "version 'marlin' is not supported"),
        ({**AWQ, "backend": "llm-awq"}, "backend 'llm-awq' is not supported"),
        ({**AWQ, "group_size": 16}, "AWQ quantization_config: group_size 16 is not supported"),
        ({**GPTQ, "bits": 3}, "GPTQ quantization_config: bits 3 is not supported"),
        ({**GPTQ, "bits": 8, "sym": False}, "bits 8 with sym false is not supported"),
        ({**GPTQ, "checkpoint_format": "marlin"}, "checkpoint_format 'marlin' is not supported"),
        ({**GPTQ, "is_marlin_format": True}, "is_marlin_format is not supported"),
        ({**GPTQ, "pack_dtype": "int16"}, "pack_dtype 'int16' is not supported"),
        ({**GPTQ, "group_size": 48}, "GPTQ quantization_config: group_size 48 is not supported"),
        ({**GPTQ, "dynamic": {r"+:.*down_proj": {"bits": 8}}}, "dynamic per-module overrides"),
    ],
)
def test_unsupported_configs_are_refused_by_name(config, message) -> None:
    with pytest.raises(ValueError, match=message):
        parse_awq_gptq_config(config)


def test_supported_config_variants() -> None:
    # AutoAWQ's own quant_config.json names; GPTQModel's v2 format with its skip-only `dynamic`; per channel.
    legacy = parse_awq_gptq_config(
        {"quant_method": "awq", "w_bit": 4, "q_group_size": 64, "zero_point": True}
    )
    assert (legacy.group_size, legacy.zero_offset) == (64, 0)
    v2 = parse_awq_gptq_config({**GPTQ, "checkpoint_format": "gptq_v2", "dynamic": {"-:lm_head": {}}})
    assert v2.zero_offset == 0 and parse_awq_gptq_config(GPTQ).zero_offset == 1
    assert parse_awq_gptq_config({**GPTQ, "group_size": -1, "static_groups": True}).group_size == -1


def test_quantization_flag_must_match_the_checkpoint() -> None:
    assert resolve_quantization("none", "safetensors", False, "gptq") is None
    assert resolve_quantization("none", "safetensors", False, "awq") is None
    with pytest.raises(ValueError, match="quantization 'gptq' does not match the checkpoint, whose .* 'awq'"):
        resolve_quantization("gptq", "safetensors", False, "awq")
    with pytest.raises(ValueError, match="quantization 'compressed-tensors' does not match .* 'gptq'"):
        resolve_quantization("compressed-tensors", "safetensors", False, "gptq")
    with pytest.raises(
        ValueError,
        match="'awq' needs a checkpoint whose config.json has a quantization_config with quant_method 'awq'",
    ):
        resolve_quantization("awq", "safetensors", False, None)
