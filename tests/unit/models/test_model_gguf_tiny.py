"""GGUF loading on tiny files written with the real `gguf` writer: names, dequantized values, the llama Q/K
un-permutation, config mapping, and clear errors for files the loader cannot serve."""

from __future__ import annotations

import pathlib
import socket
from collections.abc import Callable
from typing import Any

import gguf
import numpy as np
import pytest
import torch
import transformers
from tiny_gguf_writer import (
    TINY_CHAT_TEMPLATE,
    TINY_FFN,
    TINY_HEAD_DIM,
    TINY_HEADS,
    TINY_HIDDEN,
    TINY_KV_HEADS,
    TINY_LAYERS,
    TINY_VOCAB,
    TinyGGUF,
    write_tiny_gguf,
)

from pagedserve.models import gguf_weights
from pagedserve.models.gguf_rope import llama3_freq_factors, llama3_rope_from_freq_factors
from pagedserve.models.loader import load_tokenizer, resolve_model_source

Q = gguf.GGMLQuantizationType
TENSOR_TYPES = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1]
STORED_DTYPE = {Q.F32: torch.float32, Q.F16: torch.float16, Q.BF16: torch.bfloat16}
# Largest |dequantized - original| for weights ~N(0, 0.2): a sanity bound that the right blocks were decoded.
TOLERANCE = {Q.F32: 0.0, Q.F16: 1e-3, Q.BF16: 5e-3, Q.Q8_0: 0.01, Q.Q4_0: 0.2, Q.Q4_1: 0.12}


@pytest.fixture
def tiny_gguf_factory(tmp_path: pathlib.Path) -> Callable[..., TinyGGUF]:
    def make(file_name: str = "tiny.gguf", **kwargs: Any) -> TinyGGUF:
        return write_tiny_gguf(tmp_path / file_name, **kwargs)

    return make


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("tensor_type", TENSOR_TYPES, ids=lambda t: t.name)
def test_weights_equal_dequantized_originals(tiny_gguf_factory, architecture, tensor_type) -> None:
    tiny = tiny_gguf_factory(architecture=architecture, tensor_type=tensor_type, tied=architecture == "llama")
    source = resolve_model_source(str(tiny.path))
    assert source.format == "gguf"
    loaded = dict(source.iter_weights())

    assert set(loaded) == set(tiny.expected)
    for name, tensor in loaded.items():
        qtype = tiny.tensor_types[name]
        assert tensor.dtype == STORED_DTYPE.get(qtype, torch.float32), name
        assert tensor.shape == tiny.expected[name].shape, name
        # Exact: rows in HF order (un-permuted Q/K), values exactly the block decode of the stored data.
        np.testing.assert_array_equal(tensor.float().numpy(), tiny.expected[name], err_msg=name)
        assert np.abs(tensor.float().numpy() - tiny.originals[name]).max() <= TOLERANCE[qtype], name


def test_llama_q_and_k_rows_are_unpermuted_to_hf_order(tiny_gguf_factory) -> None:
    tiny = tiny_gguf_factory(architecture="llama", tensor_type=Q.F32)
    reader = gguf.GGUFReader(tiny.path)
    stored_q = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight").data
    original_q = tiny.originals["model.layers.0.self_attn.q_proj.weight"]
    assert not np.array_equal(stored_q, original_q)  # the file really holds llama.cpp's row order

    loaded = dict(resolve_model_source(str(tiny.path)).iter_weights())
    np.testing.assert_array_equal(loaded["model.layers.0.self_attn.q_proj.weight"].numpy(), original_q)
    np.testing.assert_array_equal(
        loaded["model.layers.1.self_attn.k_proj.weight"].numpy(),
        tiny.originals["model.layers.1.self_attn.k_proj.weight"],
    )


@pytest.mark.parametrize(
    ("architecture", "tensor_type"), [("llama", Q.Q4_1), ("qwen2", Q.Q8_0), ("qwen3", Q.Q8_0)]
)
def test_weights_and_config_match_transformers_gguf_loader(
    tiny_gguf_factory, architecture, tensor_type
) -> None:
    tiny = tiny_gguf_factory(architecture=architecture, tensor_type=tensor_type, tied=False)
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        tiny.path.parent, gguf_file=tiny.path.name, dtype=torch.float32
    ).state_dict()
    source = resolve_model_source(str(tiny.path))
    loaded = {name: tensor.float() for name, tensor in source.iter_weights()}
    assert set(loaded) == set(reference)
    for name, tensor in loaded.items():
        assert torch.equal(tensor, reference[name]), name


def test_llama_config_fields(tiny_gguf_factory) -> None:
    tiny = tiny_gguf_factory(architecture="llama", tied=True)
    source = resolve_model_source(str(tiny.path))
    config = source.hf_config
    assert isinstance(config, transformers.LlamaConfig)
    assert config.architectures == ["LlamaForCausalLM"]
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (
        TINY_HIDDEN,
        TINY_FFN,
        TINY_LAYERS,
    )
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (
        TINY_HEADS,
        TINY_KV_HEADS,
        TINY_HEAD_DIM,
    )
    assert config.vocab_size == TINY_VOCAB
    assert config.max_position_embeddings == 256
    assert config.rms_norm_eps == pytest.approx(1e-5)
    assert config.rope_parameters["rope_theta"] == 50000.0
    assert config.tie_word_embeddings is True
    assert (config.bos_token_id, config.eos_token_id) == (1, 2)
    assert source.eos_token_ids == [2]
    assert source.generation_defaults == {}
    assert source.name == "tiny"


