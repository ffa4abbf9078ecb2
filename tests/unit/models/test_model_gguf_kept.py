"""GGUF matrices kept in their Q4_0 / Q4_1 / Q8_0 / Q4_K / Q6_K blocks: the kernels (each ISA level this machine
runs) against the gguf package's own dequantizer, and tiny models written with the real gguf writer whose logits,
kept quantized, match the same file dequantized at load."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from model_steps import load_model, logits_of
from tiny_gguf_writer import quantize, write_tiny_gguf

from pagedserve.layers import gguf_quant
from pagedserve.layers.gguf_quant import QuantizedTensor
from pagedserve.models.loader import resolve_quantization
from pagedserve.ops import cpu_gguf

Q = gguf.GGMLQuantizationType
KEPT = [Q.Q4_0, Q.Q4_1, Q.Q8_0, Q.Q4_K, Q.Q6_K]
K_QUANTS = (Q.Q4_K, Q.Q6_K)
BLOCK = 4


def quantized(rows: int, cols: int, qtype: Q, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """(blocks as written by the gguf package, or kquant_writer for the K-quants, and their dequantization by
    the gguf package)."""
    weights = np.random.default_rng(seed).normal(0, 0.2, (rows, cols)).astype(np.float32)
    blocks = quantize(weights, qtype)
    return torch.from_numpy(np.ascontiguousarray(blocks)), gguf.quants.dequantize(blocks, qtype)


def random_blocks(rows: int, cols: int, qtype: Q, seed: int = 0) -> torch.Tensor:
    """Every bit pattern a writer may produce (scales, mins, sign bits, 6-bit values), with float16 scales kept
    finite and small."""
    weights, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = np.random.default_rng(seed).integers(0, 256, (rows, cols // weights, size), dtype=np.uint8)
    scales = (
        np.random.default_rng(seed + 1).uniform(-0.02, 0.02, (rows, cols // weights, 2)).astype(np.float16)
    )
    scale_bytes = {Q.Q4_1: slice(0, 4), Q.Q4_K: slice(0, 4), Q.Q6_K: slice(208, 210)}.get(qtype, slice(0, 2))
    raw[..., scale_bytes] = scales.view(np.uint8)[..., : scale_bytes.stop - scale_bytes.start]
    return torch.from_numpy(raw.reshape(rows, -1))


def cols_for(qtype: Q) -> int:
    """7 blocks of 32, or 3 super-blocks of 256 for the K-quants."""
    return 768 if qtype in K_QUANTS else 224


@pytest.mark.parametrize("qtype", KEPT, ids=lambda t: t.name)
def test_dequantize_equals_the_gguf_package(isa_level, qtype) -> None:
    cols = cols_for(qtype)
    for data in (quantized(37, cols, qtype)[0], random_blocks(37, cols, qtype)):
        expected = gguf.quants.dequantize(data.numpy(), qtype)
        np.testing.assert_array_equal(gguf_quant.dequantize(data, int(qtype), cols).numpy(), expected)
        np.testing.assert_array_equal(
            gguf_quant.dequantize_reference(data, int(qtype), cols).numpy(), expected
        )


def q16_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [m, k] as the GEMV kernels quantize it (ops/csrc/gguf_q16.h): per 32-value block, q = round-half-even(x *
    (32767 / max|x|)) and d = max|x| / 32767. Returns (q * d as float64, d per block [m, k / 32])."""
    blocks = x.reshape(x.shape[0], -1, 32)
    amax = blocks.abs().amax(dim=-1, keepdim=True)
    inverse = torch.where(amax > 0, torch.tensor(32767.0) / amax, torch.zeros_like(amax))
    q = torch.round(blocks * inverse).clamp(-32767, 32767)
    d = amax / 32767.0
    return (q.double() * d.double()).reshape(x.shape), d.squeeze(-1)


