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


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q6_K], ids=lambda t: t.name)
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("m", [1, 3])
def test_k_quant_experts_follow_their_dequantized_product(isa_level, qtype, interleaved, m) -> None:
    """Experts in Q4_K / Q6_K super-blocks (a Q4_K_M MoE file's; 256-wide, which the tiny models above are not),
    called with the router's logits: the kernel's output against the same routing over the experts dequantized,
    in float64. Its GEMVs quantize both the tokens and the SiLU products to 16 bits: within 1e-3 of the output's
    scale (the bound test_model_gguf_kept checks a product at a time); a misread block is off by its whole
    scale."""
    from test_model_gguf_kept import quantized

    from pagedserve.layers.gguf_quant import dequantize, interleave_rows
    from pagedserve.ops import cpu_gguf

    hidden, inter, experts, top_k = 256, 256, 3, 2
    gate_up = [quantized(2 * inter, hidden, qtype, seed=e)[0] for e in range(experts)]
    down = [quantized(hidden, inter, qtype, seed=10 + e)[0] for e in range(experts)]
    dense_gate_up = [dequantize(blocks, int(qtype), hidden).double() for blocks in gate_up]
    dense_down = [dequantize(blocks, int(qtype), inter).double() for blocks in down]
    if interleaved:
        gate_up = [interleave_rows(blocks, int(qtype)) for blocks in gate_up]
        down = [interleave_rows(blocks, int(qtype)) for blocks in down]
    il = 4 if interleaved else 1

    def table(blocks: list[torch.Tensor]) -> tuple[torch.Tensor, int, int]:
        return torch.tensor([b.data_ptr() for b in blocks], dtype=torch.int64), int(qtype), il

    gen = torch.Generator().manual_seed(m)
    x, logits = torch.randn(m, hidden, generator=gen), torch.randn(m, experts, generator=gen)
    got = cpu_gguf.gguf_moe(x, None, logits, table(gate_up), table(down), inter, top_k, renormalize=True)
    weights, chosen = torch.softmax(logits.double(), dim=-1).topk(top_k, dim=-1)
    weights = weights / weights.sum(-1, keepdim=True)
    expected = torch.zeros(m, hidden, dtype=torch.float64)
    for t in range(m):
        for weight, e in zip(weights[t], chosen[t].tolist(), strict=True):
            gate, up = (x[t].double() @ dense_gate_up[e].T).split(inter)
            expected[t] += weight * ((torch.nn.functional.silu(gate) * up) @ dense_down[e].T)
    scale = expected.abs().max().item()
    torch.testing.assert_close(got.double(), expected, atol=1e-3 * scale, rtol=0)
