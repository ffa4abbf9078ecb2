"""Gemma 3 (text): tiny random checkpoints saved by transformers, Gemma3ForCausalLM and the multimodal
Gemma3ForConditionalGeneration (loaded text-only), give transformers' logits (float32, 1e-4) over whole prompts,
chunked prefills and decode steps, with prompts several times the sliding window (6 tokens) so the local layers'
window decides the result; in bfloat16 the norms keep 1 + weight in float32; what is not implemented is refused by
name."""

from __future__ import annotations

import sys

import pytest
import torch
import transformers
from model_steps import load_model, logits_of

from pagedserve.attention.backend import get_attention_backend
from pagedserve.layers.layernorm import GemmaRMSNorm
from pagedserve.models.gemma3 import Gemma3ForCausalLM
from pagedserve.models.registry import resolve_model_class

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
from tiny_models import randomize_gemma_norms, tiny_gemma3_text_config, write_tiny_gemma3  # noqa: E402

VOCAB = 97


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("gemma3")
    return {
        kind: (root / kind, write_tiny_gemma3(root / kind, kind == "multimodal"))
        for kind in ("text", "multimodal")
    }


def reference_logits(model, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([tokens])).logits[0]


@pytest.mark.parametrize("kind", ["text", "multimodal"])
@pytest.mark.parametrize("chunks", [[21], [5, 9, 7], [13, 1, 1, 1, 1, 1, 1, 1, 1]])
def test_logits_match_transformers(checkpoints, kind, chunks):
    folder, reference = checkpoints[kind]
    config, ours = load_model(folder, keep_quantized=False)
    assert type(ours).__name__ == (
        "Gemma3ForCausalLM" if kind == "text" else "Gemma3ForConditionalGeneration"
    )
    tokens = torch.randint(5, 500, (sum(chunks),), generator=torch.Generator().manual_seed(1)).tolist()
    got = logits_of(ours, config, tokens, chunks)
    torch.testing.assert_close(got, reference_logits(reference, tokens), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", ["torch_ref", "cpu_torch"])
def test_other_attention_backends(checkpoints, backend):
    folder, reference = checkpoints["text"]
    config, ours = load_model(folder, keep_quantized=False)
    for layer in ours.model.layers:
        layer.self_attn.backend = get_attention_backend(backend)
    tokens = list(range(30, 50))
    got = logits_of(ours, config, tokens, [9, 1, 1, 9])
    torch.testing.assert_close(got, reference_logits(reference, tokens), atol=1e-4, rtol=1e-4)


def test_the_window_and_the_layer_kinds_are_taken_from_the_config(checkpoints):
    folder, _ = checkpoints["text"]
    _, ours = load_model(folder, keep_quantized=False)
    assert [layer.self_attn.sliding_window for layer in ours.model.layers] == [6, None, 6, 6]
    assert [layer.is_sliding for layer in ours.model.layers] == [True, False, True, True]
    assert ours.model.layers[0].self_attn.scale == pytest.approx(24**-0.5)
    # Without the window the answer differs: the test above could not pass with full attention everywhere.
    for layer in ours.model.layers:
        layer.self_attn.sliding_window = None
    config, reference = load_model(folder, keep_quantized=False)[0], checkpoints["text"][1]
    tokens = list(range(30, 50))
    got = logits_of(ours, config, tokens, [20])
    assert not torch.allclose(got[-1], reference_logits(reference, tokens)[-1], atol=1e-2)


def test_bfloat16_keeps_norm_weights_in_float32():
    """In bfloat16 each norm's 1 + weight stays float32 (bf16 would round 1.01 to 1.0078) and the norm computes in
    float32 before rounding once, as transformers' Gemma3RMSNorm."""
    torch.manual_seed(0)
    config = tiny_gemma3_text_config(VOCAB)
    config.architectures = ["Gemma3ForCausalLM"]
    reference = transformers.Gemma3ForCausalLM(config).eval()
    randomize_gemma_norms(reference, 3)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        ours = resolve_model_class(config)(config, get_attention_backend("cpu")).eval()
    finally:
        torch.set_default_dtype(previous)
    ours.load_weights(reference.state_dict().items())
    norm = ours.model.layers[0].pre_feedforward_layernorm
    assert isinstance(norm, GemmaRMSNorm) and norm.weight.dtype == torch.float32
    stored = reference.model.layers[0].pre_feedforward_layernorm.weight
    torch.testing.assert_close(norm.weight, stored.float() + 1)
    x = torch.randn(3, 64).bfloat16()
    expected = reference.model.layers[0].pre_feedforward_layernorm.to(torch.float32)(x)
    assert norm(x).dtype == torch.bfloat16
    torch.testing.assert_close(norm(x), expected)
    # The whole model in bfloat16 stays near float32 transformers (bf16 rounding only).
    tokens = list(range(40, 60))
    got = logits_of_bf16(ours, config, tokens)
    expected_logits = reference_logits(reference.float(), tokens)
    assert torch.nn.functional.cosine_similarity(got[-1].float(), expected_logits[-1], dim=0) > 0.99


def logits_of_bf16(model, config, tokens):
    from pagedserve.core.scheduler_output import ScheduledSequence
    from pagedserve.worker.inputs import prepare_inputs
    from pagedserve.worker.kv_cache import allocate_kv_caches

    caches = allocate_kv_caches(config, 8, 4, torch.bfloat16, torch.device("cpu"))
    seq = ScheduledSequence("r", 0, tokens, list(range(5)), samples=False)
    step = prepare_inputs([seq], 4, torch.device("cpu"))
    with torch.no_grad():
        return model.compute_logits(model(step.input_ids, step.positions, caches, step.metadata))


@pytest.mark.parametrize(
    "override,message",
    [
        ({"final_logit_softcapping": 30.0}, "final_logit_softcapping"),
        ({"attn_logit_softcapping": 50.0}, "attn_logit_softcapping"),
        ({"hidden_activation": "gelu"}, "hidden_activation"),
        ({"use_bidirectional_attention": True}, "use_bidirectional_attention"),
    ],
)
def test_what_is_not_implemented_is_refused_by_name(override, message):
    config = tiny_gemma3_text_config(VOCAB, **override)
    with pytest.raises(ValueError, match=message):
        Gemma3ForCausalLM(config, get_attention_backend("cpu"))


def test_the_multimodal_config_serves_its_text_config(checkpoints):
    from pagedserve.models.loader import resolve_model_source

    source = resolve_model_source(str(checkpoints["multimodal"][0]))
    assert isinstance(source.hf_config, transformers.Gemma3TextConfig)
    assert source.hf_config.architectures == ["Gemma3ForConditionalGeneration"]
    names = {name for name, _ in source.iter_weights(False)}
    assert any(name.startswith("vision_tower.") for name in names)  # in the file, skipped by load_weights