@pytest.mark.parametrize("qtype", KEPT, ids=lambda t: t.name)
@pytest.mark.parametrize("m", [1, 2, 3, 5, 8, 9, 32, 33])
def test_products_follow_the_dequantized_product(isa_level, qtype, m) -> None:
    """Rows on both sides of the kernels' switches (a GEMV up to 8 rows, 32 for every type at the AVX-512
    levels; AVX2's panels or dequantize + GEMM above), a last panel of 5 columns, 37 rows (a last group of one) and
    k of 7 blocks (3 super-blocks). The GEMV quantizes the activations to 16 bits: its result is the exact product
    of the quantized activations up to float32 rounding, and within the rounding's bound (d_x / 2 a value) of the
    float product. Above its rows: within float32 summation-order error of the float product."""
    cols = cols_for(qtype)
    data, dense = quantized(37, cols, qtype, seed=m)
    weights = torch.from_numpy(dense).double()
    gen = torch.Generator().manual_seed(m)
    x = torch.randn(m, cols, generator=gen)
    bias = torch.randn(37, generator=gen)
    x_q16, d = q16_activations(x)
    # |error| <= sum over blocks of d_x / 2 * sum |w| in the block
    bound = (d.double() / 2) @ weights.abs().reshape(37, -1, 32).sum(-1).T
    for b in (None, bias):
        b64 = None if b is None else b.double()
        got = gguf_quant.gguf_linear(x, data, int(qtype), cols, b).double()
        exact = F.linear(x.double(), weights, b64)
        assert got.shape == (m, 37)
        if m <= cpu_gguf.gemv_max_rows(int(qtype)):
            assert (got - F.linear(x_q16, weights, b64)).abs().max().item() < 2e-5
            assert ((got - exact).abs() <= bound + 2e-5).all()
        else:
            assert (got - exact).abs().max().item() < 2e-5
    # bfloat16 activations (AVX-512 BF16 hosts) are multiplied in float32 and rounded once.
    got16 = gguf_quant.gguf_linear(x.bfloat16(), data, int(qtype), cols, None)
    assert got16.dtype == torch.bfloat16
    torch.testing.assert_close(
        got16.float(), F.linear(x.bfloat16().float(), torch.from_numpy(dense)), atol=0.05, rtol=0.02
    )


def test_the_gemv_takes_up_to_32_rows_with_avx_512(isa_level) -> None:
    """Every kept type's rows go to the GEMV up to 32 rows where 512-bit registers hold four weight rows
    (csrc/gguf_q16_lanes.h); below AVX-512, up to 8."""
    wide = isa_level.startswith("avx512")
    for qtype in KEPT:
        assert cpu_gguf.gemv_max_rows(int(qtype)) == (32 if wide else 8), qtype.name


