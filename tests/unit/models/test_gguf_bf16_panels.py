"""GGUF products past the GEMVs' rows in bfloat16 panels (csrc/panel_gemm.c, the avx512_bf16 level): the rows and
the dequantized weights rounded to bfloat16, sums in float32. Where the kernel level has no bfloat16 instructions
the kernel refuses and the layers keep their float32 panels; on this machine's levels both sides are checked."""

from __future__ import annotations

import gguf
import pytest
import torch
import torch.nn.functional as F
from model_steps import load_model, logits_of
from test_model_gguf_kept import KEPT, cols_for, quantized, random_blocks, write_tiny_q4_k_m
from tiny_gguf_writer import write_tiny_gguf

from pagedserve import LLM, SamplingParams
from pagedserve.layers import gguf_quant
from pagedserve.layers.embedding import LMHead
from pagedserve.layers.gguf_quant import INTERLEAVE, interleavable, interleave_rows
from pagedserve.layers.linear import LinearBase
from pagedserve.ops import cpu_gguf
from pagedserve.worker.dtypes import use_bf16_gguf_panels

Q = gguf.GGMLQuantizationType


def bf16_product(x: torch.Tensor, dense: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """What the panels compute, in float64: bfloat16 rows times the weights rounded to bfloat16."""
    weights = dense.bfloat16().double()
    return F.linear(x.bfloat16().double(), weights, None if bias is None else bias.double())


def test_only_the_bfloat16_level_has_the_panels(isa_level) -> None:
    assert cpu_gguf.has_bf16_panels() == (isa_level == "avx512_bf16")


@pytest.mark.parametrize("qtype", KEPT, ids=lambda t: t.name)
@pytest.mark.parametrize("past", [1, 9, 32])
@pytest.mark.parametrize("n", [37, 70])
def test_panels_compute_the_bfloat16_product(isa_level, qtype, past, n) -> None:
    """Rows past the GEMV's (8 or 32 by type: cpu_gguf.gemv_max_rows; 9 rows: two tiles, 4 + 5; 40: five of 8),
    last panels of 5 and 6 columns of 32, k of 7 blocks (3 super-blocks), the file's order and rows interleaved:
    within float32 summation error of the float64 product of the rounded operands. Below the bfloat16 level the
    kernel refuses by name."""
    m = cpu_gguf.gemv_max_rows(int(qtype)) + past
    cols = cols_for(qtype)
    gen = torch.Generator().manual_seed(m + n)
    x = torch.randn(m, cols, generator=gen).bfloat16()
    bias = torch.randn(n, generator=gen)
    for data in (quantized(n, cols, qtype, seed=m)[0], random_blocks(n, cols, qtype, seed=m)):
        dense = gguf_quant.dequantize_reference(data, int(qtype), cols)
        layouts = [(data, 1)]
        if interleavable(data, int(qtype)):
            layouts.append((interleave_rows(data, int(qtype)), INTERLEAVE))
        for blocks, il in layouts:
            for b in (None, bias):
                if not cpu_gguf.has_bf16_panels():
                    with pytest.raises(ValueError, match="bfloat16 GGUF panels"):
                        cpu_gguf.gguf_gemm(x, blocks, int(qtype), cols, b, il)
                    continue
                got = cpu_gguf.gguf_gemm(x, blocks, int(qtype), cols, b, il)
                expected = bf16_product(x, dense, b)
                assert got.dtype == torch.float32 and got.shape == (m, n)
                scale = expected.abs().max().item()
                assert (got.double() - expected).abs().max().item() < 1e-5 * max(scale, 1.0)


def test_panels_write_into_a_part_of_a_wider_output() -> None:
    """A merged layer's part: the output's rows are wider than the part (ldo), the columns around it untouched
    (this machine's own level; without bfloat16 panels, refused by name)."""
    cols = cols_for(Q.Q4_K)
    data = quantized(40, cols, Q.Q4_K)[0]
    m = cpu_gguf.gemv_max_rows(int(Q.Q4_K)) + 4  # the panels' rows
    x = torch.randn(m, cols).bfloat16()
    wide = torch.full((m, 100), 7.0)
    if not cpu_gguf.has_bf16_panels():
        with pytest.raises(ValueError, match="bfloat16 GGUF panels"):
            cpu_gguf.gguf_gemm(x, data, int(Q.Q4_K), cols, None, 1, wide[:, 30:70])
        return
    cpu_gguf.gguf_gemm(x, data, int(Q.Q4_K), cols, None, 1, wide[:, 30:70])
    expected = bf16_product(x, gguf_quant.dequantize_reference(data, int(Q.Q4_K), cols), None)
    assert (wide[:, 30:70].double() - expected).abs().max().item() < 1e-5 * expected.abs().max().item()
    assert (wide[:, :30] == 7).all() and (wide[:, 70:] == 7).all()


def test_kernel_refuses_too_few_rows_and_bad_layouts(isa_level) -> None:
    cols = cols_for(Q.Q4_0)
    data = quantized(8, cols, Q.Q4_0)[0]
    gemv_rows = cpu_gguf.gemv_max_rows(int(Q.Q4_0))
    with pytest.raises(ValueError, match=f"bfloat16 GGUF panels take more than {gemv_rows} rows"):
        cpu_gguf.gguf_gemm(torch.randn(gemv_rows, cols).bfloat16(), data, int(Q.Q4_0), cols, None, 1)
    with pytest.raises(ValueError, match="not a layout the kernel reads"):
        cpu_gguf.gguf_gemm(torch.randn(9, cols).bfloat16(), data, int(Q.Q4_0), cols + 1, None, 1)


@pytest.mark.parametrize("qtype", [Q.Q4_1, Q.Q6_K], ids=lambda t: t.name)
def test_layers_take_the_panels_only_when_marked_and_past_the_gemv_rows(isa_level, qtype) -> None:
    """gguf_linear / gguf_linear_parts with bf16=True: the bfloat16 product past the GEMV's rows (where the level
    has the panels), the float32 paths otherwise; unmarked, float32 as before (float32 or bfloat16 rows alike)."""
    cols = cols_for(qtype)
    data = quantized(48, cols, qtype)[0]
    dense = gguf_quant.dequantize_reference(data, int(qtype), cols)
    gemv_rows = cpu_gguf.gemv_max_rows(int(qtype))
    x = torch.randn(gemv_rows + 12, cols)
    float_product = F.linear(x.double(), dense.double())
    for rows in (x, x.bfloat16()):
        marked = gguf_quant.gguf_linear(rows, data, int(qtype), cols, None, 1, bf16=True)
        parts = gguf_quant.gguf_linear_parts(
            rows, [(data[:16], int(qtype)), (data[16:], int(qtype))], cols, None, 1, True
        )
        plain = gguf_quant.gguf_linear(rows, data, int(qtype), cols, None, 1)
        assert marked.dtype == parts.dtype == plain.dtype == rows.dtype
        torch.testing.assert_close(marked, parts, rtol=1e-6, atol=1e-6)  # the same kernels, split by columns
        reference = (
            bf16_product(x, dense, None)
            if cpu_gguf.has_bf16_panels()
            else F.linear(rows.double(), dense.double())
        )
        tolerance = 1e-5 if rows.dtype == torch.float32 else 0.02
        assert (marked.double() - reference).abs().max().item() < tolerance * reference.abs().max().item()
        if rows.dtype == torch.float32:
            assert (plain.double() - float_product).abs().max().item() < 2e-5
    # up to its rows the GEMV computes, marked or not
    few = x[:gemv_rows]
    torch.testing.assert_close(
        gguf_quant.gguf_linear(few, data, int(qtype), cols, None, 1, bf16=True),
        gguf_quant.gguf_linear(few, data, int(qtype), cols, None, 1),
        rtol=0,
        atol=0,
    )


def test_a_tiny_q4_k_m_model_prefills_close_to_its_float32_panels(isa_level, tmp_path) -> None:
    """Every GGUF matrix marked (q|k|v parts of two types, the MLP, the LM head); a prefill of 40 tokens (past the
    GEMV's rows) and a decode step: logits within bfloat16 rounding of the float32 panels'. A prefill of 5 tokens
    takes the GEMVs, marked or not: the same logits."""
    tiny = write_tiny_q4_k_m(tmp_path / "q4km.gguf")
    config, model = load_model(tiny.path, keep_quantized=True)
    tokens = list(range(3, 44))
    before, short_before = (
        logits_of(model, config, tokens, [40, 1]),
        logits_of(model, config, tokens[:5], [5]),
    )
    gguf_layers = [
        m for m in model.modules() if isinstance(m, (LinearBase, LMHead)) and m.weight_type is not None
    ]
    assert model.lm_head in gguf_layers and len(gguf_layers) >= 9
    marked = use_bf16_gguf_panels(model)
    assert marked == (len(gguf_layers) if cpu_gguf.has_bf16_panels() else 0)
    assert all(m.gguf_bf16 == cpu_gguf.has_bf16_panels() for m in gguf_layers)
    after, short_after = logits_of(model, config, tokens, [40, 1]), logits_of(model, config, tokens[:5], [5])
    torch.testing.assert_close(after, before, atol=0.02 * before.abs().max().item(), rtol=0)
    torch.testing.assert_close(short_after, short_before, rtol=0, atol=0)
    if cpu_gguf.has_bf16_panels():
        assert not torch.equal(after[:40], before[:40])  # the prefill took the bfloat16 panels


@pytest.mark.parametrize("dtype", ["auto", "float32"])
def test_the_engine_marks_gguf_matrices_where_its_matrices_are_bfloat16(tmp_path, dtype) -> None:
    """--dtype auto keeps GGUF blocks with bfloat16 matrices (worker/dtypes.py): their prefills take the panels
    where the CPU has them; --dtype float32 keeps every product in float32. Both generate."""
    from pagedserve.cpu_info import cpu_info

    tiny = write_tiny_gguf(tmp_path / "tiny.gguf", tensor_type=Q.Q4_0)
    llm = LLM(str(tiny.path), quantization="gguf", dtype=dtype, max_model_len=64, kv_cache_memory_bytes=2**22)
    try:
        runner = llm.llm_engine.executor.runner
        layers = [
            m
            for m in runner.model.modules()
            if isinstance(m, (LinearBase, LMHead)) and m.weight_type is not None  # products, not the lookup
        ]
        expected = dtype == "auto" and cpu_gguf.has_bf16_panels() and runner.weight_dtype == torch.bfloat16
        assert layers and all(getattr(m, "gguf_bf16", False) == expected for m in layers)
        if dtype == "auto" and cpu_info().fast_bf16:
            assert runner.weight_dtype == torch.bfloat16
        out = llm.generate(
            [{"prompt_token_ids": list(range(3, 23))}],
            SamplingParams(temperature=0, max_tokens=4, ignore_eos=True),
            use_tqdm=False,
        )
        assert len(out[0].outputs[0].token_ids) == 4
    finally:
        llm.llm_engine.shutdown()
