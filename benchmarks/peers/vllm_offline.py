"""The offline workloads on upstream vLLM's CPU build. Runs in .venv-peers (it imports vllm, not pagedserve's
engine); the prompts come from pagedserve.benchmark.presets, read from src/ (plain Python, no dependencies).

Usage: .venv-peers/bin/python benchmarks/peers/vllm_offline.py --model DIR --json OUT [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))

from pagedserve.benchmark.presets import OFFLINE_PRESETS, topic_messages  # noqa: E402


def result(
    workload: str, prompts: list[list[int]], lengths: list[int], elapsed: float, decode: float | None
) -> dict:
    out = sum(lengths)
    return {
        "workload": workload,
        "system": "vLLM (CPU)",
        "num_requests": len(lengths),
        "prompt_tokens": sum(len(p) for p in prompts),
        "output_tokens": out,
        "elapsed_s": elapsed,
        "output_tokens_per_s": out / elapsed,
        "total_tokens_per_s": (out + sum(len(p) for p in prompts)) / elapsed,
        "requests_per_s": len(lengths) / elapsed,
        "decode_tokens_per_s": decode,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--json", required=True)
    parser.add_argument("--workloads", default=",".join(OFFLINE_PRESETS))
    parser.add_argument("--quick", action="store_true", help="a few short prompts (smoke run)")
    args = parser.parse_args()

    from vllm import LLM, SamplingParams

    llm = LLM(model=args.model, dtype="bfloat16", seed=0, max_model_len=2048)
    tokenizer = llm.get_tokenizer()
    results = []
    for name in args.workloads.split(","):
        preset = OFFLINE_PRESETS[name]
        count = min(preset.num_prompts, 4) if args.quick else preset.num_prompts
        output_len = min(preset.output_len, 16) if args.quick else preset.output_len
        prompts = [
            tokenizer(tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False),
                      add_special_tokens=False).input_ids
            for m in topic_messages(count)
        ]  # fmt: skip
        inputs = [{"prompt_token_ids": p} for p in prompts]
        params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
        if preset.warmup:
            llm.generate(inputs, params, use_tqdm=False)
        start = time.perf_counter()
        outputs = llm.generate(inputs, params, use_tqdm=False)
        elapsed = time.perf_counter() - start
        lengths = [len(o.outputs[0].token_ids) for o in outputs]
        decode = None
        if count == 1 and output_len > 1:
            # Decode speed without the prefill: time of N tokens minus time of 1 token, over N - 1.
            one = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
            start = time.perf_counter()
            llm.generate(inputs, one, use_tqdm=False)
            first = time.perf_counter() - start
            decode = (output_len - 1) / max(elapsed - first, 1e-9)
        results.append(result(name, prompts, lengths, elapsed, decode))
        print(f"vLLM {name}: {results[-1]['output_tokens_per_s']:.1f} output tok/s", flush=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
