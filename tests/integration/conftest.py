"""Fixtures of the bundled-model comparisons, computed once per session: the chat prompts, transformers' greedy
reference for them, and the bundled model at tensor_parallel_size 2 (two worker processes over gloo)."""

from __future__ import annotations

import pytest
import torch
from tests.integration.bundled_prompts import PROMPTS

REFERENCE_TOKENS = 64


@pytest.fixture(scope="session")
def chat_prompts(bundled_llm_fp32) -> list[list[int]]:
    engine = bundled_llm_fp32.llm_engine
    return [engine.apply_chat_template([{"role": "user", "content": p}]) for p in PROMPTS]


@pytest.fixture(scope="session")
def reference(chat_prompts) -> list[tuple[list[int], torch.Tensor]]:
    """transformers' greedy tokens and per-step top-2 log-probabilities, one prompt at a time (no padding)."""
    import transformers
    from tests.ct_writer import bundled_float_folder

    # transformers' own dequantization of the bundled GGUF, read once per session (tests/ct_writer.py).
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(bundled_float_folder()), dtype=torch.float32
    ).eval()
    # Never stop on EOS and never suppress it (min_new_tokens would mask it and skew the comparison).
    model.generation_config.eos_token_id = None
    results = []
    with torch.no_grad():
        for prompt in chat_prompts:
            out = model.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                max_new_tokens=REFERENCE_TOKENS,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=0,
            )
            tokens = out.sequences[0, len(prompt) :].tolist()
            top2 = torch.stack([s[0].float().log_softmax(-1).topk(2).values for s in out.logits])
            results.append((tokens, top2))
    del model
    return results


@pytest.fixture(scope="session")
def tp2_llm():
    from pagedserve import LLM

    llm = LLM(
        dtype="float32",
        max_model_len=1024,
        kv_cache_memory_bytes=256 * 1024**2,
        seed=0,
        tensor_parallel_size=2,
    )
    yield llm
    llm.llm_engine.shutdown()


@pytest.fixture()
def tp2_engine(tp2_llm):
    """The TP=2 engine, checked idle and consistent after each test."""
    engine = tp2_llm.llm_engine
    yield engine
    assert not engine.has_unfinished_requests()
    engine.check_invariants()
    assert engine.kv_cache_manager.pool.num_used_blocks == 0
