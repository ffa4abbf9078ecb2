"""BERT / XLM-RoBERTa encoders (models/bert.py) against transformers on tiny random checkpoints: the hidden states
of several prompts run in one step, in float32 and bfloat16; the checkpoint names they load (masked-LM and
transformers 4 spellings); what they refuse. The pooling rules (layers/pooler.py, sentence-transformers folders)."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch
import transformers
from tests.tiny_models import write_tiny_encoder

from pagedserve.attention.backend import AttentionMetadata, PrefillChunk
from pagedserve.attention.encoder import encoder_attention
from pagedserve.core.scheduler_output import ScheduledSequence
from pagedserve.layers.pooler import pool_rows
from pagedserve.models.bert import BertModel, check_encoder_config
from pagedserve.models.hf_folder import sentence_transformers_pooling
from pagedserve.models.loader import resolve_model_source
from pagedserve.models.registry import resolve_model_class
from pagedserve.worker.inputs import prepare_inputs

PROMPTS = [[1, 8, 9, 10, 2], [1, 20, 21, 22, 23, 24, 25, 26, 27, 28, 2], [1, 40, 2]]


def _load(folder: pathlib.Path, dtype: torch.dtype = torch.float32) -> BertModel:
    source = resolve_model_source(str(folder))
    model = resolve_model_class(source.hf_config)(source.hf_config).to(dtype).eval()
    model.load_weights(source.iter_weights(False))
    return model


def _hidden_states(model: BertModel, prompts: list[list[int]]) -> list[torch.Tensor]:
    """Every prompt in one step, as the scheduler sends an encoder's prompts: whole, from position 0."""
    seqs = [
        ScheduledSequence(f"s{i}", 0, p, [i * 4 + b for b in range(4)], samples=True)
        for i, p in enumerate(prompts)
    ]
    step = prepare_inputs(seqs, 4, torch.device("cpu"))
    with torch.no_grad():
        hidden = model(step.input_ids, step.positions, [], step.metadata)
    return list(hidden.float().split([len(p) for p in prompts]))


@pytest.mark.parametrize("kind", ["bert", "xlm-roberta"])
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 2e-5), (torch.bfloat16, 0.1)])
def test_hidden_states_match_transformers(tmp_path, kind, dtype, tolerance) -> None:
    reference = write_tiny_encoder(tmp_path, kind, seed=3)
    model = _load(tmp_path, dtype)
    # XLM-R's vocabulary: <s> 0, <pad> 1 (a pad in a prompt would change transformers' positions).
    prompts = [[0, *p[1:]] for p in PROMPTS] if kind == "xlm-roberta" else PROMPTS
    for prompt, hidden in zip(prompts, _hidden_states(model, prompts)):
        with torch.no_grad():
            expected = reference(torch.tensor([prompt])).last_hidden_state[0]
        assert (hidden - expected).abs().max() < tolerance


def test_masked_lm_names_and_transformers_4_spellings_load(tmp_path) -> None:
    """BertForMaskedLM saves the encoder under `bert.` beside its `cls.` head; old checkpoints spell LayerNorm's
    parameters gamma / beta. Both load into the same encoder; the heads and the pooler are not loaded."""
    reference = write_tiny_encoder(tmp_path / "plain", seed=4)
    masked = transformers.BertForMaskedLM(reference.config)
    masked.bert.load_state_dict(reference.state_dict(), strict=False)
    state = {
        name.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
            "LayerNorm.bias", "LayerNorm.beta"
        ): tensor
        for name, tensor in masked.state_dict().items()
    }
    assert any(name.startswith("cls.") for name in state) and "bert.embeddings.LayerNorm.gamma" in state
    model = BertModel(reference.config).eval()
    loaded = model.load_weights(state.items())
    assert loaded == {name for name, _ in model.named_parameters()}
    expected = _hidden_states(_load(tmp_path / "plain"), PROMPTS[:1])[0]
    assert torch.equal(_hidden_states(model, PROMPTS[:1])[0], expected)


def test_refusals_name_what_is_not_run() -> None:
    config = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, hidden_act="silu"
    )
    with pytest.raises(ValueError, match="hidden_act 'silu'"):
        check_encoder_config(config)
    config = transformers.BertConfig(
        hidden_size=32, num_attention_heads=4, position_embedding_type="relative_key"
    )
    with pytest.raises(ValueError, match="position_embedding_type 'relative_key'"):
        check_encoder_config(config)
    with pytest.raises(ValueError, match="has no language-model head"):
        BertModel(
            transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4)
        ).compute_logits(torch.zeros(1, 32))


