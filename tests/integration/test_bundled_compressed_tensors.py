"""A real model's compressed-tensors checkpoints — the bundled SmolLM2 quantized W4A16 (groups of 64) and W8A8 by
the compressed-tensors library (tests/ct_writer.py) — run kept quantized: greedy text against transformers
running the same checkpoint, the weights held, and the checkpoint served by a real `pagedserve serve` to the
openai SDK."""

from __future__ import annotations

import pytest
import torch
import transformers
from tests.ct_writer import write_bundled_ct
from tests.e2e.conftest import launch, served_chat
from tests.integration.bundled_prompts import PROMPTS

from pagedserve import LLM, SamplingParams

pytestmark = [pytest.mark.slow, pytest.mark.model]

TOKENS = 32


@pytest.fixture(scope="module", params=["W4A16", "W8A8"])
def checkpoint(request, tmp_path_factory):
    return request.param, write_bundled_ct(tmp_path_factory.mktemp(request.param), request.param)


def test_greedy_text_follows_transformers_on_the_checkpoint(checkpoint) -> None:
    """Issue 11 asks that the checkpoint follow transformers' output. Two measures over 8 prompts x 32 tokens:
    whole greedy texts equal, and, with transformers' greedy text fed back (teacher forcing), how often our
    most likely next token is the one transformers chose. W4A16 multiplies exactly what transformers does (8 of
    8 texts equal, agreement 1.000, 2026-12-02). W8A8 quantizes activations per token, and this model's
    activations have outliers far above the typical value, so float32 summation-order differences flip int8
    roundings worth a whole step: texts part after 1-13 tokens, all fluent ("The capital of France is Paris."),
    and agreement measured 0.90 — the same checkpoint dequantized (no activation quantization) agreed 0.89, so
    this is the scheme's own noise. The tiny models' logits (tests/unit/models/test_model_compressed_tensors.py)
    match transformers' within 2e-7 for W8A8: that is where its arithmetic is checked."""
    preset, folder = checkpoint
    llm = LLM(str(folder), dtype="float32", max_model_len=512, kv_cache_memory_bytes=64 * 1024**2)
    info = llm.llm_engine.info
    assert info.quantization == "compressed-tensors"
    # W4A16 as GGUF Q4_0 blocks (4.5 bits a weight), W8A8 as int8 rows: against 4 bytes a float32 weight, with
    # the float32 embedding (28 M of the 135 M parameters, tied to the LM head) held in full by both.
    assert info.weight_bytes < (0.45 if preset == "W4A16" else 0.5) * 4 * 134.5e6
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    reference = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    same_texts, agreeing = 0, []
    for prompt in PROMPTS:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )["input_ids"]
        with torch.no_grad():
            expected = reference.generate(ids, max_new_tokens=TOKENS, do_sample=False, eos_token_id=None,
                                          attention_mask=torch.ones_like(ids), pad_token_id=0)  # fmt: skip
        continuation = expected[0, ids.shape[1] :].tolist()
        greedy = SamplingParams(temperature=0, max_tokens=TOKENS, ignore_eos=True)
        out = llm.generate({"prompt_token_ids": ids[0].tolist()}, greedy, use_tqdm=False)[0]
        same_texts += out.outputs[0].token_ids == continuation
        forced = llm.generate(
            {"prompt_token_ids": expected[0].tolist()},
            SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=1),
            use_tqdm=False,
        )[0].prompt_logprobs
        for position, token in enumerate(continuation, start=ids.shape[1]):
            top = next(t for t, lp in forced[position].items() if lp.rank == 1)
            agreeing.append(top == token)
    agreement = sum(agreeing) / len(agreeing)
    print(f"{preset}: {same_texts}/8 greedy texts equal, next-token agreement {agreement:.3f}")
    if preset == "W4A16":
        assert same_texts >= 6, f"only {same_texts} of 8 greedy texts equal transformers'"
    assert agreement >= 0.85, (
        f"{preset}: our next token is transformers' at only {agreement:.2f} of positions"
    )


def test_checkpoint_is_served_to_the_openai_sdk(checkpoint, tmp_path) -> None:
    preset, folder = checkpoint
    server = launch(tmp_path, "--model", str(folder), "--dtype", "float32")
    try:
        server.wait_ready()
        chat = served_chat(server, "What is the capital of France?")
        assert chat.choices[0].message.content and chat.usage.completion_tokens > 0
        assert "quantization=compressed-tensors" in server.log()
    finally:
        assert server.terminate() == 0
