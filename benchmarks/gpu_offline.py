"""Offline throughput on a GPU with random weights on a Llama-3-8B-shaped model, against the roofline (issue 14).

Each batch size B runs in its own process and its own `LLM(max_num_seqs=B)`: B prompts of `--input-len` random
token ids are submitted at once and each decodes `--output-len` tokens (greedy, ignore_eos). Reported per B:
output tok/s of the whole run; decode tok/s estimated by subtraction (the run minus a separately timed
prefill-only run with max_tokens=1) and measured directly as the median engine step among pure-decode steps;
the fraction of HBM bandwidth a decode step uses (weights + the batch's KV over the step time); and MFU.
benchmarks/GPU_CHECK.md says how the numbers are judged.

    python benchmarks/gpu_offline.py [--batch-sizes 1,32,256] [--json out.json]               # on the GPU
    .venv/bin/python benchmarks/gpu_offline.py --device cpu --config-preset tiny --batch-sizes 1,4  # smoke
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Llama-3-8B's shapes (meta-llama/Meta-Llama-3-8B config.json). bos/eos are the stub tokenizer's ids (below).
LLAMA3_8B: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14336,
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "hidden_act": "silu",
    "torch_dtype": "bfloat16",
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
# Same architecture, small enough to smoke-test the script on a laptop CPU in seconds.
TINY = {
    **LLAMA3_8B,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 256,
    "vocab_size": 1024,
}
PRESETS = {"llama3-8b": LLAMA3_8B, "tiny": TINY}
BF16_BYTES = 2


def write_model_folder(config: dict[str, Any], folder: Path) -> None:
    """config.json plus a three-token stub tokenizer: the engine always loads a tokenizer (there is no
    skip_tokenizer_init), but prompts here are token ids and outputs are not detokenized, so it only has to load."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    vocab = {"<unk>": 0, "<|begin_of_text|>": 1, "<|end_of_text|>": 2}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))
    special = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "unk_token": "<unk>"}
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", **special})
    )


def param_counts(config: dict[str, Any]) -> dict[str, int]:
    """Parameters by role. `matmul` is every matrix a token is multiplied by (the layers' and the LM head);
    `embedding` is the input table, of which a step reads only its batch's rows (the same table as the head
    when tied)."""
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim  # q, o; k, v
    mlp = 3 * hidden * config["intermediate_size"]  # gate, up, down
    embedding = lm_head = config["vocab_size"] * hidden
    tied = bool(config["tie_word_embeddings"])
    norms = layers * 2 * hidden + hidden
    matmul = layers * (attention + mlp) + lm_head
    total = matmul + norms + (0 if tied else embedding)
    return {"embedding": embedding, "lm_head": lm_head, "matmul": matmul, "norms": norms, "total": total}


def kv_bytes_per_token(config: dict[str, Any]) -> int:
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    return 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * head_dim * BF16_BYTES


def roofline(
    config: dict[str, Any],
    batch: int,
    input_len: int,
    output_len: int,
    run: dict[str, Any],
    hbm: float,
    peak: float,
) -> dict[str, Any]:
    """Bandwidth and compute use of one batch size's run, from its timings and the model's shapes."""
    counts = param_counts(config)
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    decode_tokens = batch * (output_len - 1)  # the first token of each sequence comes out of its prefill
    decode_s_est = run["total_s"] - run["prefill_s"]
    step_s = run["decode_step_median_s"] or (decode_s_est / max(output_len - 1, 1))
    # Decode step t (1..output_len-1) attends over input_len + t tokens: on average input_len + output_len / 2.
    context = input_len + output_len / 2
    kv_read = batch * context * kv_bytes_per_token(config)
    # A step reads every matrix once and only its batch's rows of the embedding table.
    rows = 0 if config["tie_word_embeddings"] else batch * hidden
    weights_read = (counts["matmul"] + counts["norms"] + rows) * BF16_BYTES
    all_weights = counts["total"] * BF16_BYTES  # the simpler count (whole embedding table too), for reference
    attention_flops = 4 * layers * heads * head_dim * context  # q.k and p.v over the context, per token
    decode_flops = 2 * counts["matmul"] + attention_flops
    prefill_flops = batch * (
        2 * (counts["matmul"] - counts["lm_head"]) * input_len  # the LM head runs on the last position only
        + 2 * counts["lm_head"]
        + 2 * layers * heads * head_dim * input_len**2  # causal: half of 4 * L * H * D * n^2
    )
    decode_tok_s = batch / step_s
    return {
        "decode_tok_s_est": decode_tokens / decode_s_est if decode_s_est > 0 else None,
        "decode_step_s_est": decode_s_est / max(output_len - 1, 1),
        "decode_step_s": step_s,
        "decode_tok_s": decode_tok_s,
        "output_tok_s": batch * output_len / run["total_s"],
        "weight_bytes_counted": counts["total"] * BF16_BYTES,  # should equal the engine's weight_bytes
        "bytes_per_step": weights_read + kv_read,
        "roofline_step_s": (weights_read + kv_read) / hbm,
        "hbm_fraction": (weights_read + kv_read) / step_s / hbm,
        "hbm_fraction_all_weights": (all_weights + kv_read) / step_s / hbm,
        "mfu_decode": decode_tok_s * decode_flops / peak,
        "mfu_overall": (prefill_flops + decode_tokens * decode_flops) / run["total_s"] / peak,
    }


