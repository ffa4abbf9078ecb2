"""Tensor parallelism on this machine's CPU cores: offline-32x64 at TP=1 and TP=2, side by side (issue 12).

On a 2-core machine TP=2 is a correctness setup (one core a rank, a gloo all-reduce twice a layer), not a speed-up:
this reports what it costs, honestly. Each run is its own process (the ranks are processes too); TP=1 and TP=2
alternate for `--rounds` rounds and the best of each is kept, so drift hits both.

    .venv/bin/python benchmarks/tp_offline.py [--rounds 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time


def run_once(tp: int) -> dict[str, float]:
    from pagedserve import LLM, SamplingParams
    from pagedserve.benchmark.presets import OFFLINE_PRESETS, topic_messages

    preset = OFFLINE_PRESETS["offline-32x64"]
    started = time.perf_counter()
    llm = LLM(
        dtype="float32", tensor_parallel_size=tp, kv_cache_memory_bytes=512 * 1024**2, max_model_len=2048
    )
    load_s = time.perf_counter() - started
    prompts = [
        {"prompt_token_ids": llm.llm_engine.apply_chat_template(m)}
        for m in topic_messages(preset.num_prompts)
    ]
    params = SamplingParams(temperature=0.0, max_tokens=preset.output_len, ignore_eos=True)
    llm.generate(prompts[:1], SamplingParams(max_tokens=4), use_tqdm=False)  # untimed warm-up
    started = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - started
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    llm.llm_engine.shutdown()
    return {"tp": tp, "load_s": load_s, "output_tokens": tokens, "output_throughput": tokens / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(run_once(args.child)))
        return
    best: dict[int, dict[str, float]] = {}
    for _ in range(args.rounds):
        for tp in (1, 2):
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(tp)], capture_output=True, text=True, check=True
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"TP={tp}: {result['output_throughput']:.1f} tok/s (load {result['load_s']:.1f} s)",
                flush=True,
            )
            if tp not in best or result["output_throughput"] > best[tp]["output_throughput"]:
                best[tp] = result
    ratio = best[2]["output_throughput"] / best[1]["output_throughput"]
    print(
        f"best: TP=1 {best[1]['output_throughput']:.1f} tok/s, TP=2 {best[2]['output_throughput']:.1f} tok/s, TP=2 / TP=1 = {ratio:.2f}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": platform.processor(), "best": best, "ratio": ratio}, f, indent=2)


if __name__ == "__main__":
    main()
