"""The bundled SmolLM2 GGUF loaded by pagedserve equals what transformers' own GGUF loader builds: every weight
exactly (float32), the config, and the tokenizer with its chat template. Loads the model once per module."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import gguf
import pytest
import torch
import transformers

from pagedserve.models.bundled import BUNDLED_MODEL_NAME, bundled_model_path
from pagedserve.models.loader import ModelSource, load_tokenizer, resolve_model_source

pytestmark = [pytest.mark.model, pytest.mark.slow]

CONVERSATION = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What is 2+2? Réponds en français 🙂"},
    {"role": "assistant", "content": "4, quatre."},
    {"role": "user", "content": "  And\ttabs,\nnewlines and 中文?"},
]
CONFIG_FIELDS = [
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_parameters",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
]


@pytest.fixture(scope="module")
def source() -> ModelSource:
    return resolve_model_source(None)


@pytest.fixture(scope="module")
def reference_model() -> Iterator[transformers.PreTrainedModel]:
    path = bundled_model_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    yield model
    del model


@pytest.fixture(scope="module")
def reference_tokenizer() -> transformers.PreTrainedTokenizerBase:
    path = bundled_model_path()
    return transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def test_source_describes_the_bundled_model(source) -> None:
    assert source.name == BUNDLED_MODEL_NAME
    assert source.format == "gguf"
    assert source.path == bundled_model_path()
    assert source.hf_config.architectures == ["LlamaForCausalLM"]
    assert source.eos_token_ids == [2]  # <|im_end|>
    assert source.generation_defaults == {}


def test_config_matches_transformers(source, reference_model) -> None:
    ours, theirs = source.hf_config.to_dict(), reference_model.config.to_dict()
    assert {key: ours[key] for key in CONFIG_FIELDS} == {key: theirs[key] for key in CONFIG_FIELDS}


def test_every_weight_equals_transformers_state_dict(source, reference_model) -> None:
    reference = reference_model.state_dict()
    expected_names = set(reference) - {"lm_head.weight"}  # tied to the embedding
    seen: set[str] = set()
    for name, tensor in source.iter_weights():
        assert name in expected_names, name
        assert tensor.dtype == torch.float32, name  # Q4_1 / Q8_0 dequantized, norms stored as F32
        assert torch.equal(tensor, reference[name]), name
        seen.add(name)
    assert seen == expected_names


def test_tokenizer_matches_transformers_and_has_chat_template(
    source, reference_tokenizer, monkeypatch
) -> None:
    def no_network(*args, **kwargs):
        raise AssertionError("tokenizer loading tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    tokenizer = load_tokenizer(source)

    template = gguf.GGUFReader(source.path).fields["tokenizer.chat_template"].contents()
    assert tokenizer.chat_template == template
    ours = tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    theirs = reference_tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert ours == theirs and ours.endswith("<|im_start|>assistant\n")
    ours_ids = tokenizer.encode(ours, add_special_tokens=False)
    assert ours_ids == reference_tokenizer.encode(theirs, add_special_tokens=False)
    assert ours_ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>") == 1
    assert tokenizer.decode(ours_ids) == ours
    assert (tokenizer.eos_token_id, tokenizer.bos_token_id) == (2, 1)
