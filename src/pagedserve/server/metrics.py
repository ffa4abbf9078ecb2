"""Prometheus metrics under vLLM's names, labels and buckets, fed from the engine's per-step `EngineStats`.

Each app owns its CollectorRegistry (two apps in one process do not collide). Engine metrics carry the labels
`model_name` and `engine` ("0": we run one engine per server). `observe()` runs on the engine thread;
prometheus_client is thread-safe.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pagedserve.core.stats import EngineStats
from pagedserve.outputs import EngineInfo

ENGINE_INDEX = "0"
ENGINE_LABELS = ("model_name", "engine")

# Every family the server exposes, by the name Prometheus' parser reports (counters without `_total`).
METRIC_FAMILIES: dict[str, str] = {
    "vllm:num_requests_running": "gauge",
    "vllm:num_requests_waiting": "gauge",
    "vllm:kv_cache_usage_perc": "gauge",
    "vllm:cache_config_info": "gauge",
    "vllm:prompt_tokens": "counter",
    "vllm:generation_tokens": "counter",
    "vllm:num_preemptions": "counter",
    "vllm:request_success": "counter",
    "vllm:prefix_cache_queries": "counter",
    "vllm:prefix_cache_hits": "counter",
    "vllm:admission_rejections": "counter",
    "vllm:time_to_first_token_seconds": "histogram",
    "vllm:inter_token_latency_seconds": "histogram",
    "vllm:request_time_per_output_token_seconds": "histogram",
    "vllm:e2e_request_latency_seconds": "histogram",
    "vllm:request_queue_time_seconds": "histogram",
    "vllm:request_inference_time_seconds": "histogram",
    "vllm:request_prefill_time_seconds": "histogram",
    "vllm:request_decode_time_seconds": "histogram",
    "vllm:request_prompt_tokens": "histogram",
    "vllm:request_generation_tokens": "histogram",
    "vllm:iteration_tokens_total": "histogram",
    "vllm:request_params_n": "histogram",
    "vllm:request_num_preemptions": "histogram",
    "vllm:structured_output_requests": "counter",
    "vllm:structured_output_compile_seconds": "histogram",
    "http_requests": "counter",
    "http_request_duration_seconds": "histogram",
}

# And with --speculative-config only (as vLLM's); the last has a `position` label, 0 to k - 1.
SPEC_DECODE_FAMILIES: dict[str, str] = {
    "vllm:spec_decode_num_drafts": "counter",
    "vllm:spec_decode_num_draft_tokens": "counter",
    "vllm:spec_decode_num_accepted_tokens": "counter",
    "vllm:spec_decode_num_accepted_tokens_per_pos": "counter",
}

# And with --enable-lora only (as vLLM's): value the time of the last update, labels the adapters by name (comma
# separated) and --max-loras. The Gateway API inference extension's LoRA affinity reads it. Its labels are vLLM's
# three, without model_name and engine.
LORA_FAMILIES: dict[str, str] = {"vllm:lora_requests_info": "gauge"}
LORA_INFO_LABELS = ("max_lora", "waiting_lora_adapters", "running_lora_adapters")

TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
TOKEN_LATENCY_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
    120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
ITERATION_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
PARAMS_N_BUCKETS = (1, 2, 5, 10, 20)
PREEMPTION_BUCKETS = (1, 2, 3, 4, 5, 10, 20)
# Grammar compiles: ~1-5 ms for a JSON schema, up to compile_timeout_s (10 s) for pathological grammars.
COMPILE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STRUCTURED_KINDS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")
HTTP_DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
FINISH_REASONS = ("stop", "length", "abort", "error")


def one_two_five_buckets(limit: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to and including the first value >= limit (vLLM's token-count buckets)."""
    buckets: list[int] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            buckets.append(value)
            if value >= limit:
                return buckets
        exponent += 1


