"""vLLM's online FP8 on a real model: the bundled SmolLM2 as a float checkpoint (transformers' dequantization of
the GGUF, tests/ct_writer.py), served with `--quantization fp8`: its linear layers quantized to float8 e4m3 at load,
greedy text against the same checkpoint in float32, and the flag through a real `pagedserve serve` to the openai
SDK."""

from __future__ import annotations

import pytest
from tests.ct_writer import bundled_float_folder
from tests.e2e.conftest import launch, served_chat
from tests.integration.bundled_prompts import PROMPTS

from pagedserve import LLM, SamplingParams

pytestmark = [pytest.mark.slow, pytest.mark.model]

TOKENS = 32


def test_fp8_greedy_text_follows_the_float_model() -> None:
    """8 prompts x 32 tokens. float8 e4m3 rounds each weight and activation by up to 6 % of itself, so texts part
    after a while, all fluent; the measure is teacher forcing: with the float model's greedy text fed back, how
    often the FP8 model's most likely next token is the float model's: 0.879 measured (AVX2, 2026-12-05; no whole
    text equal). The bound leaves room for other ISA levels' summation orders."""
    common = dict(dtype="float32", max_model_len=512, kv_cache_memory_bytes=64 * 1024**2)
    folder = str(bundled_float_folder())
    reference = LLM(folder, **common)
    fp8 = LLM(folder, quantization="fp8", **common)
    assert fp8.llm_engine.info.quantization == "fp8"
    # float8 layers: a byte a weight against float32's 4, beside the float32 embedding (28 M of 135 M parameters)
    assert fp8.llm_engine.info.weight_bytes < 0.45 * reference.llm_engine.info.weight_bytes
    tokenizer = reference.get_tokenizer()
    greedy = SamplingParams(temperature=0, max_tokens=TOKENS, ignore_eos=True)
    same_texts, agreeing = 0, []
    for prompt in PROMPTS:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_dict=True
        )["input_ids"]
        expected = (
            reference.generate({"prompt_token_ids": ids}, greedy, use_tqdm=False)[0].outputs[0].token_ids
        )
        got = fp8.generate({"prompt_token_ids": ids}, greedy, use_tqdm=False)[0].outputs[0].token_ids
        same_texts += got == expected
        forced = fp8.generate(
            {"prompt_token_ids": ids + list(expected)},
            SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=1),
            use_tqdm=False,
        )[0].prompt_logprobs
        for position, token in enumerate(expected, start=len(ids)):
            top = next(t for t, lp in forced[position].items() if lp.rank == 1)
            agreeing.append(top == token)
    agreement = sum(agreeing) / len(agreeing)
    print(f"fp8: {same_texts}/8 greedy texts equal, next-token agreement {agreement:.3f}")
    assert agreement >= 0.8, f"the FP8 model's next token is the float model's at only {agreement:.2f}"


def test_fp8_flag_is_served_to_the_openai_sdk(tmp_path) -> None:
    server = launch(tmp_path, "--model", str(bundled_float_folder()), "--quantization", "fp8")
    try:
        server.wait_ready()
        chat = served_chat(server, "What is the capital of France?")
        assert "Paris" in chat.choices[0].message.content
        log = server.log()
        assert "quantization=fp8" in log and "quantization fp8: 120 linear layers quantized" in log
    finally:
        assert server.terminate() == 0
