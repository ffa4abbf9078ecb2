"""The engine with the Triton backend (PAGEDSERVE_ATTENTION_BACKEND=triton, under Triton's interpreter on the CPU)
generates what transformers does: a tiny random Llama with GQA (4 query heads, 2 KV heads), float32, greedy, through
chunked prefill (a 16-token step budget), prefix-cache hits and a block size of 8."""

from __future__ import annotations

import pytest
import torch
import transformers
from tests.unit.models.test_model_hf_folder import save_model, save_word_tokenizer, tiny_llama_config

from pagedserve import LLM, SamplingParams

pytest.importorskip("triton", reason="triton comes with the dev extra (pip install -e '.[dev]')")

PREFIX = [5, 9, 14, 3, 27, 8, 11, 40, 6, 19, 33, 4, 21, 7, 12, 30, 17, 25]  # 18 tokens: two full blocks of 8


def greedy_reference(model: transformers.PreTrainedModel, prompt: list[int], max_tokens: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=max_tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    return out[0, len(prompt) :].tolist()


def test_triton_backend_matches_transformers(tmp_path, monkeypatch, test_device):
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(tiny_llama_config(vocab_size=64)).eval()
    save_model(tmp_path, model)
    save_word_tokenizer(tmp_path)
    monkeypatch.setenv("PAGEDSERVE_ATTENTION_BACKEND", "triton")
    llm = LLM(
        model=str(tmp_path), dtype="float32", device=str(test_device), block_size=8, max_num_batched_tokens=16,
        max_num_seqs=4, kv_cache_memory_bytes=2 * 1024**2,
    )  # fmt: skip
    assert llm.llm_engine.core.executor.runner.attention_backend == "triton"
    params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    first = [PREFIX + [2 + i, 50 - i] for i in range(2)]
    second = [PREFIX + [44, 45, 46], PREFIX[:9]]  # two cached blocks, then a hit that ends mid-block
    manager = llm.llm_engine.kv_cache_manager
    hits: list[int] = []
    record = manager.record_prefix_lookup
    monkeypatch.setattr(
        manager, "record_prefix_lookup", lambda queried, hit: (hits.append(hit), record(queried, hit))
    )
    for batch in (first, second):
        hits.clear()
        outputs = llm.generate([{"prompt_token_ids": p} for p in batch], params, use_tqdm=False)
        for prompt, output in zip(batch, outputs):
            assert list(output.outputs[0].token_ids) == greedy_reference(model, prompt, 10)
    assert sum(hits) >= 16, "the second batch reads the first's cached prefix blocks"
