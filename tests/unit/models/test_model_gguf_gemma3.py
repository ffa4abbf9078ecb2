"""Gemma 3 GGUF files as llama.cpp's converter writes them (tensor names from the `gguf` package's own map, every
norm stored as 1 + weight, the sliding window, rope base and linear scaling in metadata, no q/k row permutation):
written here from tiny transformers checkpoints with the real `gguf` writer. In float32 the loaded model gives
transformers' logits; Q8_0 matrices are kept in their blocks and follow the same file dequantized at load; the
config follows llama.cpp's rules (five local layers then a global one, the 27B's attention scale); the whole engine
serves a file with its own sentencepiece vocabulary and Gemma chat template."""

from __future__ import annotations

import pathlib
import sys

import gguf
import numpy as np
import pytest
import torch
import transformers
from model_steps import load_model, logits_of
from tiny_gguf_writer import write_transformers_gguf

from pagedserve.kube.model_spec import gguf_layer_windows
from pagedserve.models.gguf_config import build_gguf_config
from pagedserve.models.llama import attention_window

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from tiny_models import randomize_gemma_norms, tiny_gemma3_text_config  # noqa: E402

Q = gguf.GGMLQuantizationType
# A sentencepiece vocabulary in Gemma's spelling (no merges in the file: transformers derives them).
SPM_TOKENS = (
    ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "\n", "\u2581"]
    + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    + [
        "\u2581h",
        "he",
        "\u2581he",
        "ll",
        "\u2581hell",
        "\u2581hello",
        "\u2581t",
        "th",
        "\u2581th",
        "\u2581the",
    ]
    + ["er", "\u2581ther", "\u2581there", "user", "model"]
)
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}"
    "\n{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def tiny_model(vocab_size: int, seed: int = 0) -> transformers.Gemma3ForCausalLM:
    # GGUF files keep no query_pre_attn_scalar: llama.cpp uses the head size (32 here) below 27B.
    config = tiny_gemma3_text_config(vocab_size, sliding_window=5, query_pre_attn_scalar=32)
    config.layer_types = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(6)]
    config.num_hidden_layers = 6  # llama.cpp's pattern: five local layers, then a global one
    torch.manual_seed(seed)
    model = transformers.Gemma3ForCausalLM(config).to(torch.float32).eval()
    randomize_gemma_norms(model, seed)
    return model


