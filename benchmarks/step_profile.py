"""Where an offline run's time goes, by kind of work: timers around the model's modules (exclusive time, so a
layer's time excludes its projections), the sampler and the whole engine step.

    .venv/bin/python benchmarks/step_profile.py [--workload offline-32x64] [--dtype auto]

Run it under the ISA of interest (PAGEDSERVE_CPU_ISA, and ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA for torch's
own kernels, to stand in for an older CPU): the report names the ISA. Prints a markdown table; `--json` keeps it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pagedserve.benchmark.offline import chat_prompt_ids, load_llm  # noqa: E402
from pagedserve.benchmark.presets import OFFLINE_PRESETS, topic_messages  # noqa: E402
from pagedserve.cpu_info import cpu_info  # noqa: E402


def category(name: str, module: object) -> str | None:
    kind = type(module).__name__
    if name.endswith("lm_head"):
        return "LM head"
    if kind in ("MergedLinear", "ReplicatedLinear", "LinearBase"):
        return "matrix products (layers)"
    if kind == "LlamaAttention":
        return "attention (rotary, KV write, decode/prefill kernels)"
    if kind == "RMSNorm":
        return "RMSNorm (+ residual)"
    if kind == "SiluAndMul":
        return "SiLU-and-multiply"
    if kind == "VocabEmbedding":
        return "embedding"
    if kind == "Sampler":
        return "sampling"
    return None


class ExclusiveTimers:
    """Per-category time of module forwards, each excluding the timed modules it calls."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.stack: list[list[float]] = []  # [start, time spent in timed children]

    def attach(self, model) -> None:
        for name, module in model.named_modules():
            label = category(name, module)
            if label is not None:
                module.register_forward_pre_hook(self._pre)
                module.register_forward_hook(self._post(label))

    def _pre(self, module, args) -> None:
        self.stack.append([time.perf_counter(), 0.0])

    def _post(self, label: str):
        def hook(module, args, output) -> None:
            start, children = self.stack.pop()
            elapsed = time.perf_counter() - start
            self.totals[label] += elapsed - children
            if self.stack:
                self.stack[-1][1] += elapsed

        return hook


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workload", default="offline-32x64", choices=sorted(OFFLINE_PRESETS))
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--quantization", default=None, help="as serve's flag (e.g. gguf: the blocks kept)")
    parser.add_argument("--kv-cache-dtype", default="auto", help="as serve's flag")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    from pagedserve import SamplingParams

    llm = load_llm(dtype=args.dtype, quantization=args.quantization, kv_cache_dtype=args.kv_cache_dtype)
    engine = llm.llm_engine
    preset = OFFLINE_PRESETS[args.workload]
    prompts = chat_prompt_ids(llm.get_tokenizer(), topic_messages(preset.num_prompts))
    params = SamplingParams(temperature=0.0, max_tokens=preset.output_len, ignore_eos=True)
    llm.generate([{"prompt_token_ids": p} for p in prompts[:2]], params)  # warm-up, untimed

    timers = ExclusiveTimers()
    timers.attach(engine.executor.runner.model)
    timers.attach(engine.executor.runner.sampler)
    start = time.perf_counter()
    llm.generate([{"prompt_token_ids": p} for p in prompts], params)
    wall = time.perf_counter() - start

    rows = sorted(timers.totals.items(), key=lambda item: -item[1])
    accounted = sum(timers.totals.values())
    rows.append(("everything else (Python, scheduler, inputs, outputs)", wall - accounted))
    tokens = preset.num_prompts * preset.output_len
    print(f"{cpu_info().describe()}; dtype {engine.info.dtype}; quantization {engine.info.quantization or 'none'}; "
          f"KV cache {engine.info.kv_cache_dtype}; "
          f"{args.workload}: {wall:.2f} s, "
          f"{tokens / wall:.1f} output tok/s")  # fmt: skip
    print("\n| work | seconds | share |\n|---|---|---|")
    for label, seconds in rows:
        print(f"| {label} | {seconds:.2f} | {100 * seconds / wall:.0f} % |")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "cpu": cpu_info().as_dict(),
                    "dtype": engine.info.dtype,
                    "workload": args.workload,
                    "wall_s": wall,
                    "breakdown_s": dict(rows),
                },
                indent=2,
            )
            + "\n"  # fmt: skip
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
