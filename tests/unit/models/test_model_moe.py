"""Mixture-of-experts models (Mixtral, Qwen2-MoE with its shared expert, Qwen3-MoE with dense layers beside sparse
ones): tiny random checkpoints saved by transformers (its Hub layout: one expert's matrices at a time, Mixtral's
w1/w2/w3 under block_sparse_moe) load into our model and give transformers' logits over whole prompts, chunked
prefills and batched decode steps; the router stays float when the experts are quantized; what is not supported
with experts is refused by name."""

from __future__ import annotations

import pathlib

import pytest
import torch
import transformers
from model_steps import load_model, logits_of

from pagedserve.core.scheduler_output import ScheduledSequence
from pagedserve.layers.linear import quantize_linears_fp8
from pagedserve.layers.moe import RouterLinear, SparseMoeBlock
from pagedserve.worker.inputs import prepare_inputs
from pagedserve.worker.kv_cache import allocate_kv_caches

COMMON = dict(
    vocab_size=97, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=128, rms_norm_eps=1e-5,
    # Weights 10x transformers' default spread: the experts' outputs then move the logits by O(1), so a wrong
    # routing weight or a dropped expert shows far above the 1e-4 tolerance.
    initializer_range=0.2,
)  # fmt: skip

CONFIGS = {
    "mixtral": lambda: transformers.MixtralConfig(
        **COMMON, intermediate_size=48, num_local_experts=4, num_experts_per_tok=2, tie_word_embeddings=False
    ),
    # Qwen1.5-MoE's shape: a shared expert with a sigmoid gate, top-k weights not renormalized, one dense layer.
    "qwen2_moe": lambda: transformers.Qwen2MoeConfig(
        **COMMON,
        intermediate_size=80,
        moe_intermediate_size=24,
        shared_expert_intermediate_size=40,
        num_experts=6,
        num_experts_per_tok=3,
        norm_topk_prob=False,
        mlp_only_layers=[1],
    ),  # fmt: skip
    # Qwen3-30B-A3B's: q/k norms, its own head size, renormalized top-k; a dense layer every other (sparse step 2).
    "qwen3_moe": lambda: transformers.Qwen3MoeConfig(
        **COMMON,
        head_dim=32,
        intermediate_size=96,
        moe_intermediate_size=32,
        num_experts=8,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        decoder_sparse_step=2,
        tie_word_embeddings=True,
    ),  # fmt: skip
}


def write_moe(folder: pathlib.Path, kind: str, seed: int = 0) -> transformers.PreTrainedModel:
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(CONFIGS[kind](), dtype=torch.float32).eval()
    with torch.no_grad():  # random biases and q/k norms (zeros and ones when initialised)
        for name, param in model.named_parameters():
            if "bias" in name:
                param.normal_(0, 0.1)
            if "q_norm" in name or "k_norm" in name:
                param.uniform_(0.5, 1.5)
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe")
    return {kind: (root / kind, write_moe(root / kind, kind)) for kind in CONFIGS}


def moe_blocks(model: torch.nn.Module) -> list[SparseMoeBlock]:
    return [m for m in model.modules() if isinstance(m, SparseMoeBlock)]


@pytest.mark.parametrize("kind", list(CONFIGS))
@pytest.mark.parametrize("chunks", [[13], [5, 6, 2], [12, 1]])
def test_logits_match_transformers(checkpoints, kind: str, chunks: list[int]) -> None:
    folder, reference = checkpoints[kind]
    config, ours = load_model(folder, keep_quantized=False)
    assert type(ours).__name__ == config.architectures[0] and ours.is_moe
    tokens = torch.randint(0, 97, (sum(chunks),), generator=torch.Generator().manual_seed(1)).tolist()
    got = logits_of(ours, config, tokens, chunks)
    with torch.no_grad():
        expected = reference(torch.tensor([tokens])).logits[0]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_layers_are_sparse_or_dense_as_the_config_says(checkpoints) -> None:
    sparse = {
        kind: [isinstance(layer.mlp, SparseMoeBlock) for layer in load_model(folder, False)[1].model.layers]
        for kind, (folder, _) in checkpoints.items()
    }
    # Mixtral: every layer; Qwen2-MoE: all but mlp_only_layers [1]; Qwen3-MoE: every 2nd (decoder_sparse_step 2).
    assert sparse == {
        "mixtral": [True, True, True],
        "qwen2_moe": [True, False, True],
        "qwen3_moe": [False, True, False],
    }
    _, qwen2 = load_model(checkpoints["qwen2_moe"][0], False)
    block = moe_blocks(qwen2)[0]
    assert block.shared_expert is not None and not block.renormalize and block.top_k == 3


