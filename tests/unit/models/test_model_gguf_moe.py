"""Mixture-of-experts GGUF files as llama.cpp's converter lays them out: Mixtral under the llama architecture (Q/K
rows permuted), qwen2moe (shared expert, its gate stored as a vector) and qwen3moe; each layer's experts stacked in
one [experts, rows, columns] tensor per projection (ffn_gate_exps / ffn_up_exps / ffn_down_exps), the router as
ffn_gate_inp. Written here from tiny transformers checkpoints with the real `gguf` writer; in float32 the loaded
model gives transformers' logits, and in Q8_0 every expert is kept in its blocks and follows the same file
dequantized at load."""

from __future__ import annotations

import json
import pathlib

import gguf
import numpy as np
import pytest
import torch
import transformers
from model_steps import load_model, logits_of
from safetensors.torch import load_file
from test_model_moe import COMMON as MOE_COMMON
from tiny_gguf_writer import (
    SPECIAL_TOKENS,
    TINY_CHAT_TEMPLATE,
    TINY_MERGES,
    TINY_TOKENS,
    permute_like_llama_cpp,
)

from pagedserve.layers.gguf_quant import TYPE_NAMES
from pagedserve.layers.moe import SparseMoeBlock
from pagedserve.models.loader import resolve_model_source

Q = gguf.GGMLQuantizationType
# test_model_moe.py's spread (experts move the logits by O(1)), two layers, an untied head.
COMMON = {**MOE_COMMON, "vocab_size": 96, "num_hidden_layers": 2, "tie_word_embeddings": False}
# Every layer sparse, as llama.cpp runs these architectures; widths multiples of 32 (whole Q8_0 blocks).
CONFIGS = {
    "llama": lambda: transformers.MixtralConfig(
        **COMMON, intermediate_size=64, num_local_experts=4, num_experts_per_tok=2
    ),
    "qwen2moe": lambda: transformers.Qwen2MoeConfig(
        **COMMON,
        intermediate_size=96,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=64,
        num_experts=6,
        num_experts_per_tok=3,
        norm_topk_prob=False,
    ),  # fmt: skip
    "qwen3moe": lambda: transformers.Qwen3MoeConfig(
        **COMMON,
        head_dim=32,
        intermediate_size=96,
        moe_intermediate_size=32,
        num_experts=8,
        num_experts_per_tok=2,
        norm_topk_prob=True,
    ),  # fmt: skip
}
# Hugging Face name fragments -> llama.cpp's, written independently of the loader under test.
_NAMES = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm", "block_sparse_moe.gate": "ffn_gate_inp",
    "mlp.gate": "ffn_gate_inp", "mlp.shared_expert.gate_proj": "ffn_gate_shexp",
    "mlp.shared_expert.up_proj": "ffn_up_shexp", "mlp.shared_expert.down_proj": "ffn_down_shexp",
    "mlp.shared_expert_gate": "ffn_gate_inp_shexp",
}  # fmt: skip
_EXPERT_PARTS = {"w1": "ffn_gate_exps", "w3": "ffn_up_exps", "w2": "ffn_down_exps", "gate_proj": "ffn_gate_exps",
                 "up_proj": "ffn_up_exps", "down_proj": "ffn_down_exps"}  # fmt: skip