def test_encoder_attention_is_bidirectional_per_prompt_and_refuses_cached_context() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(7, 2, 8) for _ in range(3))
    chunks = [PrefillChunk(0, 4, 0, torch.zeros(1)), PrefillChunk(4, 3, 0, torch.zeros(1))]
    out = encoder_attention(q, k, v, AttentionMetadata(torch.zeros(7), prefills=chunks), 0.5)
    for start, end in ((0, 4), (4, 7)):
        scores = torch.einsum("qhd,khd->hqk", q[start:end], k[start:end]) * 0.5
        expected = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v[start:end])
        assert torch.allclose(out[start:end], expected, atol=1e-6)
    with pytest.raises(ValueError, match="whole in one step"):
        encoder_attention(
            q, k, v, AttentionMetadata(torch.zeros(7), prefills=[PrefillChunk(0, 7, 4, None)]), 0.5
        )
    with pytest.raises(ValueError, match="no decode steps"):
        encoder_attention(q, k, v, AttentionMetadata(torch.zeros(7), num_decode_tokens=1), 0.5)


def test_pool_rows_takes_last_first_or_mean_rows() -> None:
    hidden = torch.arange(12.0).reshape(6, 2)
    spans = [(0, 2), (3, 5)]
    assert pool_rows(hidden, spans, "LAST", [False, False]).tolist() == [[4, 5], [10, 11]]
    assert pool_rows(hidden, spans, "CLS", [False, False]).tolist() == [[0, 1], [6, 7]]
    assert pool_rows(hidden, spans, "MEAN", [False, False]).tolist() == [[2, 3], [8, 9]]
    normalized = pool_rows(hidden, spans, "MEAN", [True, False])
    assert torch.allclose(normalized[0], torch.tensor([2.0, 3.0]) / 13**0.5) and normalized[1].tolist() == [
        8,
        9,
    ]


def _modules(folder: pathlib.Path, modules: list[str], pooling: dict) -> pathlib.Path:
    entries = [
        {"idx": i, "name": str(i), "path": f"{i}_{kind}", "type": f"sentence_transformers.models.{kind}"}
        for i, kind in enumerate(modules)
    ]
    (folder / "modules.json").write_text(json.dumps(entries))
    for i, kind in enumerate(modules):
        (folder / f"{i}_{kind}").mkdir()
        (folder / f"{i}_{kind}" / "config.json").write_text(json.dumps(pooling if kind == "Pooling" else {}))
    return folder


def test_sentence_transformers_pooling_rules(tmp_path) -> None:
    assert sentence_transformers_pooling(tmp_path) is None  # no modules.json: the model's default
    cases = {
        "cls": (["Transformer", "Pooling", "Normalize"], {"pooling_mode_cls_token": True}, "CLS"),
        "mean": (
            ["Transformer", "Pooling"],
            {"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False},
            "MEAN",
        ),
        "last": (["Transformer", "Pooling"], {"pooling_mode_lasttoken": True}, "LAST"),
    }
    for name, (modules, pooling, expected) in cases.items():
        (tmp_path / name).mkdir()
        assert sentence_transformers_pooling(_modules(tmp_path / name, modules, pooling)) == expected
    refused = {
        "max": (
            ["Transformer", "Pooling"],
            {"pooling_mode_max_tokens": True},
            "pooling max_tokens is not supported",
        ),
        "two": (
            ["Transformer", "Pooling"],
            {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True},
            "pooling cls_token, mean_tokens is not supported",
        ),
        "dense": (
            ["Transformer", "Pooling", "Dense"],
            {"pooling_mode_cls_token": True},
            "module 'Dense' is not supported",
        ),
    }
    for name, (modules, pooling, message) in refused.items():
        (tmp_path / name).mkdir()
        with pytest.raises(ValueError, match=message):
            sentence_transformers_pooling(_modules(tmp_path / name, modules, pooling))


def test_pooling_params_check_their_fields_and_token_types_expand() -> None:
    from pagedserve.pooling_params import PoolingParams
    from pagedserve.worker.pooling import token_types

    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="token_type_start"):
            PoolingParams(token_type_start=bad)
    with pytest.raises(ValueError, match="use_activation"):
        PoolingParams(use_activation=1)
    seqs = [ScheduledSequence(f"s{i}", 0, p, [i], samples=True) for i, p in enumerate(PROMPTS)]
    step = prepare_inputs(seqs, 16, torch.device("cpu"))
    types = token_types(step, [PoolingParams(token_type_start=3), None, PoolingParams()], torch.device("cpu"))
    assert types.tolist() == [0, 0, 0, 1, 1] + [0] * 11 + [0, 0, 0]