def test_tokens_are_routed_to_different_experts_and_the_routing_matters(checkpoints) -> None:
    """The prompts under test spread over the experts, and each expert's weights reach the logits: zeroing one
    expert's down projection changes them (so no expert is skipped by the match above)."""
    folder, _ = checkpoints["mixtral"]
    config, ours = load_model(folder, False)
    block = moe_blocks(ours)[0]
    x = torch.randn(13, config.hidden_size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        weights, experts = block.route(x)
    assert set(experts.flatten().tolist()) == set(range(4))
    torch.testing.assert_close(weights.sum(-1), torch.ones(13))  # Mixtral renormalizes the top 2
    tokens = list(range(3, 16))
    before = logits_of(ours, config, tokens, [13])
    with torch.no_grad():
        block.experts[1].down_proj.weight.zero_()
    assert (logits_of(ours, config, tokens, [13]) - before).abs().max() > 1e-2


@pytest.mark.parametrize("kind", ["mixtral", "qwen3_moe"])
def test_batched_decode_of_different_lengths(checkpoints, kind: str) -> None:
    """One decode step of three sequences (each row routed on its own) equals transformers on each sequence."""
    folder, reference = checkpoints[kind]
    config, ours = load_model(folder, False)
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 97, (n,), generator=gen).tolist() for n in (3, 9, 17)]
    caches = allocate_kv_caches(config, 16, 4, torch.float32, torch.device("cpu"))
    tables, next_block = [], 0
    for prompt in prompts:
        count = -(-(len(prompt) + 1) // 4)
        tables.append(list(range(next_block, next_block + count)))
        next_block += count
    prefill = [ScheduledSequence(f"r{i}", 0, p, t, True) for i, (p, t) in enumerate(zip(prompts, tables))]
    step = prepare_inputs(prefill, 4, torch.device("cpu"))
    with torch.no_grad():
        ours(step.input_ids, step.positions, caches, step.metadata)
    decode = [
        ScheduledSequence(f"r{i}", len(p), [5], t, True) for i, (p, t) in enumerate(zip(prompts, tables))
    ]
    step = prepare_inputs(decode, 4, torch.device("cpu"))
    with torch.no_grad():
        logits = ours.compute_logits(ours(step.input_ids, step.positions, caches, step.metadata))
        for row, prompt in enumerate(prompts):
            expected = reference(torch.tensor([prompt + [5]])).logits[0, -1]
            torch.testing.assert_close(logits[row], expected, atol=1e-4, rtol=1e-4)


def test_bfloat16_weights_under_float32_compute(checkpoints) -> None:
    """dtype auto on CPUs without bfloat16 instructions: experts and router stored in bfloat16, computed in
    float32; equals transformers in float32 on the same rounded weights."""
    from pagedserve.worker.dtypes import cast_matrix_weights

    folder, reference = checkpoints["qwen2_moe"]
    config, ours = load_model(folder, False)
    rounded = {
        name: t.bfloat16().float() if t.dim() >= 2 else t for name, t in reference.state_dict().items()
    }
    reference = transformers.AutoModelForCausalLM.from_config(reference.config, dtype=torch.float32).eval()
    reference.load_state_dict(rounded)
    cast_matrix_weights(ours, torch.bfloat16)
    block = moe_blocks(ours)[0]
    assert (
        block.gate.weight.dtype == torch.bfloat16
        and block.experts[0].gate_up_proj.weight.dtype == torch.bfloat16
    )
    tokens = list(range(20, 33))
    with torch.no_grad():
        expected = reference(torch.tensor([tokens])).logits[0]
    torch.testing.assert_close(logits_of(ours, config, tokens, [7, 6]), expected, atol=1e-4, rtol=1e-4)


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).norm() / expected.norm())


