"""The mixture-of-experts block in one C call (csrc/gguf_moe.c) for decode batches of GGUF experts: routing, the
chosen experts and their weighted sum follow the PyTorch block on the same blocks, for each architecture's routing
(Mixtral and Qwen3-MoE renormalize the top k, Qwen2-MoE does not and adds its gated shared expert), in the file's
row order and interleaved, Q8_0 and Q4_0 experts."""

from __future__ import annotations

import gguf
import pytest
import torch
from model_steps import load_model
from test_model_gguf_moe import CONFIGS, pairs, write_moe_gguf  # noqa: F401 (pairs: the fixture)

from pagedserve.layers.embedding import interleave_gguf_weights
from pagedserve.layers.moe import KERNEL_MAX_TOKENS, SparseMoeBlock, moe_kernels_ready, prepare_moe_kernels

Q = gguf.GGMLQuantizationType


def kept_model(pairs, tmp_path, arch: str, qtype: Q):  # noqa: F811
    f32_file = pairs[arch][1]
    path = tmp_path / f"{arch}-{qtype.name}.gguf"
    write_moe_gguf(path, f32_file.parent / arch, arch, qtype)
    return load_model(path, keep_quantized=True)[1]


def blocks_of(model) -> list[SparseMoeBlock]:
    return [module for module in model.modules() if isinstance(module, SparseMoeBlock)]


@pytest.mark.parametrize("arch", list(CONFIGS))
@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0], ids=lambda t: t.name)
@pytest.mark.parametrize("interleaved", [False, True])
def test_the_kernel_follows_the_pytorch_block(isa_level, pairs, tmp_path, arch, qtype, interleaved) -> None:  # noqa: F811
    """Same blocks, same 16-bit activations in the GEMVs: only float rounding (softmax, SiLU, the sums) differs, and
    a rounding of an activation to 16 bits it may move (d_x / 2): within 1e-4 of the output's scale. Past
    KERNEL_MAX_TOKENS rows the PyTorch block runs, bit for bit."""
    model = kept_model(pairs, tmp_path, arch, qtype)
    if interleaved:  # Q8_0 keeps the file's order (gguf_quant.INTERLEAVED_TYPES)
        assert (interleave_gguf_weights(model) > 0) == (qtype == Q.Q4_0)
    torch.manual_seed(0)
    for block in blocks_of(model):
        assert block.kernel_tables is None  # until prepared
        xs = {
            m: torch.randn(m, block.gate.input_size) for m in (1, 3, KERNEL_MAX_TOKENS, KERNEL_MAX_TOKENS + 1)
        }
        with torch.no_grad():
            expected = {m: block(x) for m, x in xs.items()}
            assert block.prepare_kernel()
            gate_up, down = block.kernel_tables
            assert (gate_up[1], down[1]) == (int(qtype), int(qtype))
            assert gate_up[2] == down[2] == (4 if interleaved and qtype == Q.Q4_0 else 1)
            for m, x in xs.items():
                got = block(x)
                if m > KERNEL_MAX_TOKENS:
                    assert torch.equal(got, expected[m])
                else:
                    scale = expected[m].abs().max().item()
                    torch.testing.assert_close(got, expected[m], atol=1e-4 * scale, rtol=0)
    assert prepare_moe_kernels(model) == (2, 2) and moe_kernels_ready(model)


def test_routing_ties_go_to_the_lower_expert_ids(pairs, tmp_path) -> None:  # noqa: F811
    """A router of zeros scores every expert the same: the kernel takes experts 0..k-1 (torch.topk leaves ties
    unspecified), each weighted 1 / k after renormalizing."""
    model = kept_model(pairs, tmp_path, "qwen3moe", Q.Q8_0)
    block = blocks_of(model)[0]
    block.gate.weight.data.zero_()
    assert block.prepare_kernel() and block.renormalize
    x = torch.randn(2, block.gate.input_size)
    with torch.no_grad():
        got = block(x)
        expected = sum(block.experts[e](x) for e in range(block.top_k)) / block.top_k
    torch.testing.assert_close(got, expected, atol=1e-4 * expected.abs().max().item(), rtol=0)


def test_float_experts_keep_the_pytorch_block(pairs) -> None:  # noqa: F811
    """Experts widened to float at load (an F32 file): no tables, no kernel, and the model's decode steps stay
    eager (moe_kernels_ready)."""
    _, model = load_model(pairs["qwen3moe"][1], keep_quantized=False)
    assert prepare_moe_kernels(model) == (2, 0)
    assert not moe_kernels_ready(model)


def test_a_bfloat16_router_is_multiplied_by_its_own_layer(pairs, tmp_path) -> None:  # noqa: F811
    """As on an AVX-512 BF16 host, where routers are stored in bfloat16: its logits come from its layer and the
    kernel routes on them (Qwen2-MoE: its shared expert's gate too), following the PyTorch block."""
    model = kept_model(pairs, tmp_path, "qwen2moe", Q.Q8_0)
    block = blocks_of(model)[0]
    for router in (block.gate, block.shared_expert_gate):
        router.weight.data = router.weight.data.bfloat16()
    x = torch.randn(3, block.gate.input_size)
    with torch.no_grad():
        expected = block(x)
        assert block.prepare_kernel()
        got = block(x)
    torch.testing.assert_close(got, expected, atol=1e-4 * expected.abs().max().item(), rtol=0)
