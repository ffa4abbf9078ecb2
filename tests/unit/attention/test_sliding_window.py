"""Sliding-window attention (Mistral, Gemma 3's local layers): a query sees only its last `window` keys, itself
included (transformers' `kv_idx > q_idx - sliding_window`). The reference backend's mask is checked against that
definition and a dense recomputation; the C decode kernel (every ISA level here), its PyTorch fallback, the CPU
prefill and the Triton kernels (under TRITON_INTERPRET=1 on the CPU) against the reference: windows shorter than a
block, than a Triton tile and than a decode partition, a window of 1, and windows longer than every sequence."""

from __future__ import annotations

import pytest
import torch
from tests.unit.attention.test_decode_kernel import random_decode_batch

from pagedserve.attention.backend import (
    causal_mask,
    gather_sequence_kv,
    get_attention_backend,
    key_rows,
    value_rows,
    window_start,
)

WINDOWS = [1, 5, 16, 20, 64, 4096]


@pytest.mark.parametrize("window", [None, 1, 3, 7, 100])
@pytest.mark.parametrize("queries,keys", [(5, 5), (3, 10), (1, 9)])
def test_mask_is_transformers_definition(window, queries, keys):
    mask = causal_mask(queries, keys, window, torch.device("cpu"))
    for i in range(queries):
        q_pos = keys - queries + i
        for kv in range(keys):
            assert bool(mask[i, kv]) == (kv <= q_pos and (window is None or kv > q_pos - window))


def test_window_start():
    assert window_start(0, 4) == 0 and window_start(10, None) == 0
    assert window_start(10, 4) == 7  # position 10 sees keys 7..10
    assert window_start(2, 4) == 0


@pytest.mark.parametrize("window", [1, 5, 40])
def test_reference_equals_attention_over_the_last_window_keys(window):
    """Each decode row equals plain softmax attention over only its last `window` keys (no mask at all)."""
    q, k, v, k_cache, v_cache, metadata = random_decode_batch(torch.float32, seed=3)
    got = get_attention_backend("torch_ref").forward(q, k, v, k_cache, v_cache, metadata, 0.125, window)
    group = q.shape[1] // k.shape[1]
    for row, length in enumerate(metadata.decode_seq_lens.tolist()):
        table = metadata.decode_block_tables[row]
        keys = gather_sequence_kv(key_rows(k_cache), table, length)[-window:].repeat_interleave(group, 1)
        values = gather_sequence_kv(value_rows(v_cache), table, length)[-window:].repeat_interleave(group, 1)
        probs = (torch.einsum("hd,khd->hk", q[row], keys) * 0.125).softmax(-1)
        torch.testing.assert_close(got[row], torch.einsum("hk,khd->hd", probs, values), atol=1e-5, rtol=1e-5)


@pytest.mark.usefixtures("isa_level")
@pytest.mark.parametrize("backend", ["cpu", "cpu_torch"])
@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize(
    "dtype,cache_dtype,tolerance",
    [
        (torch.float32, torch.float32, 1e-5),
        (torch.bfloat16, torch.bfloat16, 2e-2),
        (torch.bfloat16, torch.float8_e4m3fn, 2e-2),
    ],
)
@pytest.mark.parametrize("group,head_dim", [(3, 64), (9, 64), (2, 48)])
def test_cpu_decode_with_a_window(backend, window, dtype, cache_dtype, tolerance, group, head_dim):
    """Lengths 1-100 over 16-token blocks; group 9 and head_dim 48 take the kernel's generic path."""
    q, k, v, k_cache, v_cache, metadata = random_decode_batch(dtype, 2, 2, group, head_dim)
    k_cache, v_cache = k_cache.to(cache_dtype), v_cache.to(cache_dtype)
    expected = get_attention_backend("torch_ref").forward(
        q, k, v, k_cache.clone(), v_cache.clone(), metadata, head_dim**-0.5, window
    )
    got = get_attention_backend(backend).forward(q, k, v, k_cache, v_cache, metadata, head_dim**-0.5, window)
    assert not torch.isnan(got).any()
    torch.testing.assert_close(got.float(), expected.float(), atol=tolerance, rtol=tolerance)
    if window < 100:  # the window changes the answer for the 100-token row
        full = get_attention_backend(backend).forward(q, k, v, k_cache, v_cache, metadata, head_dim**-0.5)
        assert not torch.allclose(full[3].float(), got[3].float(), atol=1e-3)


@pytest.mark.parametrize("window", [3, 16, 50, 4096])
@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_cpu_step_with_prefills_and_a_window(window, dtype, tolerance):
    """Decodes and prefill chunks in one step: a fresh prompt (SDPA on its own K/V), chunks after cached context
    (keys before the window are not gathered)."""
    from tests.unit.attention.test_triton_kernels import make_step

    from pagedserve.worker.inputs import prepare_inputs

    sequences, num_blocks = make_step([(40, 1), (0, 37), (32, 20), (70, 100)], 16, shared_prefix_blocks=2)
    step = prepare_inputs(sequences, 16, torch.device("cpu"))
    gen = torch.Generator().manual_seed(5)
    tokens = step.input_ids.shape[0]
    q = torch.randn(tokens, 6, 64, generator=gen).to(dtype)
    k, v = (torch.randn(tokens, 2, 64, generator=gen).to(dtype) for _ in range(2))
    k_cache = torch.randn(num_blocks, 2, 64, 16, generator=gen).to(dtype)
    v_cache = torch.randn(num_blocks, 2, 16, 64, generator=gen).to(dtype)
    expected = get_attention_backend("torch_ref").forward(
        q, k, v, k_cache.clone(), v_cache.clone(), step.metadata, 0.125, window
    )
    got = get_attention_backend("cpu").forward(q, k, v, k_cache, v_cache, step.metadata, 0.125, window)
    torch.testing.assert_close(got.float(), expected.float(), atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("window", [1, 5, 40, 300])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_kernels_with_a_window(window, dtype, test_device):
    """Decodes over up to 3 split-K partitions and prefill chunks of up to two 64-row tiles: windows shorter than a
    key tile leave some rows with nothing to see in a tile (no NaN), longer ones cross partitions."""
    pytest.importorskip("triton", reason="triton comes with the dev extra (pip install -e '.[dev]')")
    from tests.unit.attention.test_triton_kernels import _on_cpu, assert_close, make_step

    from pagedserve.worker.inputs import prepare_inputs

    sequences, num_blocks = make_step([(16, 1), (600, 1), (0, 70), (70, 100)], 16, shared_prefix_blocks=2)
    step = prepare_inputs(sequences, 16, test_device)
    gen = torch.Generator().manual_seed(7)
    tokens = step.input_ids.shape[0]

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(dtype).to(test_device)

    q, k, v = rand(tokens, 6, 64), rand(tokens, 2, 64), rand(tokens, 2, 64)
    k_cache, v_cache = rand(num_blocks, 2, 64, 16), rand(num_blocks, 2, 16, 64)
    expected = get_attention_backend("torch_ref").forward(
        q.cpu(), k.cpu(), v.cpu(), k_cache.cpu(), v_cache.cpu(), _on_cpu(step.metadata), 0.125, window
    )
    got = get_attention_backend("triton").forward(q, k, v, k_cache, v_cache, step.metadata, 0.125, window)
    assert_close(got.cpu(), expected, dtype)
