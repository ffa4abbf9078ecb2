"""Offline runners on the engine in-process (`pagedserve.LLM`): throughput over a prompt set, and latency.

Requests go in through `llm.llm_engine.add_request` and the loop steps the engine itself, so the runner sees
every step: when each request got its first token (decode speed) and how full the KV blocks were.
"""

from __future__ import annotations

import itertools
import time
import weakref
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pagedserve.benchmark.kv_usage import KVUsageReport, KVUsageTracker

_TRACKERS: weakref.WeakKeyDictionary[Any, KVUsageTracker] = weakref.WeakKeyDictionary()
_request_ids = itertools.count()


@dataclass
class OfflineResult:
    workload: str
    system: str
    num_requests: int
    prompt_tokens: int
    output_tokens: int
    elapsed_s: float
    output_tokens_per_s: float
    total_tokens_per_s: float
    requests_per_s: float
    decode_tokens_per_s: float | None = None  # single stream: (n-1) tokens / (last - first token time)
    kv_utilisation: float | None = None
    kv_logical_utilisation: float | None = None
    kv_busiest_used_blocks: int | None = None
    kv_total_blocks: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_result(
    workload: str,
    system: str,
    prompt_lens: list[int],
    output_lens: list[int],
    elapsed_s: float,
    decode_tokens_per_s: float | None = None,
    kv: KVUsageReport | None = None,
) -> OfflineResult:
    total_out = sum(output_lens)
    return OfflineResult(
        workload=workload,
        system=system,
        num_requests=len(output_lens),
        prompt_tokens=sum(prompt_lens),
        output_tokens=total_out,
        elapsed_s=elapsed_s,
        output_tokens_per_s=total_out / elapsed_s,
        total_tokens_per_s=(total_out + sum(prompt_lens)) / elapsed_s,
        requests_per_s=len(output_lens) / elapsed_s,
        decode_tokens_per_s=decode_tokens_per_s,
        kv_utilisation=kv.utilisation if kv else None,
        kv_logical_utilisation=kv.logical_utilisation if kv else None,
        kv_busiest_used_blocks=kv.busiest_used_blocks if kv else None,
        kv_total_blocks=kv.num_total_blocks if kv else None,
    )


def chat_prompt_ids(tokenizer: Any, conversations: list[list[dict[str, str]]]) -> list[list[int]]:
    """Chat template applied, as token ids (the same ids go to every system compared)."""
    ids: list[list[int]] = []
    for messages in conversations:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids.append(tokenizer(text, add_special_tokens=False).input_ids)
    return ids


def _tracker(llm: Any) -> KVUsageTracker:
    engine = llm.llm_engine
    tracker = _TRACKERS.get(engine)
    if tracker is None:
        tracker = KVUsageTracker(block_size=engine.info.block_size)
        engine.add_stats_listener(tracker.on_stats)  # listeners can't be removed: one per engine
        _TRACKERS[engine] = tracker
    return tracker


def run_engine(
    llm: Any, prompt_ids: list[list[int]], output_len: int, track_kv: bool = True
) -> tuple[float, list[int], list[float], list[float], KVUsageReport | None]:
    """Greedy, ignore_eos, `output_len` tokens per prompt. Returns (elapsed, output lens, first/last token times)."""
    from pagedserve import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    engine = llm.llm_engine
    tracker = _tracker(llm) if track_kv else None
    if tracker is not None:
        tracker.reset()
        tracker.active = True
    ids = [f"bench-{next(_request_ids)}" for _ in prompt_ids]
    prompt_of = dict(zip(ids, prompt_ids))
    live: dict[str, int] = {}
    generated: dict[str, list[int]] = {}
    first_token: dict[str, float] = {}
    last_token: dict[str, float] = {}
    # Per-step outputs are needed for first-token times and the live token counts (LLM turns them off).
    streamed, engine.stream_outputs = engine.stream_outputs, True
    start = time.perf_counter()
    for rid, prompt in zip(ids, prompt_ids):
        engine.add_request(rid, {"prompt_token_ids": prompt}, params)
    while engine.has_unfinished_requests():
        outputs = engine.step()
        now = time.perf_counter()
        for out in outputs:
            tokens = out.outputs[0].token_ids
            if tokens and out.request_id not in first_token:
                first_token[out.request_id] = now
            last_token[out.request_id] = now
            if out.finished:
                generated[out.request_id] = list(tokens)
                live.pop(out.request_id, None)
            else:
                # The newest token's K/V is written by the next step.
                live[out.request_id] = len(prompt_of[out.request_id]) + len(tokens) - 1
        if tracker is not None:
            tracker.after_step(live)
    elapsed = time.perf_counter() - start
    engine.stream_outputs = streamed
    kv = None
    if tracker is not None:
        tracker.active = False
        kv = tracker.report({rid: prompt_of[rid] + generated.get(rid, []) for rid in ids})
    lens = [len(generated.get(rid, [])) for rid in ids]
    return (
        elapsed,
        lens,
        [first_token.get(r, start) for r in ids],
        [last_token.get(r, start) for r in ids],
        kv,
    )


