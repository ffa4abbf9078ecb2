"""Batched decode with CPU decode graphs against eager steps (and another checkout), and the memory the graphs hold.

Each measurement is one fresh process running `LLM.generate` offline on N chat prompts at once (EOS ignored, all
the same output length, so every decode step has N sequences): output tok/s of the best of two timed runs after an
untimed one (which captures the graph of size N). Variants run in alternating processes, round by round:
this checkout with graphs, this checkout with `enforce_eager=True`, and with `--baseline-src` another checkout's
`src` (e.g. `git worktree add /tmp/old <rev>`). The first lines report, for this checkout, what each captured
graph's tensors would hold kept one by one against the arena all graphs share (worker/graph_arena.py).

    .venv/bin/python benchmarks/decode_graphs.py [--model FILE.gguf] [--concurrency 1 8 16 32] [--rounds 2]
        [--output-len 64] [--baseline-src DIR]

Without `--model`: the bundled SmolLM2-135M Q4_1 file. GGUF blocks are kept (`--quantization gguf`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

_CHILD = r"""
import json, logging, re, sys, time
from pagedserve import LLM, SamplingParams
from pagedserve.benchmark.offline import chat_prompt_ids
from pagedserve.benchmark.presets import topic_messages

args = json.loads(sys.argv[1])
captured = []
class Capture(logging.Handler):
    def emit(self, record):
        found = re.search(r"batch (\d+) captured .*its ([\d.]+) MB of tensors take ([\d.]+) MB", record.getMessage())
        if found:
            captured.append([int(found[1]), float(found[2]), float(found[3])])
kwargs = {"enforce_eager": args["eager"], "quantization": "gguf"}
if args["model"]:
    kwargs["model"] = args["model"]
llm = LLM(**kwargs)
logger = logging.getLogger("pagedserve")
logger.addHandler(Capture())
logger.setLevel(logging.INFO)
prompts = [{"prompt_token_ids": p} for p in chat_prompt_ids(llm.get_tokenizer(), topic_messages(args["n"]))]
params = SamplingParams(temperature=0.0, max_tokens=args["output_len"], ignore_eos=True)
if args["staggered"]:  # sequence i stops after 2 + i tokens: the batch shrinks through every size once
    staggered = [SamplingParams(temperature=0.0, max_tokens=2 + i, ignore_eos=True) for i in range(args["n"])]
    llm.generate(prompts, staggered, use_tqdm=False)
    graphs = llm.llm_engine.executor.runner.decode_graphs
    print(json.dumps({"captured": captured, "arena_mb": graphs.arena.numel() / 2**20 if graphs else 0}))
    sys.exit(0)
llm.generate(prompts, params, use_tqdm=False)
best = None
for _ in range(2):
    start = time.perf_counter()
    llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    best = elapsed if best is None else min(best, elapsed)
graphs = llm.llm_engine.executor.runner.decode_graphs
arena = graphs.arena.numel() if graphs is not None and getattr(graphs, "arena", None) is not None else 0
print(json.dumps({"tok_s": args["n"] * args["output_len"] / best, "captured": captured, "arena_mb": arena / 2**20}))
"""


def run(src: Path, model: str | None, n: int, output_len: int, eager: bool, staggered: bool = False) -> dict:
    args = json.dumps(
        {"model": model, "n": n, "output_len": output_len, "eager": eager, "staggered": staggered}
    )
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, args], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="a GGUF file (default: the bundled model)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 16, 32])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--baseline-src", type=Path, default=None, help="another checkout's src folder")
    args = parser.parse_args()
    from pagedserve.cpu_info import cpu_info

    variants = {"graphs": (SRC, False), "eager": (SRC, True)}
    if args.baseline_src is not None:
        variants[f"graphs, {args.baseline_src}"] = (args.baseline_src.resolve(), False)
    print(
        f"{cpu_info().describe()}; model {args.model or 'bundled Q4_1'}; {args.output_len} tokens a sequence"
    )
    largest = max(args.concurrency)
    memory = run(SRC, args.model, largest, args.output_len, False, staggered=True)
    sizes = sorted(b for b, _, _ in memory["captured"])
    print(
        f"graphs of {len(sizes)} batch sizes ({sizes[0] if sizes else '-'} to {sizes[-1] if sizes else '-'}): "
        f"their tensors {sum(mb for _, mb, _ in memory['captured']):.1f} MB kept one by one, "
        f"the shared arena {memory['arena_mb']:.1f} MB"
    )
    results: dict[tuple[str, int], list[float]] = {}
    for n in args.concurrency:
        for _ in range(args.rounds):
            for name, (src, eager) in variants.items():
                results.setdefault((name, n), []).append(
                    run(src, args.model, n, args.output_len, eager)["tok_s"]
                )
    print("\n| sequences | " + " | ".join(variants) + " |\n|---|" + "---|" * len(variants))
    for n in args.concurrency:
        cells = []
        for name in variants:
            runs = results[(name, n)]
            cells.append(f"{statistics.median(runs):.1f} ({', '.join(f'{r:.1f}' for r in runs)})")
        print(f"| {n} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