# float8 e4m3 with activations quantized at run time, on these deliberately large random weights: a dense tiny
# Llama of the same shape and spread measured 0.24 relative error (L2) in its logits, the MoE models 0.15-0.24
# (2026-12-05); tiny random models amplify rounding more than trained ones.
FP8_RELATIVE_ERROR = 0.3


def test_online_fp8_quantizes_each_expert_and_leaves_the_router_float(checkpoints) -> None:
    """vLLM's --quantization fp8 on a MoE checkpoint: every expert's layers (and attention) float8 with their own
    scale, the routers (and Qwen2-MoE's shared-expert gate) in the model's dtype; logits within float8's rounding."""
    folder, reference = checkpoints["qwen2_moe"]
    config, ours = load_model(folder, False)
    floats = {name: p.detach().clone() for name, p in ours.named_parameters()}
    quantized = quantize_linears_fp8(ours)
    routers = [m for m in ours.modules() if isinstance(m, RouterLinear)]
    assert len(routers) == 4  # two sparse layers: a router and a shared-expert gate each
    assert all(r.weight.dtype == torch.float32 and r.activation_scheme is None for r in routers)
    # Per layer: q|k|v and o; sparse layers 6 experts + 1 shared (2 layers each), the dense one gate|up and down.
    assert quantized == 3 * 2 + 2 * (7 * 2) + 2
    expert = moe_blocks(ours)[1].experts[4].down_proj
    assert expert.weight.dtype == torch.float8_e4m3fn
    absmax = floats["model.layers.2.mlp.experts.4.down_proj.weight"].abs().amax()
    torch.testing.assert_close(expert.weight_scale[0], absmax / 448)
    tokens = list(range(40, 53))
    with torch.no_grad():
        expected = reference(torch.tensor([tokens])).logits[0]
    assert relative_error(logits_of(ours, config, tokens, [13]), expected) < FP8_RELATIVE_ERROR


def test_block_fp8_checkpoint_keeps_each_expert_in_float8(checkpoints, tmp_path) -> None:
    """Qwen3-30B-A3B-FP8's layout: every `*_proj` weight (attention and each expert) float8 with 32 x 32 block
    scales (128 x 128 in the real one), the router `mlp.gate` left in bfloat16. Kept float8, the logits follow
    the same checkpoint dequantized at load within float8's rounding of the activations."""
    from tests.unit.models.test_model_fp8 import write_block_fp8_checkpoint

    folder, _ = checkpoints["qwen3_moe"]
    checkpoint = write_block_fp8_checkpoint(folder, tmp_path / "fp8")
    config, kept = load_model(checkpoint, keep_quantized=True)
    _, dense = load_model(checkpoint, keep_quantized=False)
    block = moe_blocks(kept)[0]
    assert block.experts[3].gate_up_proj.weight.dtype == torch.float8_e4m3fn
    assert block.experts[3].down_proj.weight_block == (32, 32)
    assert block.gate.weight.is_floating_point() and block.gate.activation_scheme is None
    tokens, chunks = [5, 9, 14, 3, 22, 7, 90, 42, 8], [5, 2, 1, 1]
    got, expected = logits_of(kept, config, tokens, chunks), logits_of(dense, config, tokens, chunks)
    assert relative_error(got, expected) < FP8_RELATIVE_ERROR


def test_a_top_k_beyond_the_experts_is_refused() -> None:
    with pytest.raises(ValueError, match="num_experts_per_tok must be between 1 and num_experts"):
        SparseMoeBlock(64, num_experts=4, top_k=5, intermediate_size=16, renormalize=True)