def test_qwen2_config_has_untied_head_and_biases(tiny_gguf_factory) -> None:
    tiny = tiny_gguf_factory(architecture="qwen2", tied=False)
    source = resolve_model_source(str(tiny.path))
    assert isinstance(source.hf_config, transformers.Qwen2Config)
    assert source.hf_config.architectures == ["Qwen2ForCausalLM"]
    assert source.hf_config.tie_word_embeddings is False
    names = {name for name, _ in source.iter_weights()}
    assert {"lm_head.weight", "model.layers.1.self_attn.k_proj.bias"} <= names


def test_qwen3_file_runs_like_transformers_reading_it(tiny_gguf_factory) -> None:
    """Config (its own head size, q/k norms) and the whole forward, against transformers' GGUF reader."""
    from pagedserve.attention.backend import get_attention_backend
    from pagedserve.core.scheduler_output import ScheduledSequence
    from pagedserve.models.registry import resolve_model_class
    from pagedserve.worker.inputs import prepare_inputs
    from pagedserve.worker.kv_cache import allocate_kv_caches

    tiny = tiny_gguf_factory(architecture="qwen3", tensor_type=Q.Q8_0, tied=False)
    source = resolve_model_source(str(tiny.path))
    config = source.hf_config
    assert isinstance(config, transformers.Qwen3Config) and config.architectures == ["Qwen3ForCausalLM"]
    assert (config.head_dim, config.hidden_size, config.num_attention_heads) == (128, TINY_HIDDEN, TINY_HEADS)
    ours = resolve_model_class(config)(config, get_attention_backend("cpu")).float().eval()
    loaded = ours.load_weights(source.iter_weights())
    assert "model.layers.1.self_attn.q_norm.weight" in loaded
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        tiny.path.parent, gguf_file=tiny.path.name, dtype=torch.float32
    ).eval()
    tokens = torch.randint(3, TINY_VOCAB, (11,), generator=torch.Generator().manual_seed(0)).tolist()
    caches = allocate_kv_caches(config, 4, 4, torch.float32, torch.device("cpu"))
    step = prepare_inputs([ScheduledSequence("r", 0, tokens, [0, 1, 2], True)], 4, torch.device("cpu"))
    with torch.no_grad():
        got = ours.compute_logits(ours(step.input_ids, step.positions, caches, step.metadata))
        expected = reference(torch.tensor([tokens])).logits[0, -1]
    torch.testing.assert_close(got[-1], expected, atol=1e-4, rtol=1e-4)


def test_mistral_named_llama_file_gets_mistral_config(tiny_gguf_factory) -> None:
    tiny = tiny_gguf_factory(model_name="Mistral 7B Instruct v0.3")
    config = resolve_model_source(str(tiny.path)).hf_config
    assert isinstance(config, transformers.MistralConfig)
    assert config.architectures == ["MistralForCausalLM"]
    assert config.sliding_window is None


def test_eot_ids_and_sampling_metadata(tiny_gguf_factory) -> None:
    def metadata(writer: gguf.GGUFWriter) -> None:
        writer.add_uint32(gguf.Keys.Tokenizer.EOT_ID, 7)
        writer.add_float32(gguf.Keys.General.SAMPLING_TEMP, 0.5)
        writer.add_int32(gguf.Keys.General.SAMPLING_TOP_K, 20)

    source = resolve_model_source(str(tiny_gguf_factory(metadata=metadata).path))
    assert source.eos_token_ids == [2, 7]
    assert source.generation_defaults == {"temperature": 0.5, "top_k": 20}


def test_linear_rope_scaling_metadata(tiny_gguf_factory) -> None:
    def metadata(writer: gguf.GGUFWriter) -> None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(4.0)

    config = resolve_model_source(str(tiny_gguf_factory(metadata=metadata).path)).hf_config
    assert config.rope_parameters["rope_type"] == "linear"
    assert config.rope_parameters["factor"] == 4.0


def test_llama3_rope_freqs_tensor_becomes_rope_scaling(tiny_gguf_factory) -> None:
    theta = 50000.0
    inv_freq = 1.0 / theta ** (np.arange(0, TINY_HEAD_DIM, 2) / TINY_HEAD_DIM)
    factors = llama3_freq_factors(2 * np.pi / inv_freq, 8.0, 1.0, 4.0, 8192.0).astype(np.float32)
    assert 1.0 < factors.max() and (factors == 1.0).any()  # the test data spans both regimes
    tiny = tiny_gguf_factory(extra_tensors={"rope_freqs.weight": (factors, Q.F32)})
    source = resolve_model_source(str(tiny.path))
    rope = source.hf_config.rope_parameters
    assert rope["rope_type"] == "llama3"
    assert (rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]) == (8.0, 1.0, 4.0)
    assert rope["original_max_position_embeddings"] == 8192
    assert "rope_freqs.weight" not in dict(source.iter_weights())


