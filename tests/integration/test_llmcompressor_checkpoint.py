"""A checkpoint made by llm-compressor itself (its `oneshot` with a QuantizationModifier, in its own venv:
tests/llmcompressor/) from a real model — the bundled SmolLM2 dequantized to a float32 Hugging Face folder,
quantized W4A16 in groups of 64 — served by a real `pagedserve serve` to the openai SDK, whose greedy text follows
transformers running the same checkpoint."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
import transformers
from tests.ct_writer import bundled_float_model
from tests.e2e.conftest import launch
from tests.integration.bundled_prompts import PROMPTS
from tests.llmcompressor.venv import llmcompressor_python

pytestmark = [pytest.mark.slow, pytest.mark.model, pytest.mark.server]

TOKENS = 32
ONESHOT = "tests/llmcompressor/oneshot_w4a16.py"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    python = llmcompressor_python()
    source = tmp_path_factory.mktemp("float")
    model, tokenizer = bundled_float_model()
    model.save_pretrained(source)
    tokenizer.save_pretrained(source)
    out = tmp_path_factory.mktemp("w4a16-llmcompressor")
    done = subprocess.run(
        [str(python), ONESHOT, str(source), str(out)], capture_output=True, text=True, timeout=1200
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_llmcompressor_checkpoint_serves_and_follows_transformers(checkpoint, tmp_path) -> None:
    """Measured 2026-12-03: 3 of 3 prompts x 32 greedy tokens equal transformers' text."""
    import openai

    config = json.loads((checkpoint / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["format"] == "pack-quantized"
    [group] = config["config_groups"].values()
    assert group["weights"]["num_bits"] == 4 and group["weights"]["group_size"] == 64
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(checkpoint))
    reference = transformers.AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32).eval()
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, return_dict=True
        )["input_ids"]
        for p in PROMPTS[:3]
    ]
    expected = []
    for ids in prompts:
        with torch.no_grad():
            tensor = torch.tensor([ids])
            generated = reference.generate(tensor, max_new_tokens=TOKENS, do_sample=False, eos_token_id=None,
                                           attention_mask=torch.ones_like(tensor), pad_token_id=0)  # fmt: skip
        expected.append(tokenizer.decode(generated[0, len(ids) :], skip_special_tokens=True))
    server = launch(tmp_path, "--model", str(checkpoint), "--dtype", "float32")
    try:
        server.wait_ready()
        assert "quantization=compressed-tensors" in server.log()
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none")
        [model] = client.models.list().data
        got = [
            client.completions.create(
                model=model.id, prompt=ids, temperature=0, max_tokens=TOKENS, extra_body={"ignore_eos": True}
            )
            .choices[0]
            .text
            for ids in prompts
        ]
    finally:
        assert server.terminate() == 0
    same = sum(g == e for g, e in zip(got, expected))
    print(f"llm-compressor W4A16: {same}/3 greedy texts equal transformers'", got, expected)
    assert same >= 2, f"only {same} of 3 greedy texts equal transformers': {got} vs {expected}"
