"""Hugging Face folders written by transformers' own save_pretrained: sharded safetensors, generation config,
tokenizer, dummy format, and clear errors for folders that cannot be served."""

from __future__ import annotations

import json
import pathlib
import socket

import pytest
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

from pagedserve.models.loader import load_tokenizer, resolve_model_source

CHAT_TEMPLATE = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"


def tiny_llama_config(**overrides) -> transformers.LlamaConfig:
    values = dict(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        eos_token_id=2,
    )
    return transformers.LlamaConfig(**(values | overrides))


def save_model(
    folder: pathlib.Path, model: transformers.PreTrainedModel, **kwargs
) -> dict[str, torch.Tensor]:
    model.save_pretrained(folder, **kwargs)
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def save_word_tokenizer(folder: pathlib.Path) -> None:
    words = ["<unk>", "<s>", "</s>", "hello", "world", "[user]"]
    backend = Tokenizer(
        models.WordLevel({word: index for index, word in enumerate(words)}, unk_token="<unk>")
    )
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)


def test_sharded_llama_yields_exactly_its_state_dict(tmp_path) -> None:
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(tiny_llama_config()).to(torch.bfloat16)
    reference = save_model(tmp_path, model, max_shard_size="50KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("*.safetensors"))) > 1

    source = resolve_model_source(str(tmp_path))
    assert (source.format, source.name) == ("safetensors", tmp_path.name)
    assert source.hf_config.architectures == ["LlamaForCausalLM"]
    loaded = dict(source.iter_weights())
    assert set(loaded) == set(reference)
    assert "lm_head.weight" in loaded  # untied
    for name, tensor in loaded.items():
        assert tensor.dtype == torch.bfloat16, name  # stored dtype kept
        assert torch.equal(tensor, reference[name]), name


def test_tied_qwen2_omits_lm_head(tmp_path) -> None:
    torch.manual_seed(1)
    config = transformers.Qwen2Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    reference = save_model(tmp_path, transformers.Qwen2ForCausalLM(config))
    source = resolve_model_source(str(tmp_path))
    assert isinstance(source.hf_config, transformers.Qwen2Config)
    loaded = dict(source.iter_weights())
    assert set(loaded) == set(reference) - {"lm_head.weight"}
    assert "model.layers.0.self_attn.q_proj.bias" in loaded
    for name, tensor in loaded.items():
        assert torch.equal(tensor, reference[name]), name


def qwen3_config(**overrides) -> transformers.Qwen3Config:
    values = dict(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
    )  # fmt: skip
    return transformers.Qwen3Config(**(values | overrides))


def test_qwen3_folder_gives_its_config_and_q_k_norms(tmp_path) -> None:
    torch.manual_seed(2)
    reference = save_model(tmp_path, transformers.Qwen3ForCausalLM(qwen3_config()))
    source = resolve_model_source(str(tmp_path))
    assert isinstance(source.hf_config, transformers.Qwen3Config)
    assert source.hf_config.architectures == ["Qwen3ForCausalLM"] and source.hf_config.head_dim == 16
    loaded = dict(source.iter_weights())
    assert set(loaded) == set(reference) - {"lm_head.weight"}
    assert {"model.layers.0.self_attn.q_norm.weight", "model.layers.1.self_attn.k_norm.weight"} <= set(loaded)


def test_qwen_sliding_window_runs_only_with_disable_sliding_window(tmp_path) -> None:
    """Qwen's use_sliding_window: refused naming the flag that serves it (full attention capped at the window)."""
    from pagedserve.engine.model_rules import sliding_window_limit

    config = qwen3_config(use_sliding_window=True, sliding_window=8, max_window_layers=1)
    save_model(tmp_path, transformers.Qwen3ForCausalLM(config))
    hf_config = resolve_model_source(str(tmp_path)).hf_config
    with pytest.raises(ValueError, match="use_sliding_window.*--disable-sliding-window.*8"):
        sliding_window_limit(hf_config, disable_sliding_window=False)
    assert sliding_window_limit(hf_config, disable_sliding_window=True) == 8
    # Every layer below max_window_layers attends to everything: nothing to refuse or cap.
    full = qwen3_config(use_sliding_window=True, sliding_window=8, max_window_layers=2)
    save_model(tmp_path, transformers.Qwen3ForCausalLM(full))
    assert (
        sliding_window_limit(resolve_model_source(str(tmp_path)).hf_config, False)
        == full.max_position_embeddings
    )


def test_generation_config_gives_sampling_defaults_and_eos_ids(tmp_path) -> None:
    model = transformers.LlamaForCausalLM(tiny_llama_config())
    model.generation_config = transformers.GenerationConfig(
        do_sample=True, temperature=0.6, top_p=0.9, top_k=20, repetition_penalty=1.1, eos_token_id=[5, 2]
    )
    save_model(tmp_path, model)
    source = resolve_model_source(str(tmp_path))
    assert source.generation_defaults == {
        "temperature": 0.6,
        "top_p": 0.9,
        "top_k": 20,
        "repetition_penalty": 1.1,
    }
    assert source.eos_token_ids == [5, 2]


def test_no_generation_config_means_no_defaults(tmp_path) -> None:
    save_model(tmp_path, transformers.LlamaForCausalLM(tiny_llama_config(eos_token_id=[7, 3])))
    (tmp_path / "generation_config.json").unlink(missing_ok=True)
    source = resolve_model_source(str(tmp_path))
    assert source.generation_defaults == {}
    assert source.eos_token_ids == [7, 3]


def test_dummy_needs_only_config(tmp_path) -> None:
    tiny_llama_config().save_pretrained(tmp_path)  # config.json, no weights
    source = resolve_model_source(str(tmp_path), load_format="dummy")
    assert source.format == "dummy"
    assert source.hf_config.num_hidden_layers == 2
    with pytest.raises(ValueError, match="dummy"):
        source.iter_weights()


def test_tokenizer_from_folder_offline_with_chat_template(tmp_path, monkeypatch) -> None:
    save_model(tmp_path, transformers.LlamaForCausalLM(tiny_llama_config()))
    save_word_tokenizer(tmp_path)

    def no_network(*args, **kwargs):
        raise AssertionError("tokenizer loading tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    tokenizer = load_tokenizer(resolve_model_source(str(tmp_path)))
    assert tokenizer.chat_template == CHAT_TEMPLATE
    assert tokenizer.encode("hello world", add_special_tokens=False) == [3, 4]


def test_separate_tokenizer_folder(tmp_path) -> None:
    model_dir, tokenizer_dir = tmp_path / "model", tmp_path / "tok"
    save_model(model_dir, transformers.LlamaForCausalLM(tiny_llama_config()))
    save_word_tokenizer(tokenizer_dir)
    tokenizer = load_tokenizer(resolve_model_source(str(model_dir)), tokenizer=str(tokenizer_dir))
    assert tokenizer.encode("world", add_special_tokens=False) == [4]
    with pytest.raises(ValueError, match="cannot load a tokenizer"):
        load_tokenizer(resolve_model_source(str(model_dir)))  # the model folder has none
    with pytest.raises(
        FileNotFoundError, match="tokenizer 'org/name' is neither a local path nor in the local"
    ):
        load_tokenizer(resolve_model_source(str(model_dir)), tokenizer="org/name")


def test_consolidated_file_is_ignored_next_to_hf_shards(tmp_path) -> None:
    reference = save_model(tmp_path, transformers.LlamaForCausalLM(tiny_llama_config()))
    (tmp_path / "consolidated.safetensors").write_bytes((tmp_path / "model.safetensors").read_bytes())
    loaded = dict(resolve_model_source(str(tmp_path)).iter_weights())
    assert set(loaded) == set(reference)


def test_missing_path_is_named(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty Hub cache
    with pytest.raises(
        FileNotFoundError,
        match=r"'meta-llama/Llama-3\.1-8B' is neither a local path nor in the local Hugging Face cache.*"
        r"downloads nothing",
    ):
        resolve_model_source("meta-llama/Llama-3.1-8B")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model_source(str(tmp_path / "nope"))


def test_folder_without_config(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        resolve_model_source(str(tmp_path))
    (tmp_path / "m.gguf").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"pass the file itself.*m\.gguf"):
        resolve_model_source(str(tmp_path))


def test_folder_without_weights(tmp_path) -> None:
    tiny_llama_config().save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors weights"):
        resolve_model_source(str(tmp_path))
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="convert PyTorch checkpoints to safetensors"):
        resolve_model_source(str(tmp_path))


def test_index_naming_missing_shard(tmp_path) -> None:
    tiny_llama_config().save_pretrained(tmp_path)
    index = {"metadata": {}, "weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match="model-00001-of-00002.safetensors"):
        resolve_model_source(str(tmp_path))


def test_unsupported_model_type(tmp_path) -> None:
    transformers.GPT2Config(n_layer=1).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"model type 'gpt2'.*not supported.*llama"):
        resolve_model_source(str(tmp_path))


def test_unknown_model_type_needing_remote_code(tmp_path) -> None:
    config = {"model_type": "my_custom_arch", "auto_map": {"AutoConfig": "configuration_custom.CustomConfig"}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "configuration_custom.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(ValueError, match=r"config.json asks for the checkpoint's own code \(auto_map\).*"
                       r"'my_custom_arch'.*with or without --trust-remote-code"):  # fmt: skip
        resolve_model_source(str(tmp_path))


def test_broken_generation_config_is_named(tmp_path) -> None:
    save_model(tmp_path, transformers.LlamaForCausalLM(tiny_llama_config()))
    (tmp_path / "generation_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="generation_config.json"):
        resolve_model_source(str(tmp_path))


def test_non_gguf_file_and_folder_with_gguf_format(tmp_path) -> None:
    weights_file = tmp_path / "weights.safetensors"
    weights_file.write_bytes(b"")
    with pytest.raises(ValueError, match="not a .gguf file"):
        resolve_model_source(str(weights_file))
    tiny_llama_config().save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="'gguf' needs a .gguf file"):
        resolve_model_source(str(tmp_path / "m"), load_format="gguf")
