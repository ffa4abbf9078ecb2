"""The offline API as vLLM users call it, and `pagedserve generate` on the command line."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from pagedserve import LLM, SamplingParams

pytestmark = [pytest.mark.slow, pytest.mark.model]


def test_generate_accepts_vllm_prompt_shapes(bundled_llm_fp32, engine_fp32):
    params = SamplingParams(temperature=0, max_tokens=6)
    single = bundled_llm_fp32.generate("The sky is", params, use_tqdm=False)
    assert len(single) == 1 and single[0].prompt == "The sky is"
    ids = single[0].prompt_token_ids
    as_ids = bundled_llm_fp32.generate({"prompt_token_ids": ids}, params, use_tqdm=False)
    as_list = bundled_llm_fp32.generate([ids], params, use_tqdm=False)
    several = bundled_llm_fp32.generate(["The sky is", "Two plus two is"], params, use_tqdm=False)
    first = single[0].outputs[0]
    assert as_ids[0].outputs[0].token_ids == first.token_ids == as_list[0].outputs[0].token_ids
    assert several[0].outputs[0].text == first.text and several[1].prompt == "Two plus two is"
    assert first.finish_reason in ("length", "stop") and len(first.token_ids) <= 6


def test_chat_applies_the_template(bundled_llm_fp32, engine_fp32):
    outputs = bundled_llm_fp32.chat(
        [{"role": "user", "content": "What is the capital of France?"}],
        SamplingParams(temperature=0, max_tokens=16),
        use_tqdm=False,
    )
    assert "Paris" in outputs[0].outputs[0].text
    assert outputs[0].metrics.first_token_time >= outputs[0].metrics.arrival_time


def test_chat_continues_the_final_message_and_takes_token_controls(bundled_llm_fp32, engine_fp32):
    chat = [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is"},
    ]
    params = SamplingParams(temperature=0, max_tokens=4)
    [out] = bundled_llm_fp32.chat(
        chat, params, use_tqdm=False, add_generation_prompt=False, continue_final_message=True
    )
    tokenizer = bundled_llm_fp32.get_tokenizer()
    assert tokenizer.decode(out.prompt_token_ids).endswith("assistant\nThe capital of France is")
    assert out.outputs[0].text.split()[0].strip(".") == "Paris"
    banned = SamplingParams(temperature=0, max_tokens=4, bad_words=["Paris"])
    [other] = bundled_llm_fp32.chat(
        chat, banned, use_tqdm=False, add_generation_prompt=False, continue_final_message=True
    )
    assert "Paris" not in other.outputs[0].text


def test_unknown_keyword_is_a_clear_error():
    with pytest.raises(TypeError, match="max_num_seq"):
        LLM(max_num_seq=3)


def test_generate_cli_answers_with_the_bundled_model():
    # float32: in bfloat16 this 135M model's greedy answer to this prompt flips on last-bit differences in a
    # reduction's order (both answers occur between numerically equivalent kernels), so only float32 pins it.
    result = subprocess.run(
        [sys.executable, "-m", "pagedserve.cli.main", "generate", "--chat", "What is the capital of France?",
         "--max-tokens", "16", "--max-model-len", "512", "--kv-cache-memory-bytes", str(64 * 1024**2),
         "--dtype", "float32"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "VLLM_LOGGING_LEVEL": "warning"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Paris" in result.stdout
    assert "INFO" not in result.stderr  # vLLM's VLLM_LOGGING_LEVEL holds back the INFO lines (dtype, kernels)


def test_generate_cli_on_an_avx2_only_cpu_answers_in_float32():
    """dtype auto on a CPU without bfloat16 instructions: float32 (faster there, and greedy text equals
    transformers'). An AVX2-only CPU's code paths stand in here on any x86 host: our kernels at
    PAGEDSERVE_CPU_ISA=avx2, torch's at ATEN_CPU_CAPABILITY=avx2 and ONEDNN_MAX_CPU_ISA=AVX2."""
    env = {
        **os.environ,
        "PAGEDSERVE_CPU_ISA": "avx2",
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
    }
    result = subprocess.run(
        [sys.executable, "-m", "pagedserve.cli.main", "generate", "--chat", "What is the capital of France?",
         "--max-tokens", "16", "--max-model-len", "512", "--kv-cache-memory-bytes", str(64 * 1024**2)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Paris" in result.stdout
    if platform.machine() in ("x86_64", "AMD64"):
        assert "dtype auto: float32" in result.stderr and "C kernels in use: avx2" in result.stderr


@pytest.mark.parametrize(
    "args,env,named",
    [
        (["--temperature", "-1"], {}, "temperature"),
        ([], {"VLLM_LOGGING_LEVEL": "loud"}, "VLLM_LOGGING_LEVEL"),
    ],
)
def test_generate_cli_reports_bad_input_without_traceback(args: list[str], env: dict[str, str], named: str):
    result = subprocess.run(
        [sys.executable, "-m", "pagedserve.cli.main", "generate", "hi", *args],
        capture_output=True, text=True, timeout=300, env={**os.environ, **env},
    )  # fmt: skip
    assert result.returncode == 2
    assert named in result.stderr and "Traceback" not in result.stderr
