"""Gemma 2: a tiny random checkpoint saved by transformers (soft-caps small enough to bend its scores, a 6-token
window on every other layer) gives transformers' logits (float32, 1e-4) over whole prompts, chunked prefills and
decode steps, on the C kernels and on the PyTorch backends; without the caps the logits differ (they are not
idle)."""

from __future__ import annotations

import sys

import pytest
import torch
from model_steps import load_model, logits_of

from pagedserve.attention.backend import get_attention_backend

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
from tiny_models import write_tiny_gemma2  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gemma2")
    return folder, write_tiny_gemma2(folder, seed=2)


def reference_logits(model, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([tokens])).logits[0]


@pytest.mark.parametrize("backend", ["cpu", "cpu_torch", "torch_ref"])
@pytest.mark.parametrize("chunks", [[21], [5, 9, 7], [13, 1, 1, 1, 1, 1, 1, 1, 1]])
def test_logits_match_transformers(checkpoint, backend, chunks):
    folder, reference = checkpoint
    config, ours = load_model(folder, keep_quantized=False)
    assert type(ours).__name__ == "Gemma2ForCausalLM"
    assert [layer.self_attn.sliding_window for layer in ours.model.layers] == [6, None, 6, None]
    for layer in ours.model.layers:
        layer.self_attn.backend = get_attention_backend(backend)
    tokens = torch.randint(5, 500, (sum(chunks),), generator=torch.Generator().manual_seed(1)).tolist()
    got = logits_of(ours, config, tokens, chunks)
    expected = reference_logits(reference, tokens)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert float(expected.abs().max()) < 3.0  # the final cap holds every logit inside (-3, 3)


def test_the_caps_change_the_logits(checkpoint):
    folder, reference = checkpoint
    config, ours = load_model(folder, keep_quantized=False)
    tokens = list(range(40, 61))
    for layer in ours.model.layers:
        layer.self_attn.softcap = None
    ours.final_softcap = None
    got = logits_of(ours, config, tokens, [21])
    assert not torch.allclose(got, reference_logits(reference, tokens), atol=1e-2)