def run_batch(args: argparse.Namespace, batch: int, model_dir: str) -> dict[str, Any]:
    """One batch size in this process: load, warm up, time a prefill-only run, then the full run."""
    import torch

    from pagedserve import LLM, SamplingParams

    config = PRESETS[args.config_preset]
    kwargs: dict[str, Any] = {}
    if args.max_num_batched_tokens:
        kwargs["max_num_batched_tokens"] = args.max_num_batched_tokens
    if args.kv_cache_gib:
        kwargs["kv_cache_memory_bytes"] = int(args.kv_cache_gib * 1024**3)
    elif args.device == "cpu":  # the CPU default (4 GiB) is far more than the tiny preset needs
        kwargs["kv_cache_memory_bytes"] = 256 * 1024**2
    started = time.perf_counter()
    llm = LLM(
        model=model_dir, load_format="dummy", device=args.device, dtype="bfloat16", max_num_seqs=batch,
        max_model_len=args.input_len + args.output_len, seed=args.seed, **kwargs,
    )  # fmt: skip
    load_s = time.perf_counter() - started
    engine = llm.llm_engine
    # (end time, prompt tokens, generated tokens) of each engine step: pure decode steps are timed one by one.
    steps: list[tuple[float, int, int]] = []
    engine.add_stats_listener(
        lambda s: steps.append(
            (time.perf_counter(), s.iteration.num_prompt_tokens, s.iteration.num_generation_tokens)
        )
    )
    rng = random.Random(args.seed * 1000 + batch)
    vocab = config["vocab_size"]
    cuda = args.device.startswith("cuda")

    def timed(max_tokens: int) -> tuple[float, list[float]]:
        # Fresh random prompts every run, so no run hits the prefix cache that the previous one filled.
        prompts = [
            {"prompt_token_ids": [rng.randrange(vocab) for _ in range(args.input_len)]} for _ in range(batch)
        ]
        params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0, detokenize=False)
        steps.clear()
        begin = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)  # type: ignore[arg-type]
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - begin
        short = [len(o.outputs[0].token_ids) for o in outputs if len(o.outputs[0].token_ids) != max_tokens]
        if short:
            raise RuntimeError(
                f"{len(short)} sequences stopped early (e.g. {short[0]} of {max_tokens} tokens)"
            )
        # Pure decode steps of the whole batch: every sequence generated, none prefilled.
        ends = [begin] + [t for t, _, _ in steps]
        return elapsed, [ends[i + 1] - ends[i] for i, (_, p, g) in enumerate(steps) if p == 0 and g == batch]

    # Warm-up compiles the kernels (Triton JIT) for this batch size's prefill and decode shapes.
    timed(min(args.warmup_tokens, args.output_len))
    prefill_s, _ = timed(1)
    total_s, decode_steps = timed(args.output_len)
    runner = getattr(engine.core.executor, "runner", None)
    return {
        "batch": batch,
        "load_s": load_s,
        "prefill_s": prefill_s,
        "total_s": total_s,
        "decode_steps_timed": len(decode_steps),
        "decode_step_median_s": statistics.median(decode_steps) if decode_steps else None,
        "decode_step_min_s": min(decode_steps) if decode_steps else None,
        "attention_backend": getattr(runner, "attention_backend", None),
        "num_kv_blocks": engine.info.num_kv_blocks,
        "kv_cache_bytes": engine.info.kv_cache_bytes,
        "weight_bytes": engine.info.weight_bytes,
        "device_name": torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine(),
        "max_memory_allocated": torch.cuda.max_memory_allocated() if cuda else None,
        "torch": torch.__version__,
    }


