"""End-to-end latency of one batch by batch size, pagedserve against transformers (vLLM's latency benchmark).

.venv/bin/python benchmarks/latency.py [--batch-sizes 1,8,32] [--input-len 32] [--output-len 128]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pagedserve.benchmark.offline import load_llm, offline_latency  # noqa: E402
from pagedserve.benchmark.report import markdown_table  # noqa: E402


def transformers_latency(
    model: Any, tokenizer: Any, batch_size: int, input_len: int, output_len: int, iters: int
) -> float:
    import numpy as np
    from peers.hf_transformers import static_batches

    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, model.config.vocab_size, size=input_len).tolist() for _ in range(batch_size)]
    static_batches(model, tokenizer, prompts, output_len, batch_size)  # warm-up
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        static_batches(model, tokenizer, prompts, output_len, batch_size)
        times.append(time.perf_counter() - start)
    return float(np.mean(times))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--input-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--num-iters", type=int, default=3)
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    sizes = [int(b) for b in args.batch_sizes.split(",")]

    llm = load_llm(dtype="bfloat16")
    ours = {b: offline_latency(llm, b, args.input_len, args.output_len, args.num_iters).mean_s for b in sizes}
    del llm
    theirs = {}
    if not args.skip_transformers:
        from peers.hf_transformers import load_model

        model, tokenizer = load_model()
        theirs = {
            b: transformers_latency(model, tokenizer, b, args.input_len, args.output_len, args.num_iters)
            for b in sizes
        }
    rows = [
        [b, ours[b], theirs.get(b), f"{theirs[b] / ours[b]:.2f}×" if b in theirs else None] for b in sizes
    ]
    print(markdown_table(["batch", "pagedserve s", "transformers s", "speed-up"], rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"pagedserve": ours, "transformers": theirs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
