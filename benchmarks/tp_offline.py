"""Tensor parallelism on this machine's CPU cores: TP=1 against TP=2, with the ranks' collectives over gloo and
through shared memory (issue 12; distributed/shm_collectives.py), eager and with decode steps replayed.

Two workloads per run: offline-32x64 (32 prompts, 64 tokens each, batched) and one stream of 128 tokens, where
the all-reduce's latency shows most. Each configuration runs in its own process (the ranks are processes too);
the configurations alternate for `--rounds` rounds and the best of each is kept, so drift hits all of them.

    .venv/bin/python benchmarks/tp_offline.py [--rounds 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

# name -> (tensor-parallel size, enforce_eager, environment). Over gloo a TP step is always eager; through shared
# memory the ranks replay decode steps as recorded C calls (worker/cpu_graph.py) unless --enforce-eager.
CONFIGS: dict[str, tuple[int, bool, dict[str, str]]] = {
    "TP=1": (1, False, {}),
    "TP=2 gloo": (2, False, {"PAGEDSERVE_DISABLE_SHM_COLLECTIVES": "1"}),
    "TP=2 shm eager": (2, True, {}),
    "TP=2 shm": (2, False, {}),
}


def _throughput(llm, prompts, max_tokens: int) -> float:  # noqa: ANN001
    from pagedserve import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    started = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - started
    return sum(len(o.outputs[0].token_ids) for o in outputs) / elapsed


def run_once(tp: int, enforce_eager: bool) -> dict[str, float]:
    from pagedserve import LLM, SamplingParams
    from pagedserve.benchmark.presets import OFFLINE_PRESETS, topic_messages

    preset = OFFLINE_PRESETS["offline-32x64"]
    started = time.perf_counter()
    llm = LLM(
        dtype="float32",
        tensor_parallel_size=tp,
        kv_cache_memory_bytes=512 * 1024**2,
        max_model_len=2048,
        enforce_eager=enforce_eager,
    )
    load_s = time.perf_counter() - started
    prompts = [
        {"prompt_token_ids": llm.llm_engine.apply_chat_template(m)}
        for m in topic_messages(preset.num_prompts)
    ]
    llm.generate(prompts[:1], SamplingParams(max_tokens=4), use_tqdm=False)  # untimed warm-up
    batch = _throughput(llm, prompts, preset.output_len)
    single = _throughput(llm, prompts[:1], 128)
    llm.llm_engine.shutdown()
    return {
        "tp": tp,
        "enforce_eager": enforce_eager,
        "load_s": load_s,
        "offline_32x64": batch,
        "single_stream": single,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--eager", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(run_once(args.child, args.eager)))
        return
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in CONFIGS}
    for _ in range(args.rounds):
        for name, (tp, eager, env) in CONFIGS.items():
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(tp), *(["--eager"] if eager else [])],
                capture_output=True, text=True, check=True,
                env={**os.environ, **env},
            )  # fmt: skip
            result = json.loads(out.stdout.strip().splitlines()[-1])
            rounds[name].append(result)
            print(
                f"{name}: offline-32x64 {result['offline_32x64']:.1f} tok/s, single stream "
                f"{result['single_stream']:.1f} tok/s (load {result['load_s']:.1f} s)",
                flush=True,
            )
    best = {
        name: {key: max(r[key] for r in results) for key in ("offline_32x64", "single_stream")}
        for name, results in rounds.items()
    }
    base = best["TP=1"]
    for name, numbers in best.items():
        print(
            f"best {name}: offline-32x64 {numbers['offline_32x64']:.1f} tok/s "
            f"({numbers['offline_32x64'] / base['offline_32x64']:.2f}x TP=1), single stream "
            f"{numbers['single_stream']:.1f} tok/s ({numbers['single_stream'] / base['single_stream']:.2f}x TP=1)"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": platform.processor(), "rounds": rounds, "best": best}, f, indent=2)


if __name__ == "__main__":
    main()
