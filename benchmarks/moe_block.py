"""One mixture-of-experts feed-forward block of Qwen3-30B-A3B's shape (hidden 2048, 128 experts of width 768, top 8,
renormalized) on the CPU: pagedserve's block (layers/moe.py: tokens grouped by expert with one sort, one product per
expert) against transformers' Qwen3MoeSparseMoeBlock on the same random weights, with each experts implementation
transformers offers on a CPU (eager: a one-hot mask and a `where` per expert; grouped_mm: torch's grouped GEMM).

    .venv/bin/python benchmarks/moe_block.py [--rounds 3] [--tokens 1 8 64 512] [--json OUT]

Rows: pagedserve with float32 weights, pagedserve with bfloat16 weights under float32 compute (what `--dtype auto`
keeps on CPUs without bfloat16 instructions), transformers float32. Rounds interleave the systems; each cell is the
median over rounds of the best of 5 timed calls (ms a call), and the ratio is to the fastest transformers
implementation in the same round. Outputs are checked equal (float32, 1e-4) before timing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
import transformers
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

from pagedserve.cpu_info import cpu_info
from pagedserve.layers.moe import SparseMoeBlock
from pagedserve.worker.dtypes import cast_matrix_weights

HIDDEN, EXPERTS, WIDTH, TOP_K = 2048, 128, 768, 8
CALLS = 5


def build_pair() -> tuple[Qwen3MoeSparseMoeBlock, SparseMoeBlock]:
    config = transformers.Qwen3MoeConfig(
        hidden_size=HIDDEN, moe_intermediate_size=WIDTH, num_experts=EXPERTS, num_experts_per_tok=TOP_K,
        norm_topk_prob=True,
    )  # fmt: skip
    theirs = Qwen3MoeSparseMoeBlock(config).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in theirs.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    ours = SparseMoeBlock(HIDDEN, EXPERTS, TOP_K, WIDTH, renormalize=True).eval()
    with torch.no_grad():
        ours.gate.weight.copy_(theirs.gate.weight)
        for index, expert in enumerate(ours.experts):
            expert.gate_up_proj.weight.copy_(theirs.experts.gate_up_proj[index])
            expert.down_proj.weight.copy_(theirs.experts.down_proj[index])
    return theirs, ours


def best_ms(call: Callable[[], torch.Tensor]) -> float:
    call()  # warm-up: first-touch of the weights, oneDNN's kernel choice
    times = []
    for _ in range(CALLS):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 8, 64, 512])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    theirs, ours = build_pair()
    _, ours_bf16 = build_pair()
    cast_matrix_weights(ours_bf16, torch.bfloat16)
    inputs = {n: torch.randn(n, HIDDEN, generator=torch.Generator().manual_seed(n)) for n in args.tokens}

    def transformers_call(implementation: str, x: torch.Tensor) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            theirs.experts.config._experts_implementation = implementation
            return theirs(x.unsqueeze(0))[0]

        return call

    systems: dict[str, Callable[[torch.Tensor], Callable[[], torch.Tensor]]] = {
        "pagedserve float32": lambda x: lambda: ours(x),
        "pagedserve bf16 weights": lambda x: lambda: ours_bf16(x),
        "transformers eager": lambda x: transformers_call("eager", x),
        "transformers grouped_mm": lambda x: transformers_call("grouped_mm", x),
    }
    for x in inputs.values():
        expected = systems["transformers eager"](x)()
        expected = expected[0] if isinstance(expected, tuple) else expected
        for name in ("pagedserve float32", "transformers grouped_mm"):
            got = systems[name](x)()
            got = got[0] if isinstance(got, tuple) else got
            torch.testing.assert_close(got.reshape(expected.shape), expected, atol=1e-4, rtol=1e-4)

    results: dict[str, dict[int, list[float]]] = {name: {n: [] for n in inputs} for name in systems}
    ratios: dict[str, dict[int, list[float]]] = {name: {n: [] for n in inputs} for name in systems}
    for round_index in range(args.rounds):
        for n, x in inputs.items():
            timed = {name: best_ms(make(x)) for name, make in systems.items()}
            reference = min(v for k, v in timed.items() if k.startswith("transformers"))
            for name, ms in timed.items():
                results[name][n].append(ms)
                ratios[name][n].append(reference / ms)
        print(f"round {round_index + 1}/{args.rounds} done", flush=True)

    print(f"\nCPU: {cpu_info().describe()}; torch threads {torch.get_num_threads()}")
    print(f"Qwen3-30B-A3B MoE block ({EXPERTS} experts x {WIDTH}, top {TOP_K}), ms a call (median of rounds)")
    header = "| system | " + " | ".join(f"{n} tokens" for n in inputs) + " |"
    print(header)
    print("|" + "---|" * (len(inputs) + 1))
    for name in systems:
        cells = [
            f"{statistics.median(results[name][n]):.2f} ({statistics.median(ratios[name][n]):.2f}x)"
            for n in inputs
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump({"ms": results, "speedup_vs_best_transformers": ratios}, out, indent=1)


if __name__ == "__main__":
    main()
