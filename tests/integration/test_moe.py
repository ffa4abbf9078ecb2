"""A mixture-of-experts checkpoint served by the engine (tiny random Qwen3-MoE and Mixtral folders, transformers'
Hub layout, the bundled tokenizer): greedy tokens and logprobs equal transformers' at TP=1 and at TP=2 (each rank
a slice of every expert, one all-reduce a layer); decode steps run eager (no graphs: float experts, not the GGUF
blocks the C kernel reads, tests/integration/test_decode_graphs.py); LoRA is refused by name."""

from __future__ import annotations

import logging

import pytest
from tests.integration.test_tensor_parallel import _tp2_matches_transformers
from tests.tiny_models import write_tiny_moe

from pagedserve import LLM, SamplingParams

pytestmark = [pytest.mark.slow, pytest.mark.model]


@pytest.fixture(scope="module")
def moe_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe-models")
    folders = {kind: root / kind for kind in ("qwen3_moe", "mixtral")}
    for kind, folder in folders.items():
        write_tiny_moe(folder, kind)
    return folders


@pytest.mark.parametrize("kind", ["qwen3_moe", "mixtral"])
def test_moe_model_matches_transformers(moe_folders, kind: str, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="pagedserve"):
        _tp2_matches_transformers(moe_folders[kind], tensor_parallel_size=1)
    assert (
        "decode graphs: off for a mixture-of-experts model whose experts are not all in GGUF" in caplog.text
    )


def test_moe_model_at_tp2_matches_transformers(moe_folders) -> None:
    _tp2_matches_transformers(moe_folders["qwen3_moe"])


def test_moe_batch_of_requests_equals_each_alone(moe_folders) -> None:
    """Rows routed to different experts in one step give what each prompt gives alone (continuous batching)."""
    llm = LLM(
        model=str(moe_folders["mixtral"]), dtype="float32", max_model_len=128, kv_cache_memory_bytes=2**22
    )
    try:
        assert llm.llm_engine.executor.runner.decode_graphs is None
        params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
        prompts = ["The sea is", "One two three four five", "Hello"]
        together = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
        alone = [llm.generate([p], params, use_tqdm=False)[0].outputs[0].token_ids for p in prompts]
        assert together == alone
        llm.llm_engine.check_invariants()
    finally:
        llm.llm_engine.shutdown()


def test_lora_on_a_moe_model_is_refused_by_name(moe_folders) -> None:
    with pytest.raises(ValueError, match="LoRA adapters on mixture-of-experts models"):
        LLM(
            model=str(moe_folders["qwen3_moe"]), dtype="float32", max_model_len=64, kv_cache_memory_bytes=2**22,
            enable_lora=True,
        )  # fmt: skip
