"""Single-stream decode after a long prompt: where attention over the paged KV cache, not the weights, sets the pace.
The prompt is prefilled once (prefix caching keeps it); each round then times a 1-token and a 65-token generation
of the same prompt, so their difference is 64 decode steps at that context length.

    .venv/bin/python benchmarks/long_context_decode.py [MODEL] [--context 1000 4000] [--rounds 3]

MODEL defaults to the bundled SmolLM2 GGUF. Prints decode tok/s per context length, best of the rounds. Set
PYTHONPATH to another checkout's src for a before / after in alternating processes.
"""

from __future__ import annotations

import argparse
import time

from pagedserve import LLM, SamplingParams
from pagedserve.models.bundled import bundled_model_path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", nargs="?", default=None)
    parser.add_argument("--context", type=int, nargs="+", default=[1000, 4000])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    model = args.model or str(bundled_model_path())
    options = {"quantization": "gguf"} if model.endswith(".gguf") else {}
    llm = LLM(model=model, max_model_len=max(args.context) + 128, enable_prefix_caching=True, **options)
    for context in args.context:
        prompt = [{"prompt_token_ids": [100 + (i * 7919) % 30000 for i in range(context)]}]
        llm.generate(prompt, SamplingParams(temperature=0, max_tokens=2, ignore_eos=True), use_tqdm=False)
        best = 0.0
        for _ in range(args.rounds):
            times = []
            for tokens in (1, 65):
                params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
                start = time.perf_counter()
                llm.generate(prompt, params, use_tqdm=False)
                times.append(time.perf_counter() - start)
            best = max(best, 64 / (times[1] - times[0]))
        print(f"context {context}: decode {best:.1f} tok/s (best of {args.rounds})")


if __name__ == "__main__":
    main()
