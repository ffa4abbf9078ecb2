"""The engine on a CUDA device (run by benchmarks/gpu_check.sh on a lent GPU; skipped elsewhere): the profiled KV
budget, captured decode graphs giving eager's greedy tokens, and chunked prefill with prefix-cache hits on the
Triton backend."""

from __future__ import annotations

import pytest
import torch

from pagedserve import LLM, SamplingParams

pytestmark = pytest.mark.gpu

PROMPTS = [
    "The capital of France is",
    "Write a haiku about paged attention:",
    "List three prime numbers:",
    "The capital of France is a city that",
]


def greedy(llm: LLM, max_tokens: int = 32) -> list[list[int]]:
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    return [list(o.outputs[0].token_ids) for o in llm.generate(PROMPTS, params, use_tqdm=False)]


@pytest.fixture(scope="module")
def no_tf32():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def test_graphs_match_eager_and_the_budget_is_profiled(no_tf32):
    graphs = LLM(device="cuda", dtype="float32", max_model_len=1024, max_num_seqs=8)
    runner = graphs.llm_engine.core.executor.runner
    assert runner.attention_backend == "triton"
    assert type(runner.decode_graphs).__name__ == "CudaDecodeGraphs"
    assert runner.num_blocks > 0
    with_graphs = greedy(graphs)
    del graphs, runner
    torch.cuda.empty_cache()
    eager = LLM(device="cuda", dtype="float32", max_model_len=1024, max_num_seqs=8, enforce_eager=True)
    assert eager.llm_engine.core.executor.runner.decode_graphs is None
    assert greedy(eager) == with_graphs


def test_chunked_prefill_and_prefix_hits_match_one_shot(no_tf32):
    llm = LLM(
        device="cuda", dtype="float32", max_model_len=1024, max_num_batched_tokens=16, enforce_eager=True
    )
    first = greedy(llm)
    second = greedy(llm)  # every prompt's full blocks are cached now
    assert first == second
    whole = LLM(device="cuda", dtype="float32", max_model_len=1024, enable_prefix_caching=False)
    assert greedy(whole) == first


def test_mixture_of_experts_model_on_cuda_gives_the_cpus_greedy_tokens(no_tf32, tmp_path):
    """A tiny Qwen3-MoE folder (experts grouped by a sort and a host sync a layer; no CUDA graphs for MoE models):
    greedy tokens on CUDA equal the CPU's, float32 both sides."""
    from tests.tiny_models import write_tiny_moe

    write_tiny_moe(tmp_path, "qwen3_moe")
    settings = dict(model=str(tmp_path), dtype="float32", max_model_len=256, kv_cache_memory_bytes=2**26)
    on_cuda = LLM(device="cuda", **settings)
    assert on_cuda.llm_engine.core.executor.runner.decode_graphs is None
    cuda_tokens = greedy(on_cuda, max_tokens=16)
    on_cuda.llm_engine.shutdown()
    on_cpu = LLM(device="cpu", **settings)
    assert greedy(on_cpu, max_tokens=16) == cuda_tokens
    on_cpu.llm_engine.shutdown()
