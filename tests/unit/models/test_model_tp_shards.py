"""Each tensor-parallel rank keeps exactly its slice of every weight, whatever the form: a tiny GGUF whose merged
layers mix block types (Q4_K_M style: parts kept apart), loaded as rank 0 and rank 1 of 2 (the group state is set
directly; loading runs no collective), equals the matching rows / columns of the whole model."""

from __future__ import annotations

import gguf
import pytest
import torch
from model_steps import load_model
from tiny_gguf_writer import TINY_HEAD_DIM, write_tiny_gguf

from pagedserve.distributed import parallel_state
from pagedserve.distributed.parallel_state import TensorParallel
from pagedserve.layers.gguf_quant import dequantize_reference

Q = gguf.GGMLQuantizationType


def _matrix(module: torch.nn.Module, part: str | None = None) -> torch.Tensor:
    """A layer's weight (or one part of a layer whose parts differ in type) as float32."""
    if part is not None and getattr(module, "part_types", None):
        return dequantize_reference(
            getattr(module, f"weight_part_{part}"), module.part_types[part], module.input_size
        )
    if getattr(module, "weight_type", None) is not None:
        rows = dequantize_reference(
            module.weight.data,
            module.weight_type,
            module.weight.data.shape[1] // {2: 18, 3: 20, 8: 34}[module.weight_type] * 32,
        )
        if part is None:
            return rows
        offset, size = module.shard_offsets[part]
        return rows[offset : offset + size]
    weight = module.weight.data.float()
    if part is None:
        return weight
    offset, size = module.shard_offsets[part]
    return weight[offset : offset + size]


@pytest.fixture()
def mixed_gguf(tmp_path):
    return write_tiny_gguf(
        tmp_path / "mixed.gguf",
        tensor_type=Q.Q8_0,
        seed=3,
        tied=False,
        type_overrides={"blk.0.attn_v.weight": Q.Q4_1, "blk.1.ffn_up.weight": Q.Q4_1},
    )


def test_each_rank_keeps_its_rows_and_columns(mixed_gguf, monkeypatch) -> None:
    _, whole = load_model(mixed_gguf.path, keep_quantized=True)
    full = whole.model.layers[0]
    assert full.self_attn.qkv_proj.part_types is not None  # the mixed-type path is the one under test
    ranks = []
    for rank in range(2):
        monkeypatch.setattr(parallel_state, "_STATE", TensorParallel(rank, 2))
        ranks.append(load_model(mixed_gguf.path, keep_quantized=True)[1])
    monkeypatch.setattr(parallel_state, "_STATE", TensorParallel())
    # 4 query heads / 2 KV heads: one KV head and two query heads a rank.
    q_rows, kv_rows = 2 * TINY_HEAD_DIM, TINY_HEAD_DIM
    for index in range(2):
        whole_layer = whole.model.layers[index]
        for rank, model in enumerate(ranks):
            layer = model.model.layers[index]
            for part, rows in (("q", q_rows), ("k", kv_rows), ("v", kv_rows)):
                expected = _matrix(whole_layer.self_attn.qkv_proj, part)[rank * rows : (rank + 1) * rows]
                assert torch.equal(_matrix(layer.self_attn.qkv_proj, part), expected), (index, rank, part)
            columns = slice(rank * q_rows, (rank + 1) * q_rows)
            assert torch.equal(
                _matrix(layer.self_attn.o_proj), _matrix(whole_layer.self_attn.o_proj)[:, columns]
            )
            ffn = whole_layer.mlp.down_proj.input_size // 2
            for part in ("gate", "up"):
                expected = _matrix(whole_layer.mlp.gate_up_proj, part)[rank * ffn : (rank + 1) * ffn]
                assert torch.equal(_matrix(layer.mlp.gate_up_proj, part), expected)
            down = _matrix(whole_layer.mlp.down_proj)[:, rank * ffn : (rank + 1) * ffn]
            assert torch.equal(_matrix(layer.mlp.down_proj), down)
    vocab = whole.lm_head.weight.shape[0]
    first = -(-vocab // 2)  # rank 0 holds the extra row of an odd vocabulary
    head = [m.lm_head for m in ranks]
    assert head[0].vocab_slice == (0, first) and head[1].vocab_slice == (first, vocab - first)
    assert torch.equal(torch.cat([h.weight.data for h in head]), whole.lm_head.weight.data)