def test_llama3_rope_with_other_parameters_is_fitted() -> None:
    head_dim, theta = 128, 500000.0
    wavelengths = 2 * np.pi * theta ** (np.arange(0, head_dim, 2) / head_dim)
    factors = llama3_freq_factors(wavelengths, 16.0, 2.0, 8.0, 4096.0)
    rope = llama3_rope_from_freq_factors(factors, theta, head_dim, None, pathlib.Path("x.gguf"))
    assert rope is not None and rope["factor"] == 16.0
    rebuilt = llama3_freq_factors(
        wavelengths,
        16.0,
        rope["low_freq_factor"],
        rope["high_freq_factor"],
        rope["original_max_position_embeddings"],
    )
    np.testing.assert_allclose(rebuilt, factors, rtol=1e-6)


def test_tokenizer_from_gguf_has_chat_template_and_stays_offline(tiny_gguf_factory, monkeypatch) -> None:
    tiny = tiny_gguf_factory()

    def no_network(*args, **kwargs):
        raise AssertionError("tokenizer loading tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    tokenizer = load_tokenizer(resolve_model_source(str(tiny.path)))
    assert tokenizer.chat_template == TINY_CHAT_TEMPLATE
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hé! to"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nhé! to<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert ids[0] == 1 and tokenizer.decode(ids) == text
    assert tokenizer.convert_tokens_to_ids("Ġt") in ids  # the merge applied


def test_weights_stream_one_tensor_at_a_time_with_progress_bar(
    tiny_gguf_factory, monkeypatch, capsys
) -> None:
    tiny = tiny_gguf_factory(tensor_type=Q.Q8_0)
    source = resolve_model_source(str(tiny.path))
    converted: list[str] = []
    real_convert = gguf_weights.tensor_to_torch

    def counting_convert(tensor):
        converted.append(tensor.name)
        return real_convert(tensor)

    monkeypatch.setattr(gguf_weights, "tensor_to_torch", counting_convert)
    stream = source.iter_weights()
    next(stream)
    assert len(converted) == 1
    remaining = list(stream)
    assert len(converted) == len(remaining) + 1
    stderr = capsys.readouterr().err
    assert "Loading tiny.gguf" in stderr and "100%" in stderr


def test_dummy_format_gives_config_only(tiny_gguf_factory) -> None:
    source = resolve_model_source(str(tiny_gguf_factory().path), load_format="dummy")
    assert source.format == "dummy"
    assert source.hf_config.num_hidden_layers == TINY_LAYERS
    with pytest.raises(ValueError, match="dummy"):
        source.iter_weights()


def test_unsupported_architecture_is_named(tmp_path) -> None:
    path = tmp_path / "gpt2.gguf"
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match=r"architecture 'gpt2'.*not supported"):
        resolve_model_source(str(path))


def test_unsupported_tensor_type_is_named(tiny_gguf_factory) -> None:
    block_size, type_size = gguf.GGML_QUANT_SIZES[Q.Q8_1]
    raw = np.zeros((4, TINY_HIDDEN // block_size * type_size), dtype=np.uint8)
    tiny = tiny_gguf_factory(extra_tensors={"blk.0.attn_q.bias": (raw, Q.Q8_1)})
    with pytest.raises(ValueError, match=r"blk\.0\.attn_q\.bias has type Q8_1"):
        resolve_model_source(str(tiny.path))


def test_unknown_tensor_name_is_named(tiny_gguf_factory) -> None:
    tiny = tiny_gguf_factory(extra_tensors={"blk.0.attn_qkv.weight": (np.zeros((4, 4), np.float32), Q.F32)})
    with pytest.raises(ValueError, match=r"blk\.0\.attn_qkv\.weight"):
        resolve_model_source(str(tiny.path))


def test_corrupt_gguf_file(tmp_path) -> None:
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ValueError, match="not a readable GGUF file"):
        resolve_model_source(str(path))


def test_load_format_must_match_the_file(tiny_gguf_factory) -> None:
    path = str(tiny_gguf_factory().path)
    with pytest.raises(ValueError, match="'safetensors' does not match"):
        resolve_model_source(path, load_format="safetensors")
    with pytest.raises(ValueError, match="load_format must be one of"):
        resolve_model_source(path, load_format="pt")


def test_mixture_of_experts_gguf_without_its_expert_metadata_is_refused_naming_the_key(
    tiny_gguf_factory,
) -> None:
    """llama.cpp files Mixtral as architecture llama with expert_count; the top-k (expert_used_count) must be there
    too (test_model_gguf_moe.py loads complete files)."""
    tiny = tiny_gguf_factory(metadata=lambda writer: writer.add_expert_count(8))
    with pytest.raises(ValueError, match="lacks the metadata key 'llama.expert_used_count'"):
        resolve_model_source(str(tiny.path))