class ServerMetrics:
    """All metrics of one server. HTTP and admission metrics exist from the start; engine metrics from
    `bind_engine()` (their token buckets depend on max_model_len, known once the model is loaded)."""

    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.model_name = model_name
        self.labels = {"model_name": model_name, "engine": ENGINE_INDEX}
        self.http_requests = Counter(
            "http_requests", "HTTP requests by handler, method and status class.",
            ("handler", "method", "status"), registry=self.registry,
        )  # fmt: skip
        self.http_duration = Histogram(
            "http_request_duration_seconds", "HTTP request duration (until the last body byte).",
            ("handler", "method"), buckets=HTTP_DURATION_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.admission_rejections = Counter(
            "vllm:admission_rejections", "Requests refused with 503 before reaching the engine.",
            (*ENGINE_LABELS, "reason"), registry=self.registry,
        )  # fmt: skip
        self.engine_bound = False

    def reject(self, reason: str) -> None:
        self.admission_rejections.labels(**self.labels, reason=reason).inc()

    def count_error(self) -> None:
        """A request failed by the server (engine died): the engine cannot report it any more."""
        if self.engine_bound:
            self.request_success.labels(**self.labels, finished_reason="error").inc()

    def bind_engine(self, info: EngineInfo) -> None:
        r, labels, names = self.registry, self.labels, ENGINE_LABELS

        # Each helper registers a family and returns this engine's labelled child.
        def gauge(name: str, doc: str) -> Any:
            return Gauge(name, doc, names, registry=r).labels(**labels)

        def counter(name: str, doc: str) -> Any:
            return Counter(name, doc, names, registry=r).labels(**labels)

        def histogram(name: str, doc: str, buckets: Sequence[float]) -> Any:
            return Histogram(name, doc, names, buckets=buckets, registry=r).labels(**labels)

        self.running = gauge("vllm:num_requests_running", "Requests in the running batch.")
        self.waiting = gauge("vllm:num_requests_waiting", "Requests waiting to be scheduled.")
        self.kv_usage = gauge("vllm:kv_cache_usage_perc", "Fraction of KV cache blocks in use (0-1).")
        cache_labels = (
            "block_size",
            "num_gpu_blocks",
            "enable_prefix_caching",
            "cache_dtype",
            "kv_cache_memory_bytes",
        )
        cache_info = Gauge(
            "vllm:cache_config_info", "KV cache configuration (value 1).", (*names, *cache_labels), registry=r
        )
        cache_info.labels(
            **labels,
            block_size=str(info.block_size),
            num_gpu_blocks=str(info.num_kv_blocks),
            enable_prefix_caching=str(info.enable_prefix_caching),
            cache_dtype=info.kv_cache_dtype or info.dtype,  # what the cache stores, not the compute dtype
            kv_cache_memory_bytes=str(info.kv_cache_bytes),
        ).set(1)
        self.prompt_tokens = counter("vllm:prompt_tokens", "Prompt tokens computed.")
        self.generation_tokens = counter("vllm:generation_tokens", "Tokens generated.")
        self.preemptions = counter("vllm:num_preemptions", "Requests preempted (KV cache full).")
        self.prefix_queries = counter(
            "vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache."
        )
        self.prefix_hits = counter("vllm:prefix_cache_hits", "Prompt tokens found in the prefix cache.")
        self.request_success = Counter(
            "vllm:request_success",
            "Finished requests by finish reason.",
            (*names, "finished_reason"),
            registry=r,
        )
        for reason in FINISH_REASONS:  # present at 0 so rate() works from the first scrape
            self.request_success.labels(**labels, finished_reason=reason)

        self.ttft = histogram("vllm:time_to_first_token_seconds", "Arrival to first token.", TTFT_BUCKETS)
        self.itl = histogram(
            "vllm:inter_token_latency_seconds", "Time between tokens.", TOKEN_LATENCY_BUCKETS
        )
        self.tpot = histogram(
            "vllm:request_time_per_output_token_seconds",
            "Decode time per output token.",
            TOKEN_LATENCY_BUCKETS,
        )
        self.e2e = histogram(
            "vllm:e2e_request_latency_seconds", "Arrival to finish.", REQUEST_LATENCY_BUCKETS
        )
        self.queue = histogram(
            "vllm:request_queue_time_seconds", "Arrival to first schedule.", REQUEST_LATENCY_BUCKETS
        )
        self.inference = histogram(
            "vllm:request_inference_time_seconds", "First schedule to finish.", REQUEST_LATENCY_BUCKETS
        )
        self.prefill = histogram(
            "vllm:request_prefill_time_seconds", "First schedule to first token.", REQUEST_LATENCY_BUCKETS
        )
        self.decode = histogram(
            "vllm:request_decode_time_seconds", "First token to finish.", REQUEST_LATENCY_BUCKETS
        )
        token_buckets = one_two_five_buckets(info.max_model_len)
        self.req_prompt = histogram("vllm:request_prompt_tokens", "Prompt tokens per request.", token_buckets)
        self.req_generation = histogram(
            "vllm:request_generation_tokens", "Generated tokens per request.", token_buckets
        )
        self.iteration_tokens = histogram(
            "vllm:iteration_tokens_total", "Tokens processed per engine step.", ITERATION_TOKEN_BUCKETS
        )
        self.params_n = histogram("vllm:request_params_n", "The n parameter of requests.", PARAMS_N_BUCKETS)
        self.req_preemptions = histogram(
            "vllm:request_num_preemptions", "Preemptions per finished request.", PREEMPTION_BUCKETS
        )
        self.structured_requests = Counter(
            "vllm:structured_output_requests", "Finished requests with a structured-output constraint, by kind.",
            (*names, "kind"), registry=r,
        )  # fmt: skip
        for kind in STRUCTURED_KINDS:  # every series exists from the start, at 0
            self.structured_requests.labels(**labels, kind=kind)
        self.compile_time = histogram(
            "vllm:structured_output_compile_seconds",
            "Time to compile and validate a request's grammar (cache misses only).",
            COMPILE_BUCKETS,
        )
        self.spec_drafts = self.spec_draft_tokens = self.spec_accepted = None
        self.spec_accepted_per_pos: list[Any] = []
        if info.num_speculative_tokens:
            self.spec_drafts = counter(
                "vllm:spec_decode_num_drafts", "Drafts verified (one a sequence a step)."
            )
            self.spec_draft_tokens = counter("vllm:spec_decode_num_draft_tokens", "Draft tokens verified.")
            self.spec_accepted = counter("vllm:spec_decode_num_accepted_tokens", "Draft tokens accepted.")
            per_pos = Counter(
                "vllm:spec_decode_num_accepted_tokens_per_pos", "Draft tokens accepted, by position in the draft.",
                (*names, "position"), registry=r,
            )  # fmt: skip
            self.spec_accepted_per_pos = [
                per_pos.labels(**labels, position=str(p)) for p in range(info.num_speculative_tokens)
            ]
        self.lora_info = None
        self._lora_labels: tuple[str, str, str] | None = None
        if info.max_loras:
            self.lora_info = Gauge(
                "vllm:lora_requests_info", "Running stats on LoRA requests (value: time of the update).",
                LORA_INFO_LABELS, registry=r,
            )  # fmt: skip
            self.max_loras = str(info.max_loras)
        self.engine_bound = True

    def _observe_loras(self, running: list[str], waiting: list[str], now: float) -> None:
        """One series, the current one: vLLM keeps every past label set as a series of its own (one per change of
        the adapters in use, without bound); a reader wants the newest only."""
        labels = (self.max_loras, ",".join(waiting), ",".join(running))
        if labels != self._lora_labels and self._lora_labels is not None:
            self.lora_info.remove(*self._lora_labels)  # type: ignore[union-attr]
        self._lora_labels = labels
        self.lora_info.labels(*labels).set(now)  # type: ignore[union-attr]

    def observe(self, stats: EngineStats) -> None:
        """Engine stats listener: one call per engine step."""
        scheduler, it = stats.scheduler, stats.iteration
        self.running.set(scheduler.num_running_reqs)
        self.waiting.set(scheduler.num_waiting_reqs)
        self.kv_usage.set(scheduler.kv_cache_usage)
        if self.lora_info is not None:
            self._observe_loras(
                scheduler.running_lora_adapters, scheduler.waiting_lora_adapters, it.timestamp
            )
        self.prompt_tokens.inc(it.num_prompt_tokens)
        self.generation_tokens.inc(it.num_generation_tokens)
        self.preemptions.inc(it.num_preemptions)
        self.prefix_queries.inc(it.prefix_cache_queries)
        self.prefix_hits.inc(it.prefix_cache_hits)
        if it.num_tokens_in_step > 0:
            self.iteration_tokens.observe(it.num_tokens_in_step)
        if it.num_drafts and self.spec_drafts is not None:
            self.spec_drafts.inc(it.num_drafts)
            self.spec_draft_tokens.inc(it.num_draft_tokens)
            self.spec_accepted.inc(it.num_accepted_tokens)
            for child, count in zip(self.spec_accepted_per_pos, it.num_accepted_tokens_per_pos):
                child.inc(count)
        for value in it.time_to_first_tokens:
            self.ttft.observe(value)
        for value in it.inter_token_latencies:
            self.itl.observe(value)
        for finished in it.finished_requests:
            self.request_success.labels(**self.labels, finished_reason=finished.finish_reason).inc()
            self.e2e.observe(finished.e2e_latency)
            self.queue.observe(finished.queue_time)
            self.inference.observe(finished.inference_time)
            self.prefill.observe(finished.prefill_time)
            self.decode.observe(finished.decode_time)
            self.req_prompt.observe(finished.num_prompt_tokens)
            self.req_generation.observe(finished.num_generation_tokens)
            self.params_n.observe(finished.n)
            self.req_preemptions.observe(finished.num_preemptions)
            if finished.structured_output is not None:
                self.structured_requests.labels(**self.labels, kind=finished.structured_output).inc()
            if finished.grammar_compile_time is not None:
                self.compile_time.observe(finished.grammar_compile_time)
            tpot = finished.time_per_output_token
            if tpot is not None:
                self.tpot.observe(tpot)
