"""GGUF matrices with their rows interleaved in groups of four (gguf_quant.interleave_rows, csrc/gguf.h): the same
bytes in another order, so every kernel path gives exactly the numbers of the file's layout."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from test_model_gguf_kept import KEPT, cols_for, quantized, random_blocks

from pagedserve.layers import gguf_quant
from pagedserve.ops import cpu_gguf

Q = gguf.GGMLQuantizationType
ROWS = 44  # 11 groups: an odd number of groups for the two threads' halves


@pytest.mark.parametrize("qtype", KEPT, ids=lambda t: t.name)
def test_interleaving_is_a_permutation_of_whole_blocks(qtype) -> None:
    data = random_blocks(ROWS, cols_for(qtype), qtype)
    mixed = gguf_quant.interleave_rows(data, int(qtype))
    assert mixed.shape == data.shape and not torch.equal(mixed, data)
    block = gguf.GGML_QUANT_SIZES[qtype][1]
    # block 1 of row 6 (group 1, place 2) sits after block 0 of rows 4-7 and block 1 of rows 4 and 5
    group = mixed[4:8].reshape(-1)
    start = (4 + 2) * block
    assert torch.equal(group[start : start + block], data[6, block : 2 * block])
    assert torch.equal(gguf_quant.deinterleave_rows(mixed, int(qtype)), data)


@pytest.mark.parametrize("qtype", KEPT, ids=lambda t: t.name)
@pytest.mark.parametrize("m", [1, 2, 5, 8, 9, 33])
def test_every_kernel_path_gives_the_plain_layouts_numbers(isa_level, qtype, m) -> None:
    """Up to 8 rows the GEMV (four weight rows at a time at one row), above it AVX2's panels or dequantize + GEMM:
    bit for bit the file layout's result, bias or not."""
    cols = cols_for(qtype)
    data = quantized(ROWS, cols, qtype, seed=m)[0]
    mixed = gguf_quant.interleave_rows(data, int(qtype))
    gen = torch.Generator().manual_seed(m)
    x = torch.randn(m, cols, generator=gen)
    bias = torch.randn(ROWS, generator=gen)
    for b in (None, bias):
        plain = gguf_quant.gguf_linear(x, data, int(qtype), cols, b)
        got = gguf_quant.gguf_linear(x, mixed, int(qtype), cols, b, interleave=gguf_quant.INTERLEAVE)
        assert torch.equal(got, plain)


@pytest.mark.parametrize("qtype", KEPT, ids=lambda t: t.name)
def test_dequantize_returns_rows_in_file_order(isa_level, qtype) -> None:
    cols = cols_for(qtype)
    data = random_blocks(ROWS, cols, qtype, seed=5)
    mixed = gguf_quant.interleave_rows(data, int(qtype))
    expected = gguf.quants.dequantize(data.numpy(), qtype)
    got = gguf_quant.dequantize(mixed, int(qtype), cols, gguf_quant.INTERLEAVE)
    np.testing.assert_array_equal(got.numpy(), expected)


def test_rows_that_do_not_fill_groups_are_refused(isa_level) -> None:
    data = quantized(ROWS + 2, 224, Q.Q4_0)[0]
    with pytest.raises(ValueError, match="groups of 4"):
        gguf_quant.interleave_rows(data, int(Q.Q4_0))
    # the kernels check it too (a caller that passed the flag with such a matrix)
    with pytest.raises(ValueError, match="not a layout the kernel reads"):
        cpu_gguf.gguf_gemm(torch.randn(1, 224), data, int(Q.Q4_0), 224, None, interleave=4)
    with pytest.raises(ValueError, match="not a layout the kernel reads"):
        cpu_gguf.gguf_dequantize(data, int(Q.Q4_0), 224, interleave=3)


def test_long_k_quant_rows_keep_the_files_order(isa_level) -> None:
    """K-quant rows longer than L1_ROW_WEIGHTS stay as in the file (the GEMV prefetches them into L2, and measured
    faster unregrouped); the simple types' rows of any length are regrouped. The number is csrc's too."""
    limit = gguf_quant.L1_ROW_WEIGHTS
    for qtype in (Q.Q4_K, Q.Q6_K):
        assert gguf_quant.interleavable(random_blocks(8, limit, qtype), int(qtype))
        assert not gguf_quant.interleavable(random_blocks(8, limit + 256, qtype), int(qtype))
    assert gguf_quant.interleavable(random_blocks(8, limit + 256, Q.Q4_0), int(Q.Q4_0))
    header = Path(gguf_quant.__file__).parents[1] / "ops" / "csrc" / "gguf_q16.h"
    assert f"#define Q16_L1_ROW_WEIGHTS {limit}\n" in header.read_text()


