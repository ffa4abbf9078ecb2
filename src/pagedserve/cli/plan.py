"""`pagedserve plan MODEL`: GPUs per replica, KV cache room, and a values fragment for the Helm chart."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, get_args

from pagedserve.config import KVCacheDType


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="size GPUs for a model: GPUs per replica, KV cache room, chart values",
        description="Compute weight and KV cache memory for MODEL and the smallest valid tensor-parallel size "
        "of a GPU type that serves it (docs/preflight.md explains the memory model).",
    )
    parser.add_argument(
        "model",
        nargs="?",
        metavar="MODEL",
        help="model folder with config.json, a config.json, a .gguf file, or a catalogue name",
    )
    parser.add_argument("--gpu", help="GPU type (A10G, L4, L40S, A100-40GB, A100-80GB, H100-80GB, H200, ...)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    parser.add_argument(
        "--quantization",
        default=None,
        choices=["awq", "gptq", "fp8", "int8", "none"],
        help="default: the checkpoint's",
    )
    parser.add_argument("--kv-cache-dtype", default="auto", choices=get_args(KVCacheDType))
    parser.add_argument("--max-model-len", type=int, default=None, help="default: the model's maximum")
    parser.add_argument(
        "--concurrency", type=int, default=1, help="max-length sequences that must fit at once"
    )
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument(
        "--max-gpus-per-node", type=int, default=8, help="largest tensor-parallel size considered"
    )
    parser.add_argument("--output", default="table", choices=["table", "json", "values"])
    parser.add_argument("--list-models", action="store_true", help="print the built-in catalogue and exit")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pagedserve.kube.gpus import find_gpu, gpu_catalogue
    from pagedserve.kube.model_spec import catalogue, load_model_spec
    from pagedserve.kube.plan_report import plan_to_dict, render_summary, render_table, render_values
    from pagedserve.kube.planner import PlanRequest, plan_capacity

    if args.list_models:
        for key, entry in catalogue().items():
            print(f"{key:<14} {entry['id']}")
        return 0
    if not args.model:
        print("pagedserve plan: give a MODEL (or --list-models for the built-in catalogue)", file=sys.stderr)
        return 2
    request = PlanRequest(
        dtype=args.dtype,
        quantization=args.quantization,
        kv_cache_dtype=args.kv_cache_dtype,
        max_model_len=args.max_model_len,
        concurrency=args.concurrency,
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_gpus_per_node=args.max_gpus_per_node,
    )
    try:
        request.validate()
        spec, model_name = load_model_spec(args.model)
        if args.gpu is None:
            if args.output == "values":
                raise ValueError("--output values needs --gpu (the values pin a GPU product and count)")
            plans = []
            for gpu in gpu_catalogue().values():
                try:
                    plans.append(plan_capacity(spec, gpu, request))
                except ValueError:
                    continue  # e.g. fp8 on a GPU generation without it: not a candidate
            if args.output == "json":
                print(json.dumps([plan_to_dict(p) for p in plans], indent=2))
            else:
                print(
                    f"{spec.name}: {spec.param_count / 1e9:.2f} B parameters; smallest group per GPU type\n"
                )
                print(render_summary(plans))
            return 0 if any(p.chosen for p in plans) else 1
        plan = plan_capacity(spec, find_gpu(args.gpu), request)
        if args.output == "json":
            print(json.dumps(plan_to_dict(plan), indent=2))
        elif args.output == "values":
            if plan.chosen is None:
                print(render_table(plan), file=sys.stderr)
                return 1
            print(render_values(plan, model_name), end="")
        else:
            print(render_table(plan))
    except (ValueError, OSError) as exc:
        print(f"pagedserve plan: {exc}", file=sys.stderr)
        return 2
    return 0 if plan.chosen is not None else 1