def load_llm(**llm_kwargs: Any) -> Any:
    from pagedserve import LLM

    return LLM(**llm_kwargs)


def offline_throughput(
    llm: Any, workload: str, prompt_ids: list[list[int]], output_len: int, warmup: bool = False
) -> OfflineResult:
    """All prompts at once; output tokens per second over the whole run (and KV use, decode speed)."""
    if warmup:
        run_engine(llm, prompt_ids[:1], output_len, track_kv=False)
    if len(prompt_ids) > 1:
        # Timed as users run it: `LLM.generate`, which skips per-step outputs (streaming them to track KV use
        # costs ~10 % at batch 256). The KV utilisation comes from a second, untimed run that streams them.
        elapsed, lens = _generate_timed(llm, prompt_ids, output_len)
        kv = run_engine(llm, prompt_ids, output_len)[4]
        return make_result(workload, "pagedserve", [len(p) for p in prompt_ids], lens, elapsed, None, kv)
    elapsed, lens, firsts, lasts, kv = run_engine(llm, prompt_ids, output_len)
    decode = None
    if lens[0] > 1 and lasts[0] > firsts[0]:
        decode = (lens[0] - 1) / (lasts[0] - firsts[0])
    return make_result(workload, "pagedserve", [len(p) for p in prompt_ids], lens, elapsed, decode, kv)


def _generate_timed(llm: Any, prompt_ids: list[list[int]], output_len: int) -> tuple[float, list[int]]:
    from pagedserve import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    prompts = [{"prompt_token_ids": p} for p in prompt_ids]
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    return elapsed, [len(o.outputs[0].token_ids) for o in outputs]


@dataclass
class LatencyResult:
    batch_size: int
    input_len: int
    output_len: int
    latencies_s: list[float]
    percentiles_s: dict[str, float]

    @property
    def mean_s(self) -> float:
        return float(np.mean(self.latencies_s))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["avg_latency"] = self.mean_s
        return data


def offline_latency(
    llm: Any,
    batch_size: int,
    input_len: int,
    output_len: int,
    num_iters: int = 5,
    num_iters_warmup: int = 1,
    seed: int = 0,
) -> LatencyResult:
    """vLLM's latency benchmark: one batch of random-token prompts, end-to-end time per iteration."""
    if min(batch_size, input_len, output_len, num_iters) < 1 or num_iters_warmup < 0:
        raise ValueError(
            "batch_size, input_len, output_len and num_iters must be >= 1; num_iters_warmup >= 0"
        )
    rng = np.random.default_rng(seed)
    vocab = llm.llm_engine.info.vocab_size
    prompts = [rng.integers(0, vocab, size=input_len).tolist() for _ in range(batch_size)]
    for _ in range(num_iters_warmup):
        run_engine(llm, prompts, output_len, track_kv=False)
    latencies = [run_engine(llm, prompts, output_len, track_kv=False)[0] for _ in range(num_iters)]
    pct = {f"p{p}": float(np.percentile(latencies, p)) for p in (10, 25, 50, 75, 90, 99)}
    return LatencyResult(batch_size, input_len, output_len, latencies, pct)