@pytest.mark.parametrize("tied", [True, False])
def test_a_loaded_model_regrouped_gives_the_same_logits(tmp_path, tied) -> None:
    """After loading, every Q4_0 / Q4_1 matrix a GEMV multiplies is regrouped (merged parts of the two types each on
    its own, the LM head too: tied, the embedding shares the regrouped table and gathers its rows from it); a Q8_0
    one keeps file order. Logits of chunked prefill and decode steps are those of the file's layout, bit for bit."""
    from model_steps import load_model, logits_of
    from tiny_gguf_writer import write_tiny_gguf

    from pagedserve.layers.embedding import interleave_gguf_weights

    overrides = {"blk.0.attn_v.weight": Q.Q4_1, "blk.1.ffn_down.weight": Q.Q8_0}
    tiny = write_tiny_gguf(
        tmp_path / "mix.gguf", tensor_type=Q.Q4_0, tied=tied, seed=7, type_overrides=overrides
    )
    config, plain = load_model(tiny.path, keep_quantized=True)
    _, regrouped = load_model(tiny.path, keep_quantized=True)
    changed = interleave_gguf_weights(regrouped)
    assert changed == 4 + 3 + 1  # qkv, o, gate|up, down a layer, not Q8_0, + the LM head
    assert interleave_gguf_weights(regrouped) == 0  # once
    layer = regrouped.model.layers[0]
    assert layer.self_attn.qkv_proj.part_types is not None
    assert layer.self_attn.qkv_proj.weight_interleave == gguf_quant.INTERLEAVE
    assert regrouped.lm_head.weight_interleave == gguf_quant.INTERLEAVE
    assert regrouped.model.layers[1].mlp.down_proj.weight_interleave == 1
    embedding = regrouped.model.embed_tokens
    assert embedding.weight_interleave == (gguf_quant.INTERLEAVE if tied else 1)
    assert (embedding.weight is regrouped.lm_head.weight) == tied  # one table, not a copy
    table = (
        embedding.weight
        if not tied
        else gguf_quant.deinterleave_rows(embedding.weight, embedding.weight_type)
    )
    assert torch.equal(table, plain.model.embed_tokens.weight)
    tokens = torch.randint(3, config.vocab_size, (11,), generator=torch.Generator().manual_seed(2)).tolist()
    got = logits_of(regrouped, config, tokens, [6, 3, 1, 1])
    assert torch.equal(got, logits_of(plain, config, tokens, [6, 3, 1, 1]))


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1, Q.Q8_0, Q.Q4_K, Q.Q6_K])
def test_rows_gathered_from_an_interleaved_table_are_the_files_rows(qtype) -> None:
    """An embedding lookup in a regrouped table (tied to the LM head): any ids, repeated, out of order, from every
    position in a group, come back as the file's rows, byte for byte."""
    data = quantized(16, 512, qtype, seed=3)[0]
    ids = torch.tensor([5, 0, 15, 5, 12, 3, 8, 1])
    grouped = gguf_quant.interleave_rows(data, int(qtype))
    assert torch.equal(gguf_quant.gather_rows(grouped, ids, int(qtype), gguf_quant.INTERLEAVE), data[ids])
    assert torch.equal(gguf_quant.gather_rows(data, ids, int(qtype)), data[ids])
    empty = torch.tensor([], dtype=torch.long)
    assert gguf_quant.gather_rows(grouped, empty, int(qtype), gguf_quant.INTERLEAVE).shape == (
        0,
        data.shape[1],
    )


@pytest.mark.parametrize("m", [1, 5, 9, 33])
def test_parts_of_two_types_write_their_columns_of_one_output(isa_level, m) -> None:
    """A merged layer's parts (Q4_K_M's q|k|v: Q4_K and Q6_K) each multiplied into its columns of one output (the
    kernels' output row stride, every path: GEMV, AVX2 panels, dequantize + GEMM): the columns are each part's own
    product, bit for bit, bias included."""
    cols = 256
    parts = [
        (quantized(8, cols, Q.Q4_K, seed=1)[0], int(Q.Q4_K)),
        (quantized(12, cols, Q.Q6_K, seed=2)[0], int(Q.Q6_K)),
    ]
    gen = torch.Generator().manual_seed(m)
    x, bias = torch.randn(m, cols, generator=gen), torch.randn(20, generator=gen)
    got = gguf_quant.gguf_linear_parts(x, parts, cols, bias)
    expected = torch.cat(
        [
            gguf_quant.gguf_linear(x, parts[0][0], parts[0][1], cols, bias[:8]),
            gguf_quant.gguf_linear(x, parts[1][0], parts[1][1], cols, bias[8:]),
        ],
        dim=1,
    )
    assert torch.equal(got, expected)
