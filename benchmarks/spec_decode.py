"""Speculative decoding (n-gram drafts) against plain decoding: single-stream greedy decode of the bundled model.

    .venv/bin/python benchmarks/spec_decode.py [--rounds 3] [--max-tokens 128] [--json OUT] [--row-costs]

Workloads: `copy` (repeat a paragraph: drafts from the prompt are kept), `edit` (return a code snippet with one
name changed: mostly copied), `free` (a poem: little to copy, so drafts mostly cost). Configurations: no
drafts; ngram with k = 3 and 2- to 4-grams; ngram with k = 5 and vLLM's default 5-grams. Each configuration is
its own LLM in this process (dtype auto, the default path); rounds interleave the configurations, and the table
reports each one's median tok/s, its ratio to no drafts in the same round (median and each round), and the mean
acceptance length (tokens a verified draft gave: 1 + accepted draft tokens per draft).

--row-costs first prints what a verify step's extra rows cost: the model's matrix products (one layer's four
linear layers, and the LM head) timed alone at 1 to 8 activation rows, as a draft of k tokens runs k + 1 rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

from pagedserve import LLM
from pagedserve.core.stats import EngineStats
from pagedserve.cpu_info import cpu_info
from pagedserve.sampling_params import SamplingParams

PARAGRAPH = (
    "Kubernetes schedules each replica of the model server onto a node with a free GPU, mounts the weights from "
    "a persistent volume, and routes traffic to it only once its readiness probe succeeds. The autoscaler adds "
    "replicas when the queue of waiting requests grows, and removes them slowly, because loading a model takes "
    "minutes."
)
CODE = """def total_price(items, tax_rate):
    subtotal = 0
    for item in items:
        subtotal += item.price * item.quantity
    tax = subtotal * tax_rate
    return subtotal + tax
"""
WORKLOADS = {
    "copy": f"Repeat the following text exactly, word for word.\n\n{PARAGRAPH}\n\nRepeated text:\n",
    "edit": f"Rename the variable `subtotal` to `net` in this Python code and return the whole code.\n\n{CODE}\n"
    "Code with `subtotal` renamed to `net`:\n",
    "free": "Write a short poem about the sea at night.",
}
CONFIGS: dict[str, dict[str, Any] | None] = {
    "no drafts": None,
    "ngram k=3, 2-4-grams": {
        "method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 2, "prompt_lookup_max": 4,
    },
    "ngram k=5, 5-grams (vLLM's default n)": {"method": "ngram", "num_speculative_tokens": 5},
}  # fmt: skip


def build(spec: dict[str, Any] | None) -> tuple[LLM, dict[str, int]]:
    llm = LLM(max_model_len=2048, kv_cache_memory_bytes=256 * 1024**2, seed=0, speculative_config=spec)
    counts = {"drafts": 0, "accepted": 0}

    def listen(stats: EngineStats) -> None:
        counts["drafts"] += stats.iteration.num_drafts
        counts["accepted"] += stats.iteration.num_accepted_tokens

    llm.llm_engine.add_stats_listener(listen)
    return llm, counts


def run_once(llm: LLM, prompt: list[int], max_tokens: int) -> tuple[float, int]:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    start = time.perf_counter()
    out = llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)[0].outputs[0]
    return len(out.token_ids) / (time.perf_counter() - start), len(out.token_ids)


def row_costs(llm: LLM) -> None:
    """Microseconds per call of one layer's linear layers and of the LM head at 1-8 rows (best of 3 x 100 calls)."""
    import torch

    model = llm.llm_engine.core.executor.runner.model
    modules = dict(model.named_modules())
    names = [n for n in modules if n.startswith("model.layers.0.") and n.endswith("_proj")]
    hidden = llm.llm_engine.core.executor.runner.hf_config.hidden_size

    def best(call: Any, reps: int = 100) -> float:
        call()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(reps):
                call()
            times.append((time.perf_counter() - start) / reps * 1e6)
        return min(times)

    print("| rows | " + " | ".join(n.split(".")[-1] for n in names) + " | one layer | LM head | ÷ 1 row |")
    print("|---|" + "---|" * (len(names) + 3))
    first = None
    with torch.inference_mode():
        for rows in range(1, 9):
            costs = []
            for name in names:
                x = torch.randn(rows, modules[name].input_size)
                costs.append(best(lambda m=modules[name], x=x: m(x)))
            h = torch.randn(rows, hidden)
            head = best(lambda h=h: model.compute_logits(h), 30)
            total = sum(costs) * len(model.model.layers) + head
            first = first or total
            cells = " | ".join(f"{c:.0f}" for c in costs)
            print(f"| {rows} | {cells} | {sum(costs):.0f} | {head:.0f} | {total / first:.2f}x |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--json", default=None)
    parser.add_argument("--row-costs", action="store_true")
    args = parser.parse_args()
    engines = {name: build(spec) for name, spec in CONFIGS.items()}
    first = next(iter(engines.values()))[0]
    if args.row_costs:
        row_costs(first)
    prompts = {
        name: first.llm_engine.apply_chat_template([{"role": "user", "content": text}])
        for name, text in WORKLOADS.items()
    }
    for llm, _ in engines.values():  # warm-up: decode graphs captured, prompts in the prefix cache
        for prompt in prompts.values():
            run_once(llm, prompt, 16)
    results: dict[str, dict[str, Any]] = {}
    for workload, prompt in prompts.items():
        rates: dict[str, list[float]] = {name: [] for name in engines}
        acceptance: dict[str, list[float]] = {name: [] for name in engines}
        for _ in range(args.rounds):
            for name, (llm, counts) in engines.items():
                before = dict(counts)
                rate, _ = run_once(llm, prompt, args.max_tokens)
                rates[name].append(rate)
                drafts = counts["drafts"] - before["drafts"]
                if drafts:
                    acceptance[name].append(1 + (counts["accepted"] - before["accepted"]) / drafts)
        base = rates["no drafts"]
        results[workload] = {
            name: {
                "tok_s": values,
                "median_tok_s": statistics.median(values),
                "ratio_per_round": [v / b for v, b in zip(values, base)],
                "mean_acceptance_length": statistics.mean(acceptance[name]) if acceptance[name] else None,
            }
            for name, values in rates.items()
        }
    print(
        f"CPU: {cpu_info().describe()}; {args.rounds} rounds, {args.max_tokens} tokens, greedy, single stream\n"
    )
    print(
        "| workload | configuration | tok/s (median) | ÷ no drafts (median; each round) | mean acceptance length |"
    )
    print("|---|---|---|---|---|")
    for workload, by_config in results.items():
        for name, row in by_config.items():
            ratios = row["ratio_per_round"]
            accept = row["mean_acceptance_length"]
            print(
                f"| {workload} | {name} | {row['median_tok_s']:.1f} | {statistics.median(ratios):.2f}× "
                f"({', '.join(f'{r:.2f}' for r in ratios)}) | {'-' if accept is None else f'{accept:.2f}'} |"
            )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"cpu": cpu_info().describe(), "results": results}, handle, indent=1)


if __name__ == "__main__":
    main()
