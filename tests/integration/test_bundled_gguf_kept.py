"""The bundled Q4_1 GGUF run from its blocks (the default, as vLLM runs GGUF files) against the same file
dequantized at load (`quantization="none"`): greedy text, the weights held, and the process's resident memory."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tests.integration.bundled_prompts import PROMPTS

from pagedserve import LLM, SamplingParams

pytestmark = [pytest.mark.slow, pytest.mark.model]

GREEDY = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)


def test_kept_blocks_give_the_dequantized_float32_text() -> None:
    """Issue 11 asks >= 6 of 8 prompts x 32 tokens equal; measured 8 of 8 on AVX2 (2026-12-02): the blocks are
    dequantized exactly, so only the summation order differs from the float32 model's."""
    small = dict(dtype="float32", max_model_len=512, kv_cache_memory_bytes=64 * 1024**2)
    kept = LLM(quantization="gguf", **small)
    assert kept.llm_engine.info.quantization == "gguf"
    dense = LLM(quantization="none", **small)
    assert dense.llm_engine.info.quantization == ""
    engine = kept.llm_engine
    prompts = [
        {"prompt_token_ids": engine.apply_chat_template([{"role": "user", "content": p}])} for p in PROMPTS
    ]
    got = [o.outputs[0].token_ids for o in kept.generate(prompts, GREEDY)]
    expected = [o.outputs[0].token_ids for o in dense.generate(prompts, GREEDY)]
    same = sum(g == e for g, e in zip(got, expected))
    assert same >= 6, f"only {same} of 8 greedy texts equal the dequantized model's"
    # 92 MB of blocks (and float32 norms) against 270 MB of bfloat16 / 540 MB of float32 matrices.
    assert engine.info.weight_bytes < 0.4 * dense.llm_engine.info.weight_bytes / 2


RSS_PROBE = """
import gc, json, sys
def anon_kib():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
import torch
from pagedserve.attention.backend import get_attention_backend
from pagedserve.models.loader import resolve_model_source
from pagedserve.models.registry import resolve_model_class
source = resolve_model_source(None)
torch.set_default_dtype(torch.bfloat16)
before = anon_kib()
model = resolve_model_class(source.hf_config)(source.hf_config, get_attention_backend("cpu"))
model.load_weights(source.iter_weights(keep_quantized=sys.argv[1] == "gguf"))
gc.collect()
print(json.dumps({"model_kib": anon_kib() - before}))
"""


def test_resident_memory_of_the_kept_model_is_under_40_percent_of_the_bf16_run() -> None:
    """Anonymous resident memory (the heap, not the GGUF file's page cache, which both map) added by building and
    loading the model, each in a fresh process: measured 109 against 335 MB (33 %) on 2026-12-02. A whole
    engine adds its tokenizer and runtime (~280 MB, the same in both): 374 against 536 MB there."""
    measured = {}
    for quantization in ("gguf", "none"):
        out = subprocess.run(
            [sys.executable, "-c", RSS_PROBE, quantization],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
        measured[quantization] = json.loads(out.stdout.strip().splitlines()[-1])["model_kib"]
    assert measured["gguf"] <= 0.4 * measured["none"], f"resident KiB, kept and bfloat16: {measured}"
