"""PEFT adapter folders checked without torch (lora/adapter.py): what is applied, and each refusal by name.

Folders are written in PEFT's format (tests/lora_writer.py) for a tiny transformers Llama.
"""

from __future__ import annotations

import json
import math
import pathlib

import pytest
import torch
import transformers
from safetensors.torch import save_file
from tests.lora_writer import write_adapter

from pagedserve.lora.adapter import AdapterChecker, lora_target_shapes, read_adapter
from pagedserve.lora.request import LoRAModule, LoRARequest


@pytest.fixture(scope="module")
def model() -> transformers.LlamaForCausalLM:
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config).eval()


def _read(folder: pathlib.Path, model, max_rank: int = 16):
    config = model.config
    return read_adapter(folder, max_rank, lora_target_shapes(config), config.num_hidden_layers)


def test_a_peft_folder_gives_its_rank_scaling_and_layers(tmp_path, model):
    write_adapter(tmp_path, model.config, targets=("q_proj", "v_proj", "down_proj"), rank=4, alpha=8)
    spec = _read(tmp_path, model)
    assert (spec.rank, spec.scaling) == (4, 2.0)
    assert [m.module for m in spec.modules] == [
        "model.layers.0.mlp.down_proj", "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
        "model.layers.1.mlp.down_proj", "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj",
    ]  # fmt: skip
    assert spec.modules[0].a_key == "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"


def test_rslora_scales_by_the_square_root_of_the_rank(tmp_path, model):
    write_adapter(tmp_path, model.config, rank=9, alpha=6, use_rslora=True)
    assert math.isclose(_read(tmp_path, model).scaling, 2.0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"use_dora": True}, "use_dora is set: DoRA"),
        ({"bias": "lora_only"}, "trained biases"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save is set"),
        ({"rank_pattern": {"q_proj": 4}}, "rank_pattern"),
        ({"alpha_pattern": {"q_proj": 4}}, "alpha_pattern"),
        ({"peft_type": "IA3"}, "peft_type 'IA3'"),
    ],
)
def test_what_cannot_be_applied_is_refused_by_name(tmp_path, model, overrides, message):
    write_adapter(tmp_path, model.config, config_overrides=overrides)
    with pytest.raises(ValueError, match=message):
        _read(tmp_path, model)


def test_a_rank_past_max_lora_rank_is_refused(tmp_path, model):
    write_adapter(tmp_path, model.config, rank=32)
    with pytest.raises(ValueError, match="has rank 32; --max-lora-rank is 16"):
        _read(tmp_path, model)
    assert _read(tmp_path, model, max_rank=32).rank == 32


def test_an_adapter_for_another_model_is_refused_with_the_shapes(tmp_path, model):
    other = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=64,
            hidden_size=48,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )  # fmt: skip
    )
    write_adapter(tmp_path, other.config)
    with pytest.raises(
        ValueError,
        match=r"down_proj has lora_A \[8, 48\] and lora_B \[48, 8\]; .* need \[8, 48\] and \[32, 8\]",
    ):
        _read(tmp_path, model)
    deeper = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
        )  # fmt: skip
    )
    write_adapter(tmp_path / "deeper", deeper.config, layers=(2,))
    with pytest.raises(ValueError, match="names layer 2; the model has 2"):
        _read(tmp_path / "deeper", model)


def test_embedding_and_lm_head_adapters_and_half_pairs_are_refused(tmp_path, model):
    tensors = write_adapter(tmp_path, model.config, targets=("q_proj",))
    extra = dict(tensors, **{"base_model.model.lm_head.lora_A.weight": torch.zeros(8, 32)})
    save_file(extra, str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="lm_head.lora_A.weight' is not a LoRA weight of a supported layer"):
        _read(tmp_path, model)
    half = {k: v for k, v in tensors.items() if "layers.1." not in k or ".lora_A." in k}
    save_file(half, str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="layers.1.self_attn.q_proj has lora_A without its other half"):
        _read(tmp_path, model)


def test_missing_files_and_pickles_are_refused(tmp_path, model):
    with pytest.raises(ValueError, match="is not a folder"):
        _read(tmp_path / "nowhere", model)
    with pytest.raises(ValueError, match="has no adapter_config.json"):
        _read(tmp_path, model)
    write_adapter(tmp_path, model.config)
    (tmp_path / "adapter_model.safetensors").rename(tmp_path / "adapter_model.bin")
    with pytest.raises(ValueError, match="adapter_model.bin is a pickle, never loaded"):
        _read(tmp_path, model)
    (tmp_path / "adapter_model.safetensors").write_bytes(b"\x10\x00")
    with pytest.raises(ValueError, match="is not a safetensors file"):
        _read(tmp_path, model)
    (tmp_path / "adapter_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        _read(tmp_path, model)


def test_the_checker_reads_a_folder_once_per_id(tmp_path, model):
    write_adapter(tmp_path, model.config)
    checker = AdapterChecker(model.config, max_rank=16)
    checker.check(1, str(tmp_path))
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 8, "use_dora": True}))
    checker.check(1, str(tmp_path))  # remembered
    with pytest.raises(ValueError, match="DoRA"):
        checker.check(2, str(tmp_path))  # a new id (a reload) reads the folder again


def test_lora_modules_flag_values_parse_in_vllms_two_forms():
    assert LoRAModule.parse("sql=/adapters/sql") == LoRAModule("sql", "/adapters/sql")
    parsed = LoRAModule.parse('{"name": "sql", "path": "/a", "base_model_name": "llama"}')
    assert parsed == LoRAModule("sql", "/a", "llama")
    for bad, message in [
        ("sql", "expected name=path"),
        ("=/a", "expected name=path"),
        ('{"name": "sql"}', "expected name=path"),
        ('{"name": "sql", "path": "/a", "rank": 4}', r"unknown keys: \['rank'\]"),
        ("{oops", "is not valid JSON"),
    ]:
        with pytest.raises(ValueError, match=message):
            LoRAModule.parse(bad)


def test_a_lora_request_needs_a_positive_id_and_a_name():
    with pytest.raises(ValueError, match="lora_int_id must be >= 1"):
        LoRARequest("a", 0, "/a")
    with pytest.raises(ValueError, match="lora_name must be a non-empty string"):
        LoRARequest("", 1, "/a")
