"""Render capacity plans: a table for people, JSON for scripts, and a values fragment for the Helm chart."""

from __future__ import annotations

import math
from typing import Any

import yaml

from pagedserve.kube.planner import GIB, SEED_HEADROOM, Plan, kv_groups

# Chart defaults (deploy/helm/pagedserve/values.yaml): host memory is only raised above these when needed.
CHART_MEMORY_REQUEST_GIB = 16
CHART_MEMORY_LIMIT_GIB = 32
HOST_MEMORY_SLACK_GIB = 8


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    chosen = plan.chosen
    result: dict[str, Any] = {
        "model": plan.model.name,
        "gpu": plan.gpu.name,
        "gpu_memory_bytes": plan.gpu.memory_bytes,
        "dtype": plan.dtype,
        "quantization": plan.quantization,
        "kv_cache_dtype": plan.kv_cache_dtype,
        "max_model_len": plan.max_model_len,
        "concurrency": plan.concurrency,
        "param_count": plan.model.param_count,
        "weight_bytes": plan.weight_bytes,
        "kv_bytes_per_token": plan.kv_bytes_per_token,
        "kv_bytes_requested": plan.kv_bytes_requested,
        "headroom": SEED_HEADROOM,
        "gpu_memory_utilization": plan.request.gpu_memory_utilization,
        "valid_tensor_parallel_sizes": plan.valid_tp_sizes,
        "fits": chosen is not None,
        "candidates": [
            {
                "tensor_parallel_size": c.tp,
                "fits": c.fits,
                "reason": c.reason,
                "per_gpu": {
                    "budget_bytes": c.budget,
                    "weight_bytes": c.weights,
                    "runtime_overhead_bytes": c.runtime,
                    "activation_bytes": c.activations,
                    "kv_room_bytes": c.kv_room,
                    "kv_bytes_per_token": c.kv_bytes_per_token,
                },
                "kv_tokens": c.kv_tokens,
                "max_concurrency": c.max_concurrency,
            }
            for c in plan.candidates
        ],
        "notes": plan.notes,
    }
    if chosen is not None:
        left_tokens = chosen.kv_tokens - plan.concurrency * plan.seq_tokens
        result["recommendation"] = {
            "tensor_parallel_size": chosen.tp,
            "gpus_per_replica": chosen.tp,
            "max_concurrency": chosen.max_concurrency,
            "kv_room_bytes_total": max(0, chosen.kv_room) * chosen.tp,
            "kv_tokens": chosen.kv_tokens,
            "kv_tokens_left_after_request": left_tokens,
            "kv_bytes_left_after_request": left_tokens * chosen.kv_bytes_per_token * chosen.tp,
        }
    return result


def render_table(plan: Plan) -> str:
    model, gpu = plan.model, plan.gpu
    lines = [
        f"Model        {model.name}: {model.param_count / 1e9:.2f} B parameters, {model.num_layers} layers, "
        f"{model.num_attention_heads} heads / {model.num_kv_heads} KV heads x {model.head_dim}",
        f"Precision    dtype {plan.dtype}, quantization {plan.quantization}, KV cache {plan.kv_cache_dtype}",
        f"Weights      {_gib(plan.weight_bytes)}",
        f"KV cache     {plan.kv_bytes_per_token:,} bytes/token; {plan.max_model_len} tokens x {plan.concurrency} "
        f"sequence(s) = {_gib(plan.kv_bytes_requested)}"
        + (
            f" (each holds {plan.seq_tokens:,} tokens of the pool: sliding windows, see the note)"
            if kv_groups(model)
            else ""
        ),
        f"GPU          {gpu.name} ({_gib(gpu.memory_bytes)}), budget {plan.request.gpu_memory_utilization:.0%} "
        f"per GPU, sizing rule: total memory >= weights + {SEED_HEADROOM:.0%}",
        f"Valid TP     {', '.join(map(str, plan.valid_tp_sizes)) or 'none'} (divide heads and MLP width; KV heads "
        "split or replicated)",
        "",
        f"{'TP':>3} {'weights/GPU':>12} {'runtime':>9} {'activ.':>8} {'KV room/GPU':>12} {'KV tokens':>11} "
        f"{'max seqs':>9}  verdict",
    ]
    for c in plan.candidates:
        lines.append(
            f"{c.tp:>3} {_gib(c.weights):>12} {_gib(c.runtime):>9} {_gib(c.activations):>8} "
            f"{_gib(c.kv_room):>12} {c.kv_tokens:>11,} {c.max_concurrency:>9}  {c.reason}"
        )
    lines.append("")
    chosen = plan.chosen
    if chosen is None:
        lines.append(f"Result       does not fit on up to {plan.request.max_gpus_per_node} x {gpu.name}")
    else:
        left = chosen.kv_tokens - plan.concurrency * plan.seq_tokens
        lines.append(
            f"Result       {chosen.tp} x {gpu.name} per replica (tensor-parallel {chosen.tp}); "
            f"KV room {_gib(max(0, chosen.kv_room) * chosen.tp)} = {chosen.kv_tokens:,} tokens = "
            f"{chosen.max_concurrency} sequence(s) of {plan.max_model_len}; "
            f"{left:,} tokens ({_gib(left * chosen.kv_bytes_per_token * chosen.tp)}) left after the asked "
            f"{plan.concurrency}"
        )
    lines.extend(f"Note         {note}" for note in plan.notes)
    return "\n".join(lines)