def write_gemma3_gguf(path: pathlib.Path, model, qtype: Q, tokenizer: bool = False) -> None:
    config = model.config

    def metadata(writer: gguf.GGUFWriter) -> None:
        writer.add_key_length(config.head_dim)
        writer.add_value_length(config.head_dim)
        writer.add_sliding_window(config.sliding_window)
        full = config.rope_parameters["full_attention"]
        writer.add_rope_freq_base(full["rope_theta"])
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(full["factor"])
        if tokenizer:
            writer.add_tokenizer_model("llama")
            writer.add_tokenizer_pre("default")
            writer.add_token_list(SPM_TOKENS)
            writer.add_token_scores([0.0] * len(SPM_TOKENS))
            types = [gguf.TokenType.CONTROL] * 6 + [gguf.TokenType.NORMAL] * (len(SPM_TOKENS) - 6)
            types[3] = gguf.TokenType.UNKNOWN
            writer.add_token_types(types)
            writer.add_bos_token_id(2)
            writer.add_eos_token_id(1)
            writer.add_unk_token_id(3)
            writer.add_pad_token_id(0)
            writer.add_add_bos_token(True)
            writer.add_chat_template(CHAT_TEMPLATE)

    write_transformers_gguf(path, "gemma3", model, metadata, qtype, norms_plus_one=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf-gemma3")
    model = tiny_model(96)
    for qtype in (Q.F32, Q.Q8_0):
        write_gemma3_gguf(root / f"{qtype.name}.gguf", model, qtype)
    return model, root / "F32.gguf", root / "Q8_0.gguf"


TOKENS = torch.randint(5, 96, (22,), generator=torch.Generator().manual_seed(2)).tolist()


def test_float_file_gives_transformers_logits(files) -> None:
    model, f32, _ = files
    config, ours = load_model(f32, keep_quantized=False)
    assert isinstance(config, transformers.Gemma3TextConfig)
    got = logits_of(ours, config, TOKENS, [12, 1, 1, 1, 1, 6])
    with torch.no_grad():
        expected = model(torch.tensor([TOKENS])).logits[0]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_q8_0_matrices_are_kept_and_follow_the_dequantized_file(files) -> None:
    _, _, q8 = files
    config, kept = load_model(q8, keep_quantized=True)
    _, dequantized = load_model(q8, keep_quantized=False)
    assert kept.model.layers[0].mlp.gate_up_proj.weight_type == int(Q.Q8_0)
    got = logits_of(kept, config, TOKENS, [12, 1, 1, 1, 1, 6])
    expected = logits_of(dequantized, config, TOKENS, [12, 1, 1, 1, 1, 6])
    # The kept blocks multiply 16-bit-quantized activations (docs/architecture.md, "GGUF GEMVs").
    torch.testing.assert_close(got, expected, atol=2e-2, rtol=2e-2)


def test_config_follows_llama_cpp(files) -> None:
    model, f32, _ = files
    config = build_gguf_config(gguf.GGUFReader(str(f32)), f32)
    assert config.layer_types == model.config.layer_types and config.sliding_window == 5
    assert config.query_pre_attn_scalar == config.head_dim == 32
    assert config.rope_parameters["sliding_attention"]["rope_theta"] == 10000.0
    assert config.rope_parameters["full_attention"]["rope_type"] == "linear"
    assert config.tie_word_embeddings and config.hidden_activation == "gelu_pytorch_tanh"
    # `pagedserve plan` reads the same windows from the file (its KV cache groups count as the engine's).
    windows = tuple(attention_window(config, i) for i in range(config.num_hidden_layers))
    assert gguf_layer_windows(gguf.GGUFReader(str(f32))) == windows == (5, 5, 5, 5, 5, None)


def test_27b_attention_scale_and_files_without_a_window(tmp_path) -> None:
    """llama.cpp scales the 62-layer 27B's attention by hidden / heads (168 there), every other size by the head
    size; a file without a sliding window has no local layers."""
    for layers, window in ((62, 1024), (4, None)):
        path = tmp_path / f"{layers}.gguf"
        writer = gguf.GGUFWriter(str(path), "gemma3")
        writer.add_block_count(layers)
        writer.add_embedding_length(96)
        writer.add_feed_forward_length(128)
        writer.add_head_count(4)
        writer.add_head_count_kv(2)
        writer.add_key_length(16)
        writer.add_layer_norm_rms_eps(1e-6)
        if window:
            writer.add_sliding_window(window)
        writer.add_tensor("token_embd.weight", np.zeros((8, 96), np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        config = build_gguf_config(gguf.GGUFReader(str(path)), path)
        if window:
            assert config.query_pre_attn_scalar == 96 // 4 and config.sliding_window == 1024
            assert config.layer_types[:6] == ["sliding_attention"] * 5 + ["full_attention"]
        else:
            assert config.query_pre_attn_scalar == 16 and set(config.layer_types) == {"full_attention"}


def test_engine_serves_a_q8_0_file_with_its_own_tokenizer(tmp_path) -> None:
    """The whole engine on a Gemma 3 GGUF (sentencepiece vocabulary and chat template from the file, matrices kept
    in Q8_0 blocks by --quantization gguf): the prompt is the file's template, and the greedy reply follows
    transformers' greedy continuation of the same float weights (Q8_0 rounding may only flip a near tie)."""
    from pagedserve import LLM, SamplingParams

    model = tiny_model(len(SPM_TOKENS), seed=3)
    write_gemma3_gguf(tmp_path / "q8.gguf", model, Q.Q8_0, tokenizer=True)
    llm = LLM(str(tmp_path / "q8.gguf"), quantization="gguf", dtype="float32", max_model_len=128,
              kv_cache_memory_bytes=2**22)  # fmt: skip
    try:
        params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
        output = llm.chat([{"role": "user", "content": "hello there"}], params, use_tqdm=False)[0]
    finally:
        llm.llm_engine.shutdown()
    prompt, generated = list(output.prompt_token_ids), output.outputs[0].token_ids
    start = SPM_TOKENS.index("<start_of_turn>")
    assert prompt[:2] == [2, start] and prompt.count(start) == 2  # <bos>, then the user and model turns
    assert SPM_TOKENS.index("\u2581there") in prompt
    with torch.no_grad():
        logprobs = model(torch.tensor([prompt + generated])).logits[0].log_softmax(-1)
    for step, token in enumerate(generated):
        row = logprobs[len(prompt) - 1 + step]
        assert float(row.max() - row[token]) < 2e-2  # the best token, up to a near tie
