"""Attention logit soft-capping (Gemma 2: scores become softcap * tanh(score / softcap) before the softmax). The
reference backend against a dense recomputation from that definition; the C decode kernel (every ISA level here,
its fast and generic paths), its PyTorch fallback, the CPU prefill (SDPA has no soft-capping: its own path) and the
Triton kernels (TRITON_INTERPRET=1 on the CPU) against the reference, with and without a sliding window. Scores are
scaled up so the cap changes the answer."""

from __future__ import annotations

import pytest
import torch
from tests.unit.attention.test_decode_kernel import random_decode_batch

from pagedserve.attention.backend import gather_sequence_kv, get_attention_backend, key_rows, value_rows

SCALE = 2.0  # large scores: a cap of 5 bends most of them


def test_reference_equals_the_definition():
    q, k, v, k_cache, v_cache, metadata = random_decode_batch(torch.float32, seed=4)
    got = get_attention_backend("torch_ref").forward(q, k, v, k_cache, v_cache, metadata, SCALE, None, 5.0)
    group = q.shape[1] // k.shape[1]
    for row, length in enumerate(metadata.decode_seq_lens.tolist()):
        table = metadata.decode_block_tables[row]
        keys = gather_sequence_kv(key_rows(k_cache), table, length).repeat_interleave(group, 1)
        values = gather_sequence_kv(value_rows(v_cache), table, length).repeat_interleave(group, 1)
        scores = torch.einsum("hd,khd->hk", q[row], keys) * SCALE
        probs = (5.0 * torch.tanh(scores / 5.0)).softmax(-1)
        torch.testing.assert_close(got[row], torch.einsum("hk,khd->hd", probs, values), atol=1e-5, rtol=1e-5)
    uncapped = get_attention_backend("torch_ref").forward(q, k, v, k_cache, v_cache, metadata, SCALE)
    assert not torch.allclose(uncapped, got, atol=1e-2)


@pytest.mark.usefixtures("isa_level")
@pytest.mark.parametrize("backend", ["cpu", "cpu_torch"])
@pytest.mark.parametrize("window", [None, 20])
@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("group,head_dim", [(2, 64), (9, 48)])
def test_cpu_decode_with_a_cap(backend, window, dtype, tolerance, group, head_dim):
    """group 2 / head_dim 64: the kernel's register path; group 9 / head_dim 48: its generic one."""
    q, k, v, k_cache, v_cache, metadata = random_decode_batch(dtype, 2, 2, group, head_dim)
    expected = get_attention_backend("torch_ref").forward(
        q, k, v, k_cache.clone(), v_cache.clone(), metadata, SCALE, window, 5.0
    )
    got = get_attention_backend(backend).forward(q, k, v, k_cache, v_cache, metadata, SCALE, window, 5.0)
    torch.testing.assert_close(got.float(), expected.float(), atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("window", [None, 16])
@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_cpu_step_with_prefills_and_a_cap(window, dtype, tolerance):
    """Decodes and prefill chunks in one step: a fresh prompt, chunks after cached context."""
    from tests.unit.attention.test_triton_kernels import make_step

    from pagedserve.worker.inputs import prepare_inputs

    sequences, num_blocks = make_step([(40, 1), (0, 37), (32, 20), (70, 100)], 16, shared_prefix_blocks=2)
    step = prepare_inputs(sequences, 16, torch.device("cpu"))
    gen = torch.Generator().manual_seed(6)
    tokens = step.input_ids.shape[0]
    q = torch.randn(tokens, 6, 64, generator=gen).to(dtype)
    k, v = (torch.randn(tokens, 2, 64, generator=gen).to(dtype) for _ in range(2))
    k_cache = torch.randn(num_blocks, 2, 64, 16, generator=gen).to(dtype)
    v_cache = torch.randn(num_blocks, 2, 16, 64, generator=gen).to(dtype)
    expected = get_attention_backend("torch_ref").forward(
        q, k, v, k_cache.clone(), v_cache.clone(), step.metadata, 0.5, window, 5.0
    )
    got = get_attention_backend("cpu").forward(q, k, v, k_cache, v_cache, step.metadata, 0.5, window, 5.0)
    torch.testing.assert_close(got.float(), expected.float(), atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("window", [None, 40])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_kernels_with_a_cap(window, dtype, test_device):
    pytest.importorskip("triton", reason="triton comes with the dev extra (pip install -e '.[dev]')")
    from tests.unit.attention.test_triton_kernels import _on_cpu, assert_close, make_step

    from pagedserve.worker.inputs import prepare_inputs

    sequences, num_blocks = make_step([(16, 1), (600, 1), (0, 70), (70, 100)], 16, shared_prefix_blocks=2)
    step = prepare_inputs(sequences, 16, test_device)
    gen = torch.Generator().manual_seed(8)
    tokens = step.input_ids.shape[0]

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(dtype).to(test_device)

    q, k, v = rand(tokens, 6, 64), rand(tokens, 2, 64), rand(tokens, 2, 64)
    k_cache, v_cache = rand(num_blocks, 2, 64, 16), rand(num_blocks, 2, 16, 64)
    expected = get_attention_backend("torch_ref").forward(
        q.cpu(), k.cpu(), v.cpu(), k_cache.cpu(), v_cache.cpu(), _on_cpu(step.metadata), 0.5, window, 5.0
    )
    got = get_attention_backend("triton").forward(q, k, v, k_cache, v_cache, step.metadata, 0.5, window, 5.0)
    assert_close(got.cpu(), expected, dtype)
