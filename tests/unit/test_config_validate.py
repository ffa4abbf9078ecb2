"""Engine settings are checked in one place (EngineConfig.validate, each section's own checks), whichever way they
come in: the LLM class's keyword arguments are refused before any model is read, with a ValueError naming the field
(the CLI's path through the same checks: tests/unit/server/test_serve_cli.py)."""

from __future__ import annotations

import pytest

from pagedserve.config import CacheConfig, EngineConfig, SchedulerConfig
from pagedserve.entrypoints.llm import build_engine_config
from pagedserve.model_config import ModelConfig


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"swap_space": -1}, r"swap_space must be >= 0 \(GiB\), got -1"),
        ({"max_logprobs": -5}, r"max_logprobs must be >= -1"),
        ({"max_model_len": 0}, "max_model_len must be >= 1, got 0"),
        ({"cpu_threads": 0}, "cpu_threads must be >= 1"),
        ({"block_size": 0}, "block_size must be >= 1"),
        ({"kv_cache_memory_bytes": 0}, "kv_cache_memory_bytes must be >= 1"),
        ({"gpu_memory_utilization": 1.5}, r"gpu_memory_utilization must be in \(0, 1\], got 1.5"),
        ({"gpu_memory_utilization": 0.0}, r"gpu_memory_utilization must be in \(0, 1\]"),
        ({"max_num_seqs": 0}, "max_num_seqs must be >= 1"),
        ({"max_num_batched_tokens": 0}, "max_num_batched_tokens must be >= 1"),
        ({"long_prefill_token_threshold": -1}, "long_prefill_token_threshold must be >= 0"),
        ({"max_model_len": "64"}, "max_model_len must be >= 1, got '64'"),  # a string is not a length
        ({"dtype": "float64"}, "dtype must be one of"),
        ({"runner": "pooling", "task": "generate"}, "runner pooling and task generate disagree"),
        ({"tensor_parallel_size": 0}, "tensor_parallel_size must be >= 1"),
        ({"enable_lora": True, "max_lora_rank": 0}, "max_lora_rank must be >= 1"),
    ],
)
def test_llm_keyword_arguments_are_refused_naming_the_field(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_engine_config(model="/nonexistent/model", **kwargs)  # refused before the path is looked at


def test_defaults_and_edge_values_pass() -> None:
    EngineConfig().validate()
    config = EngineConfig(
        model=ModelConfig(max_logprobs=-1, max_model_len=1),
        cache=CacheConfig(swap_space=0, gpu_memory_utilization=1.0, block_size=1),
        scheduler=SchedulerConfig(max_num_seqs=1, max_num_batched_tokens=1),
    )
    config.validate()
