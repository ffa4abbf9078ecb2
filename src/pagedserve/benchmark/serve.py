"""`bench serve`: send a request set to a server under a load pattern and collect vLLM's metrics."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
import numpy as np

from pagedserve.benchmark.datasets import SampleRequest
from pagedserve.benchmark.metrics import BenchmarkMetrics, calculate_metrics
from pagedserve.benchmark.request_funcs import (
    ENDPOINTS,
    RequestFuncInput,
    RequestFuncOutput,
    send_streaming_request,
)

REQUEST_TIMEOUT_S = 6 * 60 * 60  # vLLM's client waits this long for one request


@dataclass
class ServeLoad:
    """How requests are sent: all at once (rate inf) or Poisson/gamma arrivals, capped in flight."""

    request_rate: float = math.inf
    burstiness: float = 1.0  # gamma shape: 1 = Poisson, <1 burstier, >1 more regular
    max_concurrency: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.request_rate > 0):
            raise ValueError(f"request_rate must be > 0 (or inf), got {self.request_rate}")
        if not (self.burstiness > 0) or not math.isfinite(self.burstiness):
            raise ValueError(f"burstiness must be a finite number > 0, got {self.burstiness}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {self.max_concurrency}")


@dataclass
class ServeTarget:
    base_url: str
    model: str
    endpoint: str = "/v1/completions"
    api_key: str | None = None
    ignore_eos: bool = False
    temperature: float = 0.0
    extra_body: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be one of {', '.join(ENDPOINTS)}, got {self.endpoint!r}")

    @property
    def api_url(self) -> str:
        return self.base_url.rstrip("/") + self.endpoint


@dataclass
class ServeRun:
    outputs: list[RequestFuncOutput]
    duration_s: float
    bench_start: float


async def arrival_schedule(
    requests: Sequence[SampleRequest], load: ServeLoad
) -> AsyncIterator[tuple[int, SampleRequest]]:
    """Yield requests at their arrival times: at once for rate inf, else gamma-distributed gaps."""
    rng = np.random.default_rng(load.seed)
    for index, request in enumerate(requests):
        yield index, request
        if math.isinf(load.request_rate) or index == len(requests) - 1:
            continue
        scale = 1.0 / (load.request_rate * load.burstiness)
        await asyncio.sleep(float(rng.gamma(shape=load.burstiness, scale=scale)))


def _request_input(
    target: ServeTarget, request: SampleRequest, output_len: int | None = None
) -> RequestFuncInput:
    return RequestFuncInput(
        prompt=request.prompt,
        prompt_len=request.prompt_len,
        output_len=output_len or request.expected_output_len,
        model=target.model,
        api_url=target.api_url,
        ignore_eos=target.ignore_eos,
        temperature=target.temperature,
        api_key=target.api_key,
        extra_body=target.extra_body,
    )


async def run_load(
    target: ServeTarget,
    requests: Sequence[SampleRequest],
    load: ServeLoad,
    initial_test: bool = True,
    show_progress: bool = True,
    request_timeout_s: float = REQUEST_TIMEOUT_S,
) -> ServeRun:
    """Send every request and wait for all of them. The initial test request (untimed) fails fast on a bad setup."""
    if not requests:
        raise ValueError("no requests to send")
    from tqdm.auto import tqdm

    connector = aiohttp.TCPConnector(limit=load.max_concurrency or 0, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=request_timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        if initial_test:
            test = await send_streaming_request(
                session,
                _request_input(target, requests[0], min(16, requests[0].expected_output_len)),
                target.endpoint,
            )
            if not test.success:
                raise RuntimeError(f"the initial test request to {target.api_url} failed: {test.error}")
        semaphore = asyncio.Semaphore(load.max_concurrency) if load.max_concurrency else None
        progress = tqdm(total=len(requests), disable=not show_progress, desc="requests", unit="req")
        outputs: list[RequestFuncOutput | None] = [None] * len(requests)

        async def one(index: int, request: SampleRequest) -> None:
            if semaphore is None:
                outputs[index] = await send_streaming_request(
                    session, _request_input(target, request), target.endpoint
                )
            else:
                async with semaphore:
                    outputs[index] = await send_streaming_request(
                        session, _request_input(target, request), target.endpoint
                    )
            progress.update(1)

        bench_start = time.perf_counter()
        tasks = [asyncio.create_task(one(i, r)) async for i, r in arrival_schedule(requests, load)]
        await asyncio.gather(*tasks)
        duration = time.perf_counter() - bench_start
        progress.close()
    assert all(o is not None for o in outputs)
    return ServeRun(
        outputs=[o for o in outputs if o is not None], duration_s=duration, bench_start=bench_start
    )


def result_dict(
    run: ServeRun,
    metrics: BenchmarkMetrics,
    target: ServeTarget,
    load: ServeLoad,
    *,
    model_id: str,
    tokenizer_id: str,
    goodput_slos_ms: dict[str, float],
    label: str | None = None,
) -> dict[str, Any]:
    """The result file: vLLM's keys (so scripts reading theirs read ours) plus a few of our own."""
    from pagedserve.benchmark.metrics import percentile_label

    result: dict[str, Any] = {
        "date": datetime.now().strftime("%Y%m%d-%H%M%S"),
        "backend": "openai-chat" if target.endpoint == "/v1/chat/completions" else "openai",
        "endpoint_type": "openai-chat" if target.endpoint == "/v1/chat/completions" else "openai",
        "label": label,
        "model_id": model_id,
        "tokenizer_id": tokenizer_id,
        "num_prompts": len(run.outputs),
        "request_rate": "inf" if math.isinf(load.request_rate) else load.request_rate,
        "burstiness": load.burstiness,
        "max_concurrency": load.max_concurrency,
        "duration": run.duration_s,
        "completed": metrics.completed,
        "failed": metrics.failed,
        "total_input_tokens": metrics.total_input,
        "total_output_tokens": metrics.total_output,
        "request_throughput": metrics.request_throughput,
        "request_goodput": metrics.request_goodput,
        "output_throughput": metrics.output_throughput,
        "total_token_throughput": metrics.total_token_throughput,
        "max_output_tokens_per_s": metrics.max_output_tokens_per_s,
        "max_concurrent_requests": metrics.max_concurrent_requests,
        "input_lens": [o.prompt_len for o in run.outputs],
        "output_lens": metrics.output_lens,
        "ttfts": [o.ttft for o in run.outputs],
        "itls": [o.itl for o in run.outputs],
        "generated_texts": [o.generated_text for o in run.outputs],
        "errors": [o.error for o in run.outputs],
    }
    for name, summary in metrics.summaries.items():
        result[f"mean_{name}_ms"] = summary.mean_ms
        result[f"median_{name}_ms"] = summary.median_ms
        result[f"std_{name}_ms"] = summary.std_ms
        for p, value in summary.percentiles_ms:
            result[f"p{percentile_label(p)}_{name}_ms"] = value
    # Ours: what the plots and the sweep need, and why requests failed.
    result.update(
        {
            "base_url": target.base_url,
            "endpoint": target.endpoint,
            "successes": [o.success for o in run.outputs],
            "start_times": [o.start_time - run.bench_start for o in run.outputs],
            "e2els": [o.latency for o in run.outputs],
            "failure_reasons": dict(metrics.errors),
            "goodput_slos_ms": goodput_slos_ms,
            "output_len_source": metrics.output_len_source,
        }
    )
    return result


def compute_result(
    run: ServeRun,
    target: ServeTarget,
    load: ServeLoad,
    *,
    percentiles: Sequence[float],
    goodput_slos_ms: dict[str, float],
    count_tokens: Callable[[str], int] | None,
    model_id: str,
    tokenizer_id: str,
    label: str | None = None,
) -> tuple[BenchmarkMetrics, dict[str, Any]]:
    metrics = calculate_metrics(
        run.outputs,
        run.duration_s,
        percentiles=percentiles,
        goodput_slos_ms=goodput_slos_ms,
        count_tokens=count_tokens,
        bench_start=run.bench_start,
    )
    result = result_dict(
        run,
        metrics,
        target,
        load,
        model_id=model_id,
        tokenizer_id=tokenizer_id,
        goodput_slos_ms=goodput_slos_ms,
        label=label,
    )
    return metrics, result