@pytest.mark.parametrize("qtype", KEPT, ids=lambda t: t.name)
def test_gemv_takes_every_bit_pattern_and_zero_rows(isa_level, qtype) -> None:
    """Blocks with any bytes (Q8_0's -128, every 6-bit value and scale, every scale bit), an all-zero activation
    block and one at full scale: the integer dots equal the exact product of the quantized activations (no
    overflow)."""
    cols = cols_for(qtype)
    data = random_blocks(37, cols, qtype, seed=3)
    weights = torch.from_numpy(gguf.quants.dequantize(data.numpy(), qtype)).double()
    x = torch.randn(3, cols, generator=torch.Generator().manual_seed(4)) * 50
    x[1, :32] = 0.0
    x[2, 32:64] = -127.0
    got = gguf_quant.gguf_linear(x, data, int(qtype), cols, None).double()
    expected = F.linear(q16_activations(x)[0], weights)
    assert (got - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()
    # One row alone takes the single-row path (4 weight rows at a time for the simple types).
    for r in range(3):
        one = gguf_quant.gguf_linear(x[r : r + 1], data, int(qtype), cols, None).double()
        assert (one - expected[r]).abs().max().item() <= 1e-5 * expected.abs().max().item()


@pytest.mark.parametrize("qtype", KEPT, ids=lambda t: t.name)
@pytest.mark.parametrize("m", [1, 3, 8, 12, 16])
def test_gemv_of_long_rows_follows_the_dequantized_product(isa_level, qtype, m) -> None:
    """Rows of 4608 weights, in the file's order and regrouped: past csrc/gguf_q16.h's Q16_L1_ROW_WEIGHTS (4096:
    the K-quant single-row GEMVs prefetch into L2) and gguf.c's GGUF_ROWS_LONG (2048: 2-8 rows are multiplied in
    parts of 1024 weights, here 5 uneven ones for the K-quants; the AVX-512 GEMV, which takes up to 32, keeps rows
    of up to GGUF_LANES_WHOLE values whole: 16 rows in parts). The exact
    product of the quantized activations (plus the bias, added once) up to float32 rounding; past the GEMV's rows
    that of the float activations."""
    cols = 4608  # 18 super-blocks
    data, dense = quantized(8, cols, qtype, seed=7)
    gen = torch.Generator().manual_seed(8)
    x, bias = torch.randn(m, cols, generator=gen), torch.randn(8, generator=gen)
    rows_in = q16_activations(x)[0] if m <= cpu_gguf.gemv_max_rows(int(qtype)) else x.double()
    expected = F.linear(rows_in, torch.from_numpy(dense).double(), bias.double())
    layouts = [(data, 1)]
    if qtype != Q.Q8_0:
        layouts.append((gguf_quant.interleave_rows(data, int(qtype)), gguf_quant.INTERLEAVE))
    for layout, interleave in layouts:
        got = gguf_quant.gguf_linear(x, layout, int(qtype), cols, bias, interleave).double()
        assert (got - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()


@pytest.mark.parametrize("rows", [3, 4])
def test_gemv_sums_the_largest_q6_k_products_without_overflow(isa_level, rows) -> None:
    """Q6_K's extremes: every q - 32 = -32 with every scale -128 (4096 a weight once folded) against activations
    all at the int16 maximum: a block's 32 products sum to 2^32, past int32. Three rows take the row-at-a-time
    GEMV, four the four-row one (a super-block at a time)."""
    cols = 256
    block = np.zeros(210, dtype=np.uint8)  # ql = qh = 0: every q = 0
    block[192:208] = 0x80  # int8 scales -128
    block[208:210] = np.array([2.0**-10], dtype=np.float16).view(np.uint8)
    data = torch.from_numpy(np.tile(block, (rows, 1)))
    x = torch.ones(1, cols)
    got = gguf_quant.gguf_linear(x, data, int(Q.Q6_K), cols, None)
    torch.testing.assert_close(got, torch.full((1, rows), 2.0**-10 * 4096 * cols), rtol=1e-6, atol=0)


def test_quantized_tensor_refuses_bytes_that_do_not_hold_its_shape() -> None:
    data, _ = quantized(4, 64, Q.Q4_1)
    with pytest.raises(ValueError, match="Q4_1 data .* does not hold"):
        QuantizedTensor(data, int(Q.Q4_1), (4, 96))
    with pytest.raises(ValueError, match="GGML type 13 is not kept"):
        QuantizedTensor(data, 13, (4, 64))
    with pytest.raises(ValueError, match="Q4_K data .* does not hold"):
        QuantizedTensor(data, int(Q.Q4_K), (4, 64))


def test_quantization_is_detected_from_the_file_or_refused_by_name() -> None:
    assert resolve_quantization(None, "gguf", fast_gguf_kernels=True) == "gguf"
    # Without kernels that take every batch size, unset means dequantize at load; asked for, blocks are kept.
    assert resolve_quantization(None, "gguf", fast_gguf_kernels=False) is None
    assert resolve_quantization("gguf", "gguf", fast_gguf_kernels=False) == "gguf"
    assert resolve_quantization(None, "safetensors", True) is None
    assert resolve_quantization("none", "gguf", True) is None
    with pytest.raises(ValueError, match="'gguf' needs a .gguf model file"):
        resolve_quantization("gguf", "safetensors", True)
    with pytest.raises(ValueError, match="quantization 'bitsandbytes' is not supported yet"):
        resolve_quantization("bitsandbytes", "safetensors", True)


def test_every_level_with_avx2_has_the_panel_kernels(isa_level) -> None:
    from pagedserve.worker.dtypes import has_gguf_panel_kernels

    assert has_gguf_panel_kernels(torch.device("cpu")) == (isa_level != "portable")


def test_gguf_blocks_are_the_default_where_the_panels_build_and_the_cpu_has_no_amx(isa_level) -> None:
    """With AMX tiles a bf16 GEMM on weights dequantized at load is likelier faster past a few rows."""
    from pagedserve.cpu_info import cpu_info
    from pagedserve.worker.dtypes import gguf_blocks_by_default

    expected = isa_level != "portable" and not cpu_info().has_amx
    assert gguf_blocks_by_default(torch.device("cpu")) == expected
    assert not gguf_blocks_by_default(torch.device("meta"))


@pytest.mark.parametrize("qtype", KEPT[:3], ids=lambda t: t.name)  # K-quants: the Q4_K_M test below
@pytest.mark.parametrize("architecture,tied", [("llama", True), ("qwen2", False)])
def test_tiny_model_kept_quantized_matches_it_dequantized(tmp_path, qtype, architecture, tied) -> None:
    """Every matrix (embedding and LM head included) stays in its blocks; logits of a prefill in chunks and of
    decode steps equal those of the same file dequantized at load, within 1e-4."""
    tiny = write_tiny_gguf(tmp_path / "tiny.gguf", architecture=architecture, tensor_type=qtype, tied=tied)
    config, kept = load_model(tiny.path, keep_quantized=True)
    _, dense = load_model(tiny.path, keep_quantized=False)
    layer = kept.model.layers[0]
    for module in (layer.self_attn.qkv_proj, layer.mlp.down_proj, kept.model.embed_tokens, kept.lm_head):
        assert module.weight_type == int(qtype) and module.weight.dtype == torch.uint8
    kept_bytes = sum(p.numel() * p.element_size() for p in kept.parameters())
    dense_bytes = sum(p.numel() * p.element_size() for p in dense.parameters())
    assert kept_bytes < 0.4 * dense_bytes
    tokens = torch.randint(3, config.vocab_size, (11,), generator=torch.Generator().manual_seed(2)).tolist()
    got = logits_of(kept, config, tokens, [6, 3, 1, 1])
    torch.testing.assert_close(got, logits_of(dense, config, tokens, [6, 3, 1, 1]), atol=1e-4, rtol=1e-4)


def test_merged_parts_in_different_types_keep_their_own_blocks(tmp_path) -> None:
    """As in Q4_K_M files, where attn_v is stored in another type than attn_q / attn_k: each part keeps its blocks
    and is multiplied on its own. A float part beside quantized ones makes that layer float (its kept parts
    widened). Logits equal the dequantized model's."""
    mixed = write_tiny_gguf(
        tmp_path / "mixed.gguf",
        tensor_type=Q.Q8_0,
        seed=3,
        type_overrides={
            "blk.0.attn_v.weight": Q.Q4_1,
            "blk.1.attn_k.weight": Q.Q4_0,
            "blk.1.attn_v.weight": Q.F32,
            "blk.1.ffn_up.weight": Q.Q4_1,
        },
    )
    config, kept = load_model(mixed.path, keep_quantized=True)
    _, dense = load_model(mixed.path, keep_quantized=False)
    first, second = (layer for layer in kept.model.layers)
    assert first.self_attn.qkv_proj.part_types == {"q": int(Q.Q8_0), "k": int(Q.Q8_0), "v": int(Q.Q4_1)}
    assert first.self_attn.qkv_proj.weight_part_v.dtype == torch.uint8
    assert second.self_attn.qkv_proj.part_types is None and second.self_attn.qkv_proj.weight_type is None
    assert second.self_attn.qkv_proj.weight.dtype == torch.float32
    assert second.mlp.gate_up_proj.part_types == {"gate": int(Q.Q8_0), "up": int(Q.Q4_1)}
    assert first.mlp.gate_up_proj.weight_type == int(Q.Q8_0) and first.mlp.gate_up_proj.part_types is None
    tokens = [5, 9, 14, 3, 22, 7, 8]
    got = logits_of(kept, config, tokens, [6, 1])
    torch.testing.assert_close(got, logits_of(dense, config, tokens, [6, 1]), atol=1e-4, rtol=1e-4)


def write_tiny_q4_k_m(path):
    """A tiny file in llama.cpp's Q4_K_M mix: Q4_K, with attn_v, ffn_down and the output in Q6_K; 256 wide."""
    overrides = {"output.weight": Q.Q6_K}
    for layer in range(2):
        overrides |= {f"blk.{layer}.attn_v.weight": Q.Q6_K, f"blk.{layer}.ffn_down.weight": Q.Q6_K}
    return write_tiny_gguf(
        path, tensor_type=Q.Q4_K, tied=False, seed=5, type_overrides=overrides, hidden=256, ffn=512
    )


def test_a_q4_k_m_style_model_runs_from_its_k_quant_blocks(tmp_path) -> None:
    """llama.cpp's Q4_K_M mix: Q4_K matrices, with attn_v, ffn_down and the output in Q6_K. Every matrix stays in
    its super-blocks (q|k|v as parts of two types), at under a fifth of the float32 bytes; logits of chunked
    prefill and decode equal the file dequantized at load within 3e-4 (the decode GEMVs' 16-bit activations, whose
    rounding bound the kernel tests check: 1.4e-4 measured on this model; 256-wide rows, more than the others')."""
    tiny = write_tiny_q4_k_m(tmp_path / "q4km.gguf")
    config, kept = load_model(tiny.path, keep_quantized=True)
    _, dense = load_model(tiny.path, keep_quantized=False)
    layer = kept.model.layers[0]
    assert layer.self_attn.qkv_proj.part_types == {"q": int(Q.Q4_K), "k": int(Q.Q4_K), "v": int(Q.Q6_K)}
    assert layer.mlp.gate_up_proj.weight_type == int(Q.Q4_K)
    assert layer.mlp.down_proj.weight_type == int(Q.Q6_K) and layer.self_attn.o_proj.weight_type == int(
        Q.Q4_K
    )
    assert kept.model.embed_tokens.weight_type == int(Q.Q4_K) and kept.lm_head.weight_type == int(Q.Q6_K)
    stored = [*kept.parameters(), *(b for name, b in kept.named_buffers() if ".weight_" in name)]
    kept_bytes = sum(t.numel() * t.element_size() for t in stored)
    dense_bytes = sum(p.numel() * p.element_size() for p in dense.parameters())
    assert kept_bytes < 0.2 * dense_bytes
    tokens = torch.randint(3, config.vocab_size, (11,), generator=torch.Generator().manual_seed(2)).tolist()
    got = logits_of(kept, config, tokens, [6, 3, 1, 1])
    torch.testing.assert_close(got, logits_of(dense, config, tokens, [6, 3, 1, 1]), atol=3e-4, rtol=1e-4)