def write_moe_gguf(
    path: pathlib.Path, folder: pathlib.Path, arch: str, qtype: Q, tokenizer: bool = False
) -> None:
    """The Hub-layout checkpoint in `folder` as llama.cpp's converter writes it: matrices in `qtype`, vectors and
    the routers in F32 (llama.cpp's quantizer leaves ffn_gate_inp alone); `tokenizer`: tiny_gguf_writer's
    byte-level vocabulary and chat template (the checkpoint's vocabulary must be that size)."""
    config = json.loads((folder / "config.json").read_text())
    tensors = {name: t.numpy() for name, t in load_file(folder / "model.safetensors").items()}
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_vocab_size(
        config["vocab_size"]
    )  # no tokenizer in these files: the planner reads the size here
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_rope_freq_base(float(config["rope_parameters"]["rope_theta"]))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_expert_count(config.get("num_local_experts") or config["num_experts"])
    writer.add_expert_used_count(config["num_experts_per_tok"])
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    if arch == "llama":
        writer.add_rope_dimension_count(head_dim)
    else:
        writer.add_expert_feed_forward_length(config["moe_intermediate_size"])
    if arch == "qwen3moe":
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if arch == "qwen2moe":
        writer.add_expert_shared_feed_forward_length(config["shared_expert_intermediate_size"])
    if tokenizer:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(TINY_TOKENS)
        normal = [gguf.TokenType.NORMAL] * (len(TINY_TOKENS) - len(SPECIAL_TOKENS))
        writer.add_token_types([gguf.TokenType.CONTROL] * len(SPECIAL_TOKENS) + normal)
        writer.add_token_merges(TINY_MERGES)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_chat_template(TINY_CHAT_TEMPLATE)

    def add(name: str, values: np.ndarray) -> None:
        kind = qtype if values.ndim >= 2 and "ffn_gate_inp" not in name else Q.F32
        writer.add_tensor(name, gguf.quants.quantize(values, kind), raw_dtype=kind)

    stacked: dict[str, dict[int, np.ndarray]] = {}
    for name, values in tensors.items():
        if name == "model.embed_tokens.weight":
            add("token_embd.weight", values)
        elif name == "model.norm.weight":
            add("output_norm.weight", values)
        elif name == "lm_head.weight":
            add("output.weight", values)
        elif ".experts." in name:
            layer, rest = name.removeprefix("model.layers.").split(".", 1)
            expert, part = rest.split(".experts.", 1)[1].split(".")[:2]
            stacked.setdefault(f"blk.{layer}.{_EXPERT_PARTS[part]}.weight", {})[int(expert)] = values
        else:
            layer, rest = name.removeprefix("model.layers.").split(".", 1)
            stem, kind = rest.rsplit(".", 1)
            if arch == "llama" and stem in ("self_attn.q_proj", "self_attn.k_proj") and kind == "weight":
                heads = config["num_attention_heads"] if "q_proj" in stem else config["num_key_value_heads"]
                values = permute_like_llama_cpp(values, heads)
            if stem == "mlp.shared_expert_gate":
                values = values.reshape(-1)
            add(f"blk.{layer}.{_NAMES[stem]}.{kind}", values)
    for name, experts in stacked.items():
        add(name, np.stack([experts[index] for index in sorted(experts)]))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """arch -> (transformers model, F32 file, Q8_0 file)."""
    root = tmp_path_factory.mktemp("gguf-moe")
    made = {}
    for arch, make_config in CONFIGS.items():
        torch.manual_seed(1)
        model = transformers.AutoModelForCausalLM.from_config(make_config(), dtype=torch.float32).eval()
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "bias" in name:
                    param.normal_(0, 0.1)
        model.save_pretrained(root / arch)
        files = []
        for qtype in (Q.F32, Q.Q8_0):
            files.append(root / f"{arch}-{qtype.name}.gguf")
            write_moe_gguf(files[-1], root / arch, arch, qtype)
        made[arch] = (model, *files)
    return made


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_float_file_gives_transformers_logits(pairs, arch: str) -> None:
    reference, f32_file, _ = pairs[arch]
    config, ours = load_model(f32_file, keep_quantized=False)
    assert type(ours).__name__ == reference.config.architectures[0] and ours.is_moe
    assert all(isinstance(layer.mlp, SparseMoeBlock) for layer in ours.model.layers)
    tokens, chunks = (
        torch.randint(0, 96, (13,), generator=torch.Generator().manual_seed(2)).tolist(),
        [6, 5, 1, 1],
    )
    with torch.no_grad():
        expected = reference(torch.tensor([tokens])).logits[0]
    torch.testing.assert_close(logits_of(ours, config, tokens, chunks), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_q8_0_experts_are_kept_in_their_blocks(pairs, arch: str) -> None:
    _, _, q8_file = pairs[arch]
    config, kept = load_model(q8_file, keep_quantized=True)
    _, dense = load_model(q8_file, keep_quantized=False)
    for layer in kept.model.layers:
        block = layer.mlp
        for module in [m for e in block.experts for m in (e.gate_up_proj, e.down_proj)]:
            assert TYPE_NAMES[module.weight_type] == "Q8_0"
        assert block.gate.weight_type is None  # the router stays F32
    dense_block = dense.model.layers[1].mlp
    assert dense_block.experts[0].gate_up_proj.weight_type is None  # dequantized at load
    if arch == "qwen2moe":
        assert tuple(dense_block.shared_expert_gate.weight.shape) == (1, 64)
    tokens, chunks = list(range(3, 16)), [7, 6]
    # Kept Q8_0 against the same values dequantized: the block GEMVs (every expert here runs 1-8 rows) round
    # activations to 16-bit integers per row (docs/architecture.md); at this weight spread (logits up to ~5.7) that
    # measured 0.7-1.2e-4 relative (L2) error, 4-9e-4 at the worst logit.
    got, expected = logits_of(kept, config, tokens, chunks), logits_of(dense, config, tokens, chunks)
    assert float((got - expected).norm() / expected.norm()) < 5e-4


def test_config_follows_llama_cpp(pairs) -> None:
    mixtral = resolve_model_source(str(pairs["llama"][1])).hf_config
    assert mixtral.architectures == ["MixtralForCausalLM"] and mixtral.num_local_experts == 4
    qwen2 = resolve_model_source(str(pairs["qwen2moe"][1])).hf_config
    assert (qwen2.num_experts_per_tok, qwen2.shared_expert_intermediate_size, qwen2.norm_topk_prob) == (
        3,
        64,
        False,
    )
    qwen3 = resolve_model_source(str(pairs["qwen3moe"][1])).hf_config
    assert (qwen3.moe_intermediate_size, qwen3.head_dim, qwen3.norm_topk_prob) == (32, 32, True)


def test_capacity_planner_reads_the_experts_from_the_file(pairs) -> None:
    from pagedserve.kube.model_spec import spec_from_gguf

    qwen3 = spec_from_gguf(pairs["qwen3moe"][1])
    assert (qwen3.num_experts, qwen3.experts_per_token, qwen3.intermediate_size) == (8, 2, 32)
    mixtral = spec_from_gguf(pairs["llama"][1])
    assert (mixtral.num_experts, mixtral.experts_per_token, mixtral.intermediate_size) == (4, 2, 64)
    qwen2 = spec_from_gguf(pairs["qwen2moe"][1])
    assert (qwen2.intermediate_size, qwen2.shared_expert_intermediate_size) == (32, 64)
    assert qwen2.param_count == sum(p.numel() for p in pairs["qwen2moe"][0].parameters())


@pytest.mark.slow
@pytest.mark.model
def test_engine_serves_a_q8_0_qwen3moe_file_with_its_own_tokenizer(tmp_path) -> None:
    """The whole engine on a qwen3moe GGUF (tokenizer and chat template from the file, experts kept in Q8_0 blocks
    by --quantization gguf): a greedy chat reply follows transformers' greedy continuation of the same float
    weights (Q8_0 rounding and the GEMVs' 16-bit activations may only flip a near tie)."""
    from pagedserve import LLM, SamplingParams

    config = CONFIGS["qwen3moe"]()
    config.vocab_size = len(TINY_TOKENS)
    torch.manual_seed(3)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    model.save_pretrained(tmp_path / "float")
    write_moe_gguf(tmp_path / "q8.gguf", tmp_path / "float", "qwen3moe", Q.Q8_0, tokenizer=True)
    llm = LLM(str(tmp_path / "q8.gguf"), quantization="gguf", dtype="float32", max_model_len=128,
              kv_cache_memory_bytes=2**22)  # fmt: skip
    try:
        runner = llm.llm_engine.executor.runner
        assert runner.model.model.layers[0].mlp.experts[0].gate_up_proj.weight_type == int(Q.Q8_0)
        params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=1)
        output = llm.chat([{"role": "user", "content": "hello there"}], params, use_tqdm=False)[0]
    finally:
        llm.llm_engine.shutdown()
    prompt, generated = list(output.prompt_token_ids), output.outputs[0].token_ids
    start = TINY_TOKENS.index("<|im_start|>")
    assert (
        prompt[0] == start and prompt.count(start) == 2
    )  # the file's chat template: user turn, then assistant
    with torch.no_grad():
        logprobs = model(torch.tensor([prompt + generated])).logits[0].log_softmax(-1)
    for step, token in enumerate(generated):
        row = logprobs[len(prompt) - 1 + step]
        assert float(row.max() - row[token]) < 2e-2  # the best token, up to a near tie
