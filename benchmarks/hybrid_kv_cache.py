"""The hybrid KV cache manager on a Gemma 3-shaped GGUF: the same batch of long requests in the same KV budget, with
window layers freeing their blocks (the default) and with every block kept (--disable-hybrid-kv-cache-manager),
offline, one engine at a time.

The file is written here (cached in .bench-cache/): Gemma 3's layout scaled down so that prefill is fast on two
cores: 24 layers, five local (a 256-token window) for each global one, hidden 512, 4 query heads and 1 KV head of
128, GELU MLP of 2048, matrices Q4_0, random weights, the bundled SmolLM2 tokenizer. What is measured depends on the
cache's arithmetic (blocks a sequence holds), not on the weights' values.

    .venv/bin/python benchmarks/hybrid_kv_cache.py [--requests 8] [--prompt-len 1500] [--output-len 256]
        [--kv-mib 64] [--rounds 2]

Prints, per system: the engine's maximum concurrency at max_model_len, the preemptions, the largest number of
sequences decoding at once, wall time and output tokens/s. Random token ids (no prompt text), greedy, ignore_eos.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gemma3_single_stream import write_gemma3  # noqa: E402
from random_gguf import cached_model  # noqa: E402

from pagedserve import LLM, SamplingParams  # noqa: E402


def write_model(path: Path) -> None:
    write_gemma3(
        path,
        "gemma-3-shaped-small-random",
        layers=24,
        hidden=512,
        heads=4,
        head_dim=128,
        width=2048,
        window=256,
    )


def run(path: Path, hybrid: bool, args: argparse.Namespace) -> dict[str, float]:
    llm = LLM(
        model=str(path), quantization="gguf", max_model_len=args.prompt_len + args.output_len,
        kv_cache_memory_bytes=args.kv_mib * 2**20, disable_hybrid_kv_cache_manager=not hybrid,
        max_num_batched_tokens=args.batched_tokens,
    )  # fmt: skip
    engine = llm.llm_engine
    try:
        kv = engine.kv_cache_manager
        concurrency = kv.num_blocks // kv.blocks_for_sequence(
            args.prompt_len + args.output_len, engine.scheduler.max_num_batched_tokens
        )
        decoding: list[int] = []
        engine.add_stats_listener(lambda stats: decoding.append(stats.scheduler.num_running_reqs))
        prompts = [
            {"prompt_token_ids": [(1000 + 37 * r + 11 * i) % 40000 + 100 for i in range(args.prompt_len)]}
            for r in range(args.requests)
        ]
        params = SamplingParams(temperature=0, max_tokens=args.output_len, ignore_eos=True)
        start = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        elapsed = time.perf_counter() - start
        produced = sum(len(o.outputs[0].token_ids) for o in outputs)
        return {
            "max_concurrency": concurrency,
            "preemptions": engine.scheduler.total_preemptions,
            "most_running": max(decoding, default=0),
            "seconds": elapsed,
            "output_tok_s": produced / elapsed,
        }
    finally:
        engine.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=1500)
    parser.add_argument("--output-len", type=int, default=256)
    parser.add_argument("--kv-mib", type=int, default=64)
    parser.add_argument("--batched-tokens", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    path = cached_model("gemma3-small-shaped-q4_0.gguf", write_model)
    results: dict[str, list[dict[str, float]]] = {"hybrid (default)": [], "every block kept": []}
    for round_index in range(args.rounds):
        for name, hybrid in (("hybrid (default)", True), ("every block kept", False)):
            result = run(path, hybrid, args)
            results[name].append(result)
            print(f"round {round_index + 1} {name}: {result}", flush=True)
    print(
        "\n| system | max concurrency | preemptions | most running | seconds (median) | output tok/s (median) |"
    )
    print("|---|---|---|---|---|---|")
    for name, rows in results.items():
        seconds = statistics.median(r["seconds"] for r in rows)
        rate = statistics.median(r["output_tok_s"] for r in rows)
        first = rows[0]
        print(
            f"| {name} | {first['max_concurrency']:.0f} | {first['preemptions']:.0f} | {first['most_running']:.0f} | "
            f"{seconds:.1f} | {rate:.1f} |"
        )


if __name__ == "__main__":
    main()
