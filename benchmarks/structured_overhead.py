"""What grammar-constrained rows cost a batch (issue 13): offline, 32 chat prompts, 64 output tokens each, greedy;
all rows free against half of them under a JSON schema, in one process, alternating for `--rounds` rounds (best
of each kept, so drift hits both). Output tokens per second counts every generated token (a constrained row may
end early when its JSON is complete).

    .venv/bin/python benchmarks/structured_overhead.py [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 60},
        "year": {"type": "integer", "minimum": 1900},
        "genres": {
            "type": "array",
            "items": {"enum": ["drama", "comedy", "action", "horror"]},
            "maxItems": 3,
        },
        "summary": {"type": "string", "maxLength": 200},
    },
    "required": ["title", "year", "genres", "summary"],
    "additionalProperties": False,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from pagedserve import LLM, SamplingParams
    from pagedserve.cpu_info import cpu_info
    from pagedserve.sampling_params import StructuredOutputsParams

    llm = LLM(max_model_len=2048, kv_cache_memory_bytes=512 * 1024**2)
    ask = [{"role": "user", "content": f"Describe film number {i} as JSON."} for i in range(32)]
    prompts = [{"prompt_token_ids": llm.llm_engine.apply_chat_template([m])} for m in ask]
    free = SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True)
    constrained = SamplingParams(
        temperature=0.0, max_tokens=64, structured_outputs=StructuredOutputsParams(json=SCHEMA)
    )
    layouts = {"free": [free] * 32, "half-json": [constrained, free] * 16}
    llm.generate(prompts[:2], [constrained, free], use_tqdm=False)  # warm-up: grammar tokenizers, caches
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, params in layouts.items():
            started = time.perf_counter()
            outputs = llm.generate(prompts, params, use_tqdm=False)
            elapsed = time.perf_counter() - started
            tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
            best[name] = max(best.get(name, 0.0), tokens / elapsed)
            print(f"{name}: {tokens} tokens in {elapsed:.2f} s = {tokens / elapsed:.1f} tok/s", flush=True)
    overhead = 1 - best["half-json"] / best["free"]
    result = {
        "machine": platform.machine(),
        "cpu": cpu_info().describe(),
        "tok_per_s": best,
        "overhead_percent": round(100 * overhead, 1),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