@pytest.mark.parametrize("method", ["awq", "gptq"])
def test_awq_and_gptq_mixtral_keep_every_expert_in_4_bit_blocks(tmp_path, method: str) -> None:
    """AutoAWQ's Mixtral layout (TheBloke's Mixtral-8x7B AWQ files): attention and each expert's w1 / w2 / w3 in
    4 bits, the router `block_sparse_moe.gate` left float16 (AWQ's modules_to_not_convert ["gate"]; GPTQ files
    just store it unquantized). Every expert is kept in GGUF blocks; the logits follow the checkpoint dequantized
    at load within Q4_1's float16 offsets, and that dequantized model computes what transformers computes with the
    same weights."""
    import json

    from safetensors.torch import load_file, save_file
    from tests.awq_gptq_writer import QUANTIZED, awq_config, gptq_config, quantize_state_dict

    from pagedserve.layers.gguf_quant import TYPE_NAMES, dequantize

    torch.manual_seed(0)
    config = transformers.MixtralConfig(
        vocab_size=256, hidden_size=128, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, num_local_experts=4, num_experts_per_tok=2,
        tie_word_embeddings=False,
    )  # fmt: skip
    transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(
        tmp_path / "float"
    )
    state = load_file(tmp_path / "float" / "model.safetensors")
    tensors, reference = quantize_state_dict(state, method, quantized=(*QUANTIZED, "w1", "w2", "w3"))
    settings = json.loads((tmp_path / "float" / "config.json").read_text())
    for name, weights in (("quantized", tensors), ("reference", reference)):
        (tmp_path / name).mkdir()
        save_file(weights, str(tmp_path / name / "model.safetensors"), metadata={"format": "pt"})
        if name == "quantized":
            quant = (
                awq_config(128, ("gate",)) if method == "awq" else gptq_config(4, 128, False, False, "gptq")
            )
            settings = {**settings, "torch_dtype": "float16", "quantization_config": quant}
        else:
            settings = {k: v for k, v in settings.items() if k != "quantization_config"}
        (tmp_path / name / "config.json").write_text(json.dumps(settings))

    config, kept = load_model(tmp_path / "quantized", keep_quantized=True)
    _, dense = load_model(tmp_path / "quantized", keep_quantized=False)
    for block in moe_blocks(kept):
        assert {TYPE_NAMES[e.gate_up_proj.weight_type] for e in block.experts} == {"Q4_1"}
        assert {TYPE_NAMES[e.down_proj.weight_type] for e in block.experts} == {"Q4_1"}
        assert block.gate.weight_type is None and block.gate.weight.is_floating_point()
    for index, expert in enumerate(moe_blocks(kept)[1].experts):
        prefix = f"model.layers.1.block_sparse_moe.experts.{index}"
        for module, parts in ((expert.gate_up_proj, ("w1", "w3")), (expert.down_proj, ("w2",))):
            expected = torch.cat([reference[f"{prefix}.{part}.weight"] for part in parts])
            kept_weight = dequantize(module.weight.data, module.weight_type, module.input_size)
            # Q4_1's float16 offset (2^-11 of the group's largest |weight| plus one step), float32's rounding.
            bound = 2**-11 * (expected.abs().amax(1, keepdim=True) * 2) + 2**-22 * expected.abs()
            assert ((kept_weight - expected).abs() <= bound).all()
    tokens, chunks = [5, 9, 14, 3, 22, 7, 90, 42, 8, 200, 31], [6, 3, 1, 1]
    got, expected = logits_of(kept, config, tokens, chunks), logits_of(dense, config, tokens, chunks)
    # The dense Llama cases' bound (test_model_awq_gptq.py), at transformers' default weight spread.
    assert (got - expected).abs().max().item() <= 1e-3
    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "reference", dtype=torch.float32
    ).eval()
    with torch.no_grad():
        torch.testing.assert_close(expected, theirs(torch.tensor([tokens])).logits[0], atol=1e-5, rtol=1e-5)
