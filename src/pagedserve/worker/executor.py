"""Executors run the model for the engine: in this process (one device) or in one worker process per rank.

The engine hands an executor a `SchedulerOutput` (plain data) and gets a `ModelRunnerOutput` back, whichever it is.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import torch

from pagedserve import cpu_placement, envs
from pagedserve.config import CacheConfig, LoRAConfig, ParallelConfig
from pagedserve.core.scheduler_output import SchedulerOutput
from pagedserve.model_config import ModelConfig
from pagedserve.worker.device import resolve_device
from pagedserve.worker.model_runner import ModelRunner
from pagedserve.worker.runner_output import ModelRunnerOutput

logger = logging.getLogger("pagedserve")

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


@dataclass
class RunnerSpec:
    """Everything a process needs to build its model runner, resolved once by the engine (plain, picklable)."""

    model: ModelConfig
    cache: CacheConfig
    max_model_len: int
    quantization: str | None
    dtype: str
    weight_dtype: str
    max_num_seqs: int = 256
    """The scheduler's limits: the largest CUDA graph bucket and the step the GPU memory profile runs."""
    max_num_batched_tokens: int = 4096
    lora: LoRAConfig | None = None
    """--enable-lora and its limits; None: no adapters."""
    pooling_type: str = "LAST"
    """How an embedding request's hidden states become its vector (layers/pooler.py): LAST, CLS or MEAN."""


@dataclass
class RunnerInfo:
    """What the engine reports about the runners (summed over ranks where it is memory)."""

    num_blocks: int
    kv_cache_bytes: int
    weight_bytes: int
    kv_cache_dtype: str
    cpu_kernels: str
    kv_group_windows: list[int | None]
    """Each KV cache group's sliding window, None for full attention (kv_memory.py)."""


def build_runner(spec: RunnerSpec, source: Any = None) -> ModelRunner:
    """source: the engine's already resolved `ModelSource` (in-process; parsing a GGUF header takes seconds)."""
    from pagedserve.models.loader import resolve_model_source

    if source is None:
        source = resolve_model_source(
            spec.model.model,
            spec.model.load_format,
            revision=spec.model.revision,
            download_dir=spec.model.download_dir,
            hf_overrides=spec.model.hf_overrides,
        )
    weights = None if source.format == "dummy" else source.iter_weights(spec.quantization is not None)
    return ModelRunner(
        source.hf_config,
        spec.model,
        spec.cache,
        spec.max_model_len,
        weights,
        getattr(torch, spec.dtype),
        resolve_device(spec.model.device),
        weight_dtype=getattr(torch, spec.weight_dtype),
        max_num_seqs=spec.max_num_seqs,
        max_num_batched_tokens=spec.max_num_batched_tokens,
        quantize_fp8=spec.quantization == "fp8" and source.quantization_method is None,
        lora_config=spec.lora,
        pooling_type=spec.pooling_type,  # type: ignore[arg-type]
    )


def runner_info(runner: ModelRunner) -> RunnerInfo:
    return RunnerInfo(
        runner.num_blocks,
        runner.kv_cache_bytes,
        runner.weight_bytes,
        str(runner.kv_cache_dtype).replace("torch.", ""),
        runner.cpu_kernels,
        runner.kv_group_windows,
    )


def dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES[dtype]


class UniProcExecutor:
    """The runner in this process (tensor_parallel_size 1)."""

    def __init__(self, spec: RunnerSpec, source: Any = None) -> None:
        self.runner = build_runner(spec, source)
        self.info = runner_info(self.runner)

    def execute(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        return self.runner.execute(scheduler_output)

    def check_health(self) -> None:
        """Nothing to check: the runner is this process."""

    def shutdown(self) -> None:
        pass


def make_executor(spec: RunnerSpec, parallel: ParallelConfig, source: Any = None) -> UniProcExecutor:
    on_cpu = resolve_device(spec.model.device).type == "cpu"
    if on_cpu:
        cpu_placement.check_binding(parallel.ranks_per_node)
    if parallel.tensor_parallel_size == 1:
        if on_cpu:
            cpu_placement.bind_rank(0)
        return UniProcExecutor(spec, source)
    from pagedserve.worker.multiproc_executor import MultiprocExecutor

    threads_unset = spec.model.cpu_threads is None and envs.cpu_threads() is None
    if threads_unset and on_cpu and not cpu_placement.pinned():
        # The ranks share this machine's cores: each gets its part, not all of them. (A pinned rank counts the
        # CPUs of its own list, in its own process.)
        threads = cpu_placement.default_cpu_threads(parallel.ranks_per_node)
        spec = dataclasses.replace(spec, model=dataclasses.replace(spec.model, cpu_threads=threads))
    return MultiprocExecutor(spec, parallel)  # type: ignore[return-value]
