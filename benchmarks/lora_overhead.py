"""What a LoRA adapter costs at decode: the bundled model (Q4_1 GGUF) served without adapters, with one adapter on
every request, and with half the requests on an adapter (base and adapter rows in one batch); and the plain engine
with --enforce-eager, since a step with an adapter runs eager.

    .venv/bin/python benchmarks/lora_overhead.py [--rounds 3] [--ranks 8 16] [--streams 1 8] [--json OUT]

The adapters are random PEFT folders on all seven projections of every layer (the worst case: most adapters touch
only q and v). One LLM with --enable-lora serves every configuration (the engine without the flag is measured too:
with the flag, a step without adapters must cost the same). Rounds interleave the configurations; the table reports
each one's median decode tok/s (generated tokens / time after the first token of every stream) and its ratio to the
plain engine in the same round.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import time
from types import SimpleNamespace
from typing import Any

from pagedserve import LLM
from pagedserve.cpu_info import cpu_info
from pagedserve.lora.request import LoRARequest
from pagedserve.sampling_params import SamplingParams

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from tests.lora_writer import write_adapter  # noqa: E402 - the test suite's PEFT writer

# SmolLM2-135M, the bundled model.
SMOLLM2 = SimpleNamespace(
    hidden_size=576, num_attention_heads=9, num_key_value_heads=3, head_dim=64, intermediate_size=1536,
    num_hidden_layers=30,
)  # fmt: skip
PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."
MAX_TOKENS = 128


def decode_rate(llm: LLM, streams: int, loras: list[LoRARequest | None]) -> float:
    """Generated tokens per second of decode (after the prefill step), `streams` requests at once."""
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    engine = llm.llm_engine
    for i in range(streams):
        engine.add_request(f"r{time.monotonic_ns()}-{i}", PROMPT, params, lora_request=loras[i % len(loras)])
    engine.step()  # every prompt fits the first step: prefill
    start = time.perf_counter()
    while engine.has_unfinished_requests():
        engine.step()
    elapsed = time.perf_counter() - start
    return streams * (MAX_TOKENS - 1) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--json", type=pathlib.Path)
    args = parser.parse_args()
    folder = pathlib.Path(tempfile.mkdtemp(prefix="lora-bench-"))
    adapters = {}
    for rank in args.ranks:
        write_adapter(folder / f"r{rank}", SMOLLM2, rank=rank, alpha=2.0 * rank, seed=rank, std=0.02)
        adapters[rank] = LoRARequest(f"r{rank}", rank, str(folder / f"r{rank}"))
    common = dict(max_model_len=1024, kv_cache_memory_bytes=256 * 1024**2, seed=0)
    plain = LLM(**common)
    with_lora = LLM(enable_lora=True, max_loras=1, max_lora_rank=max(args.ranks), **common)
    eager = LLM(enforce_eager=True, **common)
    configs: dict[str, tuple[LLM, list[LoRARequest | None]]] = {"plain engine": (plain, [None])}
    # A step with an adapter runs eager (decode graphs replay C kernels only): the part of the cost that is that.
    configs["plain engine, --enforce-eager"] = (eager, [None])
    configs["--enable-lora, no adapter"] = (with_lora, [None])
    for rank, lora in adapters.items():
        configs[f"rank {rank} on every request"] = (with_lora, [lora])
        configs[f"rank {rank} on half"] = (with_lora, [lora, None])
    for llm, loras in configs.values():  # warm up: decode graphs captured, adapters loaded
        decode_rate(llm, 1, loras)
    results: dict[str, Any] = {"isa": cpu_info().describe(), "rounds": args.rounds, "tables": {}}
    print(f"# LoRA overhead at decode, bundled model, {results['isa']}")
    for streams in args.streams:
        rates: dict[str, list[float]] = {name: [] for name in configs}
        for _ in range(args.rounds):
            for name, (llm, loras) in configs.items():
                if streams == 1 and "half" in name:
                    continue
                rates[name].append(decode_rate(llm, streams, loras))
        print(f"\n{streams} stream(s), {MAX_TOKENS} tokens each")
        print("| configuration | decode tok/s (median) | ratio to plain (median; each round) |")
        print("|---|---|---|")
        table = {}
        for name, values in rates.items():
            if not values:
                continue
            ratios = [v / p for v, p in zip(values, rates["plain engine"])]
            each = ", ".join(f"{r:.2f}" for r in ratios)
            print(f"| {name} | {statistics.median(values):.1f} | {statistics.median(ratios):.2f} ({each}) |")
            table[name] = {"tok_s": values, "ratio": ratios}
        results["tables"][str(streams)] = table
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
