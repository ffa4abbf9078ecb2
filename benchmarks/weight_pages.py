"""Weights in 2 MB pages against 4 KB pages (worker/huge_pages.py), in one process so the VM's neighbours move
both sides alike: two engines on the same model, one whose runner moved its weights into huge pages (the default)
and one whose weights stayed where PyTorch put them, generating in turn; then each of the model's GGUF matrices
multiplied from its own memory and from a copy in huge pages, in turn.

    .venv/bin/python benchmarks/weight_pages.py MODEL [--pairs 30] [--tokens 32]

MODEL: a GGUF file (e.g. the Q4_K_M file `q4km_single_stream.py --tied` writes to .bench-cache/) or a Hugging Face
folder. Prints each engine's tok/s per pair and the median of the pairs' ratios. Needs transparent huge pages
(`/sys/kernel/mm/transparent_hugepage/enabled`: always or madvise).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pagedserve import LLM, SamplingParams
from pagedserve.ops import cpu_gguf
from pagedserve.worker import huge_pages


def in_huge_pages(tensor: torch.Tensor) -> torch.Tensor:
    """A copy of `tensor` moved as the runner moves weights."""
    holder = torch.nn.Module()
    holder.register_buffer("t", tensor.clone())
    huge_pages.move_weights_to_huge_pages(holder)
    return holder.t


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model")
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    mode = huge_pages.huge_pages_mode()
    if mode == "never":
        raise SystemExit("this system gives no transparent huge pages: nothing to compare")
    options = {"quantization": "gguf"} if args.model.endswith(".gguf") else {}
    moved = LLM(model=args.model, max_model_len=1024, kv_cache_memory_bytes=2**28, **options)
    system = huge_pages.huge_pages_mode
    huge_pages.huge_pages_mode = lambda: "never"  # the second engine's runner leaves its weights in place
    try:
        kept = LLM(model=args.model, max_model_len=1024, kv_cache_memory_bytes=2**28, **options)
    finally:
        huge_pages.huge_pages_mode = system
    params = SamplingParams(temperature=0.0, max_tokens=args.tokens, ignore_eos=True)
    prompt = [{"prompt_token_ids": list(range(100, 140))}]
    rates: dict[str, list[float]] = {"2 MB pages": [], "4 KB pages": []}
    for engine in (moved, kept):
        engine.generate(prompt, params, use_tqdm=False)  # warm-up: decode graphs captured
    for _ in range(args.pairs):
        for name, engine in zip(rates, (moved, kept)):
            start = time.perf_counter()
            engine.generate(prompt, params, use_tqdm=False)
            rates[name].append(args.tokens / (time.perf_counter() - start))
    print(f"transparent huge pages: {mode}; {args.pairs} pairs of {args.tokens}-token generations (tok/s)")
    for name, values in rates.items():
        print(f"  {name}: " + " ".join(f"{v:.1f}" for v in values))
    ratios = [a / b for a, b in zip(*rates.values())]
    print(
        f"  2 MB / 4 KB: median of pairs {statistics.median(ratios):.3f}, of sums {sum(rates['2 MB pages']) / sum(rates['4 KB pages']):.3f}"
    )

    # The GGUF matrices of the engine whose weights stayed put, from where they are and from huge pages.
    by_shape: dict[tuple[int, int, int, int], list[torch.Tensor]] = {}
    for module in kept.llm_engine.executor.runner.model.modules():
        cols = getattr(module, "input_size", None) or getattr(
            module, "hidden_size", None
        )  # linear, embedding
        interleave = getattr(module, "weight_interleave", 1)
        matrices = [(getattr(module, "weight", None), getattr(module, "weight_type", None))]
        part_types = getattr(module, "part_types", None) or {}  # merged layers whose parts differ in type
        matrices += [(getattr(module, f"weight_part_{name}"), qtype) for name, qtype in part_types.items()]
        for weight, qtype in matrices:
            if qtype is None or cols is None or not isinstance(weight, torch.Tensor) or weight.numel() == 0:
                continue
            by_shape.setdefault((qtype, weight.shape[0], cols, interleave), []).append(weight.data)
    for (qtype, rows, cols, interleave), weights in sorted(by_shape.items()):
        copies = [in_huge_pages(w) for w in weights]
        x = torch.randn(1, cols)
        best = {"4 KB": float("inf"), "2 MB": float("inf")}
        for _ in range(6):
            for name, matrices in (("4 KB", weights), ("2 MB", copies)):
                start = time.perf_counter()
                for _ in range(3):
                    for w in matrices:
                        cpu_gguf.gguf_gemm(x, w, qtype, cols, None, interleave)
                best[name] = min(best[name], (time.perf_counter() - start) / 3 / len(matrices))
        nbytes = weights[0].numel()
        print(
            f"  type {qtype} {rows} x {cols} (interleave {interleave}, {len(weights)} matrices): "
            f"4 KB pages {nbytes / best['4 KB'] / 1e9:.1f} GB/s, 2 MB pages {nbytes / best['2 MB'] / 1e9:.1f} GB/s"
        )
    for engine in (moved, kept):
        engine.llm_engine.shutdown()


if __name__ == "__main__":
    main()