def _fmt(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    return "-" if value is None else f"{value * scale:,.{digits}f}"


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        "batch", "output tok/s", "decode tok/s (est)", "decode tok/s (steps)", "step ms", "prefill s",
        "HBM %", "MFU dec %", "MFU all %",
    )  # fmt: skip
    lines = [header]
    for row in rows:
        if "error" in row:
            lines.append((str(row["batch"]), f"FAILED: {row['error']}", *[""] * 7))
            continue
        lines.append((
            str(row["batch"]), _fmt(row["output_tok_s"]), _fmt(row["decode_tok_s_est"]), _fmt(row["decode_tok_s"]),
            _fmt(row["decode_step_s"], 1e3, 2), _fmt(row["prefill_s"], digits=2), _fmt(row["hbm_fraction"], 100),
            _fmt(row["mfu_decode"], 100), _fmt(row["mfu_overall"], 100),
        ))  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for index, line in enumerate(lines):
        print("  ".join(cell.rjust(width) for cell, width in zip(line, widths)))
        if index == 0:
            print("  ".join("-" * width for width in widths))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-sizes", default="1,32,256")
    parser.add_argument("--input-len", type=int, default=512)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--config-preset", choices=sorted(PRESETS), default="llama3-8b")
    parser.add_argument("--hbm-bandwidth", type=float, default=4.8e12, help="B/s (H200 datasheet: 4.8e12)")
    parser.add_argument(
        "--peak-tflops", type=float, default=989.0, help="dense bf16 (H100/H200 datasheet: 989)"
    )
    parser.add_argument(
        "--warmup-tokens", type=int, default=16, help="output tokens of the untimed warm-up run"
    )
    parser.add_argument("--max-num-batched-tokens", type=int, default=None, help="engine default if unset")
    parser.add_argument(
        "--kv-cache-gib", type=float, default=None, help="engine default if unset (CPU: 0.25)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child-timeout", type=float, default=300.0, help="seconds per batch size")
    parser.add_argument("--json", default=None)
    parser.add_argument("--child-batch", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    if args.child_batch is not None:
        result = run_batch(args, args.child_batch, args.model_dir)
        Path(args.child_out).write_text(json.dumps(result))
        return 0
    config = PRESETS[args.config_preset]
    batches = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    workdir = Path(tempfile.mkdtemp(prefix="gpu_offline_"))
    model_dir = workdir / f"{args.config_preset}-dummy"
    write_model_folder(config, model_dir)
    rows: list[dict[str, Any]] = []
    try:
        for batch in batches:
            out = workdir / f"batch{batch}.json"
            # A process per batch size: each LLM takes the GPU's memory for its KV cache, and a kernel fault in
            # one batch size must not lose the others' numbers.
            command = [sys.executable, __file__, *sys.argv[1:], "--child-batch", str(batch)]
            command += ["--model-dir", str(model_dir), "--child-out", str(out)]
            print(
                f"== batch {batch}: {args.input_len} in / {args.output_len} out", file=sys.stderr, flush=True
            )
            try:
                code = subprocess.run(command, timeout=args.child_timeout).returncode
                error = None if code == 0 and out.exists() else f"exit code {code}"
            except subprocess.TimeoutExpired:
                error = f"timed out after {args.child_timeout:.0f} s"
            if error:
                rows.append({"batch": batch, "error": error})
                continue
            run = json.loads(out.read_text())
            rows.append({**run, **roofline(
                config, batch, args.input_len, args.output_len, run, args.hbm_bandwidth, args.peak_tflops * 1e12
            )})  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(
        f"\n{args.config_preset} dummy weights, bf16, {args.input_len} in / {args.output_len} out, {args.device}"
        f" ({next((r['device_name'] for r in rows if 'device_name' in r), '?')}); roofline at "
        f"{args.hbm_bandwidth / 1e12:.2f} TB/s and {args.peak_tflops:.0f} TFLOP/s"
    )
    print_table(rows)
    ok = [r for r in rows if "error" not in r]
    one = next((r for r in ok if r["batch"] == 1), None)
    largest = max(ok, key=lambda r: r["batch"], default=None)
    targets = {
        "batch1_decode_step_s": one and one["decode_step_s"],
        "batch1_hbm_fraction": one and one["hbm_fraction"],
        "batch1_meets_70pct_hbm": None if one is None else one["hbm_fraction"] >= 0.70,
        "largest_batch": largest and largest["batch"],
        "largest_batch_decode_tok_s": largest and largest["decode_tok_s"],
        "largest_batch_output_tok_s": largest and largest["output_tok_s"],
        "largest_batch_mfu_decode": largest and largest["mfu_decode"],
    }
    if one:
        print(f"batch 1: decode step {one['decode_step_s'] * 1e3:.2f} ms against a roofline of "
              f"{one['roofline_step_s'] * 1e3:.2f} ms: {one['hbm_fraction']:.1%} of HBM bandwidth (target 70 %)")  # fmt: skip
    if args.json:
        report = {
            "benchmark": "gpu_offline",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "host": platform.node(),
            "preset": args.config_preset,
            "config": config,
            "params": param_counts(config),
            "kv_bytes_per_token": kv_bytes_per_token(config),
            "device": args.device,
            "input_len": args.input_len,
            "output_len": args.output_len,
            "hbm_bandwidth": args.hbm_bandwidth,
            "peak_tflops": args.peak_tflops,
            "engine_env": {k: v for k, v in os.environ.items() if k.startswith(("PAGEDSERVE_", "TRITON_"))},
            "results": rows,
            "targets": targets,
        }
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0 if len(ok) == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
