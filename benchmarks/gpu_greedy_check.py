"""Greedy equivalence of the bundled model on two devices, CUDA against the CPU by default (issue 14).

Both sides run float32 with TF32 off and the GGUF's blocks dequantized at load (`--quantization none`: the CPU
would otherwise multiply the Q4_1 blocks in its own kernels, CUDA the dequantized matrices, and the comparison
would be of two roundings of the weights, not of two devices). Four fixed prompts (two chat, two text), 48 tokens
each, temperature 0, ignore_eos; the token ids are compared and, per prompt, the first differing position is
reported with each side's top-1 minus top-2 log-probability there (a gap near 0 is a near-tie that summation
order alone can flip). Exits 1 on any mismatch (`--tie-tolerance` forgives first differences at near-ties).

    python benchmarks/gpu_greedy_check.py [--device-a cuda] [--device-b cpu] [--json out.json]
    .venv/bin/python benchmarks/gpu_greedy_check.py --device-a cpu   # smoke test: the CPU against itself
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

CHAT_PROMPTS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
    [{"role": "user", "content": "Write a haiku about graphics cards."}],
]
TEXT_PROMPTS = [
    "The history of the printing press begins",
    "def fibonacci(n):\n",
]
LABELS = ["chat:capital", "chat:haiku", "text:printing", "text:fibonacci"]


def disable_tf32() -> dict[str, Any]:
    """TF32 would round CUDA's float32 matmul inputs to 10 mantissa bits: a different computation, not a bug."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    return tf32_flags()


def tf32_flags() -> dict[str, Any]:
    import torch

    return {
        "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


def run_device(args: argparse.Namespace, device: str) -> dict[str, Any]:
    """Greedy tokens and top-2 logprobs of every prompt on one device; the LLM is released afterwards."""
    import torch

    from pagedserve import LLM, SamplingParams

    started = time.perf_counter()
    llm = LLM(
        model=args.model, device=device, dtype="float32", quantization=args.quantization, seed=0,
        max_model_len=512, kv_cache_memory_bytes=256 * 1024**2,
    )  # fmt: skip
    load_s = time.perf_counter() - started
    engine = llm.llm_engine
    prompts: list[Any] = [{"prompt_token_ids": engine.apply_chat_template(m)} for m in CHAT_PROMPTS]
    prompts += TEXT_PROMPTS
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0, ignore_eos=True, logprobs=2)
    started = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    generate_s = time.perf_counter() - started
    runner = getattr(engine.core.executor, "runner", None)
    result = {
        "device": device,
        "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "model": engine.info.model_name,
        "dtype": engine.info.dtype,
        "weight_dtype": engine.info.weight_dtype or engine.info.dtype,
        "quantization": engine.info.quantization or "none",
        "attention_backend": getattr(runner, "attention_backend", None),
        "cpu_kernels": engine.info.cpu_kernels,
        "tf32": tf32_flags(),  # read after the engine started, in case anything turned it back on
        "load_s": load_s,
        "generate_s": generate_s,
        "prompts": [
            {
                "prompt_token_ids": list(o.prompt_token_ids),
                "token_ids": list(o.outputs[0].token_ids),
                "text": o.outputs[0].text,
                # Top-2 (token id, logprob) per position, best first.
                "top2": [
                    sorted(((t, lp.logprob) for t, lp in pos.items()), key=lambda x: -x[1])[:2]
                    for pos in (o.outputs[0].logprobs or [])
                ],
            }
            for o in outputs
        ],
    }
    engine.shutdown()
    del llm, engine, runner
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return result


def top_gap(top2: list[list[Any]], position: int) -> float | None:
    """Top-1 minus top-2 logprob at `position` on one side; None where not recorded."""
    if position >= len(top2) or len(top2[position]) < 2:
        return None
    return float(top2[position][0][1] - top2[position][1][1])


def compare(a: dict[str, Any], b: dict[str, Any], tolerance: float) -> list[dict[str, Any]]:
    rows = []
    for label, pa, pb in zip(LABELS, a["prompts"], b["prompts"]):
        ta, tb = pa["token_ids"], pb["token_ids"]
        first = next((i for i, (x, y) in enumerate(zip(ta, tb)) if x != y), None)
        if first is None and len(ta) != len(tb):
            first = min(len(ta), len(tb))
        gaps = (top_gap(pa["top2"], first), top_gap(pb["top2"], first)) if first is not None else (None, None)
        near_tie = first is not None and all(g is not None and g <= tolerance for g in gaps)
        rows.append({
            "prompt": label,
            "same_prompt_ids": pa["prompt_token_ids"] == pb["prompt_token_ids"],
            "equal": first is None,
            "first_diff": first,
            "tokens_a": ta,
            "tokens_b": tb,
            "text_a": pa["text"],
            "text_b": pb["text"],
            "gap_a": gaps[0],
            "gap_b": gaps[1],
            "near_tie": near_tie,
            "passed": pa["prompt_token_ids"] == pb["prompt_token_ids"] and (first is None or near_tie),
        })  # fmt: skip
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device-a", default="cuda")
    parser.add_argument("--device-b", default="cpu")
    parser.add_argument("--model", default=None, help="a .gguf file or HF folder; default: the bundled model")
    parser.add_argument("--quantization", default="none", help="'none' dequantizes the GGUF on both sides")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument(
        "--tie-tolerance", type=float, default=0.0, help="forgive first diffs with gaps <= this"
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    flags = disable_tf32()
    a = run_device(args, args.device_a)
    b = run_device(args, args.device_b)
    rows = compare(a, b, args.tie_tolerance)
    passed = all(r["passed"] for r in rows)

    print(f"\n{a['model']} float32 greedy, {args.max_tokens} tokens: {args.device_a} ({a['device_name']}, "
          f"{a['attention_backend']}) against {args.device_b} ({b['device_name']}, {b['attention_backend']})")  # fmt: skip
    print(f"{'prompt':<16} {'result':<9} {'first diff':>10} {'gap a':>8} {'gap b':>8}")
    for r in rows:
        result = "equal" if r["equal"] else ("near-tie" if r["near_tie"] else "DIFFERS")
        if not r["same_prompt_ids"]:
            result = "PROMPTS"  # the two sides tokenized the prompt differently
        gaps = [f"{g:8.4f}" if g is not None else f"{'-':>8}" for g in (r["gap_a"], r["gap_b"])]
        first = "-" if r["first_diff"] is None else str(r["first_diff"])
        print(f"{r['prompt']:<16} {result:<9} {first:>10} {gaps[0]} {gaps[1]}")
    print("PASS" if passed else "FAIL: greedy tokens differ between the devices")
    if args.json:
        report = {
            "benchmark": "gpu_greedy_check",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "passed": passed,
            "max_tokens": args.max_tokens,
            "tie_tolerance": args.tie_tolerance,
            "tf32_requested": flags,
            "a": {k: v for k, v in a.items() if k != "prompts"},
            "b": {k: v for k, v in b.items() if k != "prompts"},
            "prompts": rows,
        }
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