def render_summary(plans: list[Plan]) -> str:
    """One line per GPU type: the plan `pagedserve plan MODEL` prints when no --gpu is given."""
    lines = [f"{'GPU':<11} {'memory':>10} {'GPUs/replica':>13} {'KV room':>10} {'max seqs':>9}  note"]
    for plan in plans:
        c = plan.chosen
        if c is None:
            lines.append(
                f"{plan.gpu.name:<11} {_gib(plan.gpu.memory_bytes):>10} {'-':>13} {'-':>10} {'-':>9}  does not fit"
            )
        else:
            lines.append(
                f"{plan.gpu.name:<11} {_gib(plan.gpu.memory_bytes):>10} {c.tp:>13} "
                f"{_gib(max(0, c.kv_room) * c.tp):>10} {c.max_concurrency:>9}  dtype {plan.dtype}"
            )
    return "\n".join(lines)


def values_fragment(plan: Plan, model_name: str) -> dict[str, Any]:
    """Values for deploy/helm/pagedserve that run the plan. Raises ValueError when the plan does not fit."""
    chosen = plan.chosen
    if chosen is None:
        raise ValueError(f"{plan.model.name} does not fit on {plan.gpu.name}: no values to write")
    values: dict[str, Any] = {
        "model": {"name": model_name},
        "engine": {
            "tensorParallelSize": chosen.tp,
            "maxModelLen": plan.max_model_len,
            "maxNumSeqs": plan.concurrency if plan.concurrency > 1 else plan.request.max_num_seqs,
            "dtype": plan.dtype,
            "quantization": "" if plan.quantization == "none" else plan.quantization,
            "gpuMemoryUtilization": plan.request.gpu_memory_utilization,
        },
        "gpu": {"enabled": True, "product": plan.gpu.product},
    }
    # One pod holds every shard; loading stages about one shard at a time in host memory.
    shard_gib = math.ceil(plan.weight_bytes / chosen.tp / GIB)
    if shard_gib + HOST_MEMORY_SLACK_GIB > CHART_MEMORY_LIMIT_GIB:
        request = max(CHART_MEMORY_REQUEST_GIB, shard_gib + HOST_MEMORY_SLACK_GIB)
        values["resources"] = {"requests": {"cpu": str(2 + 2 * chosen.tp), "memory": f"{request}Gi"}}
        values["resources"]["limits"] = {"memory": f"{request + 16}Gi"}
    return values


def render_values(plan: Plan, model_name: str) -> str:
    chosen = plan.chosen
    values = values_fragment(plan, model_name)
    assert chosen is not None  # values_fragment raised otherwise
    header = (
        f"# pagedserve plan: {plan.model.name} on {chosen.tp} x {plan.gpu.name}; KV room {chosen.kv_tokens:,} "
        f"tokens = {chosen.max_concurrency} sequence(s) of {plan.max_model_len}\n"
        f"# helm install ... -f this-file.yaml (model.source and storage are yours to set)\n"
    )
    return header + yaml.safe_dump(values, sort_keys=False)
