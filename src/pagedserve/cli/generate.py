"""`pagedserve generate "prompt"`: offline generation from the command line."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pagedserve.cli.args import add_config_args, configure_logging
from pagedserve.config import CacheConfig, SchedulerConfig
from pagedserve.model_config import ModelConfig


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("generate", help="generate text offline (no server)")
    parser.add_argument("prompt", nargs="+", help="prompt text; several prompts run as one batch")
    parser.add_argument(
        "--chat", action="store_true", help="wrap each prompt as a user message (chat template)"
    )
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens to generate per prompt")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=-1)
    parser.add_argument("--n", type=int, default=1, help="samples per prompt")
    parser.add_argument("--sampling-seed", type=int, default=None, help="per-request sampling seed")
    parser.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    add_config_args(parser, ModelConfig)
    add_config_args(parser, CacheConfig)
    add_config_args(parser, SchedulerConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pagedserve import LLM, SamplingParams
    from pagedserve.config_fields import config_fields

    engine_kwargs = {
        f.name: getattr(args, f.name)
        for cls in (ModelConfig, CacheConfig, SchedulerConfig)
        for f in config_fields(cls)
    }
    try:
        configure_logging()
        params = SamplingParams(
            n=args.n,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            max_tokens=args.max_tokens,
            seed=args.sampling_seed,
            stop=args.stop,
        )
        llm = LLM(**engine_kwargs)
        if args.chat:
            outputs = llm.chat(
                [[{"role": "user", "content": p}] for p in args.prompt], params, use_tqdm=False
            )
        else:
            outputs = llm.generate(args.prompt, params, use_tqdm=False)
    except (ValueError, FileNotFoundError) as error:
        print(f"pagedserve generate: {error}", file=sys.stderr)
        return 2
    for output in outputs:
        for completion in output.outputs:
            print(completion.text)
    return 0
