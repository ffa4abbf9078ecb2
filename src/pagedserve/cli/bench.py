"""`pagedserve bench serve|sweep|throughput|latency`: vLLM's benchmark metrics, against any OpenAI server.

Flag names follow `vllm bench` where one exists (its spellings are accepted as aliases). Heavy imports
(aiohttp, numpy, transformers, the engine) happen inside the handlers so `pagedserve --help` stays fast.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any, get_args

from pagedserve.config import KVCacheDType

SERVE_DEFAULT_URL = "http://127.0.0.1:8000"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of requests per second or 'inf', got {text!r}"
        ) from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"the request rate must be > 0, got {text!r}")
    return value


def _add_target_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server")
    group.add_argument("--base-url", default=None, help=f"server address (default {SERVE_DEFAULT_URL})")
    group.add_argument("--host", default=None, help="with --port, an alternative to --base-url")
    group.add_argument("--port", type=int, default=None)
    group.add_argument(
        "--endpoint", default="/v1/completions", choices=["/v1/completions", "/v1/chat/completions"]
    )
    group.add_argument(
        "--model", default=None, help="model name sent in requests (default: the server's first)"
    )
    group.add_argument(
        "--tokenizer",
        default=None,
        help="HF folder or .gguf to count tokens (default: the server's path, or ours)",
    )
    group.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"), help="default: $OPENAI_API_KEY")
    group.add_argument("--ignore-eos", action="store_true", help="generate exactly --output-len tokens")
    group.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (the default)")

    data = parser.add_argument_group("requests")
    data.add_argument(
        "--dataset", "--dataset-name", default="random", choices=["random", "prompts-file", "topics"]
    )
    data.add_argument(
        "--prompts-file", default=None, help="one prompt per line, or .jsonl with a 'prompt' field"
    )
    data.add_argument("--input-len", "--random-input-len", type=_positive_int, default=128)
    data.add_argument("--output-len", "--random-output-len", type=_positive_int, default=128)
    data.add_argument(
        "--random-range-ratio", type=float, default=0.0, help="lengths drawn in [L(1-r), L(1+r)]"
    )
    data.add_argument("--seed", type=int, default=0)

    out = parser.add_argument_group("results")
    out.add_argument("--percentiles", "--metric-percentiles", default="50,90,99", help="comma-separated")
    out.add_argument(
        "--goodput", nargs="+", default=None, metavar="METRIC:MS", help="SLOs, e.g. ttft:500 tpot:50"
    )
    out.add_argument("--result-json", "--result-filename", default=None, help="write the result file here")
    out.add_argument("--plot", default=None, metavar="FILE.png", help="draw the run here")
    out.add_argument("--disable-tqdm", "--no-progress", action="store_true", help="no progress bar")
    out.add_argument("--skip-initial-test", action="store_true", help="no untimed test request first")


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench", help="benchmark a server (serve, sweep) or the engine (throughput, latency)"
    )
    parser.set_defaults(func=lambda _args: parser.print_help() or 2)
    sub = parser.add_subparsers(dest="bench_command", metavar="BENCH")

    serve = sub.add_parser("serve", help="load an OpenAI-compatible server and report vLLM's serving metrics")
    _add_target_args(serve)
    load = serve.add_argument_group("load")
    load.add_argument(
        "--preset", default=None, choices=["serve-c32"], help="a named workload of BENCHMARKS.md"
    )
    load.add_argument("--num-prompts", type=_positive_int, default=None, help="default 200 (or the preset's)")
    load.add_argument(
        "--request-rate", type=_rate, default=math.inf, help="requests/s, Poisson; inf = all at once"
    )
    load.add_argument("--burstiness", type=float, default=1.0, help="gamma shape of arrivals (1 = Poisson)")
    load.add_argument("--max-concurrency", type=_positive_int, default=None, help="most requests in flight")
    load.add_argument("--label", default=None)
    serve.set_defaults(func=run_serve)

    sweep = sub.add_parser("sweep", help="bench serve at rising concurrency; the highest one meeting the SLO")
    _add_target_args(sweep)
    levels = sweep.add_argument_group("sweep")
    levels.add_argument("--concurrency", default="1,4,16,32,64,128", help="comma-separated levels")
    levels.add_argument("--num-prompts", type=_positive_int, default=200, help="most requests at any level")
    levels.add_argument("--min-prompts", type=_positive_int, default=16, help="fewest requests at any level")
    levels.add_argument("--prompts-per-concurrency", type=_positive_int, default=4)
    levels.add_argument("--slo", nargs="+", default=["p99_ttft_ms:500"], metavar="KEY:MS")
    sweep.set_defaults(func=run_sweep)

    throughput = sub.add_parser("throughput", help="offline: the engine in-process over a prompt set")
    _add_engine_args(throughput)
    throughput.add_argument("--preset", default="offline-256x128", choices=_offline_presets())
    throughput.add_argument("--num-prompts", type=_positive_int, default=None, help="override the preset's")
    throughput.add_argument("--output-len", type=_positive_int, default=None, help="override the preset's")
    throughput.add_argument("--output-json", default=None)
    throughput.set_defaults(func=run_throughput)

    latency = sub.add_parser("latency", help="offline: end-to-end time of one batch, repeated")
    _add_engine_args(latency)
    latency.add_argument("--batch-size", type=_positive_int, default=1)
    latency.add_argument("--input-len", type=_positive_int, default=32)
    latency.add_argument("--output-len", type=_positive_int, default=128)
    latency.add_argument("--num-iters", type=_positive_int, default=5)
    latency.add_argument("--num-iters-warmup", type=int, default=1)
    latency.add_argument("--output-json", default=None)
    latency.set_defaults(func=run_latency)


def _offline_presets() -> list[str]:
    from pagedserve.benchmark.presets import OFFLINE_PRESETS

    return list(OFFLINE_PRESETS)


def _add_engine_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engine (as `pagedserve.LLM`)")
    group.add_argument("--model", default=None, help="HF folder or .gguf (default: the bundled SmolLM2)")
    group.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    group.add_argument(
        "--quantization", default=None, help="as serve's (gguf: a .gguf file's blocks kept; none)"
    )
    group.add_argument("--kv-cache-dtype", default="auto", choices=get_args(KVCacheDType), help="as serve's")
    group.add_argument("--load-format", default="auto")
    group.add_argument("--max-model-len", type=_positive_int, default=None)
    group.add_argument("--block-size", type=_positive_int, default=16)
    group.add_argument("--kv-cache-memory-bytes", type=_positive_int, default=None)
    group.add_argument("--max-num-seqs", type=_positive_int, default=256)
    group.add_argument("--max-num-batched-tokens", type=_positive_int, default=4096)
    group.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True)


def _llm_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    names = ("model", "dtype", "quantization", "kv_cache_dtype", "load_format", "max_model_len", "block_size")
    names += ("kv_cache_memory_bytes",)
    names += ("max_num_seqs", "max_num_batched_tokens", "enable_prefix_caching")
    return {name: getattr(args, name) for name in names}


def _base_url(args: argparse.Namespace) -> str:
    if args.base_url:
        return args.base_url.rstrip("/")
    if args.host or args.port:
        return f"http://{args.host or '127.0.0.1'}:{args.port or 8000}"
    return SERVE_DEFAULT_URL


def _fail(message: str) -> int:
    print(f"pagedserve bench: error: {message}", file=sys.stderr)
    return 2


def _prepare(args: argparse.Namespace) -> tuple[Any, Any, list[float], dict[str, float]]:
    from pagedserve.benchmark.client_setup import prepare_client
    from pagedserve.benchmark.metrics import parse_goodput, parse_percentiles
    from pagedserve.benchmark.serve import ServeTarget

    percentiles = parse_percentiles(args.percentiles)
    goodput = parse_goodput(args.goodput)
    if args.random_range_ratio < 0 or args.random_range_ratio >= 1:
        raise ValueError("--random-range-ratio must be in [0, 1)")
    base_url = _base_url(args)
    setup = prepare_client(base_url, args.model, args.tokenizer, args.api_key)
    target = ServeTarget(
        base_url=base_url,
        model=setup.model,
        endpoint=args.endpoint,
        api_key=args.api_key,
        ignore_eos=args.ignore_eos,
        temperature=args.temperature,
    )
    return setup, target, percentiles, goodput


def run_serve(args: argparse.Namespace) -> int:
    import asyncio

    from pagedserve.benchmark.client_setup import make_requests
    from pagedserve.benchmark.presets import SERVE_PRESETS
    from pagedserve.benchmark.report import format_summary, write_json
    from pagedserve.benchmark.serve import ServeLoad, compute_result, run_load

    try:
        if args.preset:
            preset = SERVE_PRESETS[args.preset]
            args.num_prompts = args.num_prompts or preset.num_prompts
            args.input_len, args.output_len = preset.input_len, preset.output_len
            args.max_concurrency = args.max_concurrency or preset.max_concurrency
            args.ignore_eos = True
        num_prompts = args.num_prompts or 200
        load = ServeLoad(args.request_rate, args.burstiness, args.max_concurrency, args.seed)
        setup, target, percentiles, goodput = _prepare(args)
        requests = make_requests(
            setup, args.dataset, num_prompts, args.input_len, args.output_len,
            args.prompts_file, args.random_range_ratio, args.seed,
        )  # fmt: skip
        print(f"bench serve: {len(requests)} requests to {target.api_url} (model {target.model})", flush=True)
        run = asyncio.run(
            run_load(target, requests, load, not args.skip_initial_test, show_progress=not args.disable_tqdm)
        )
    except (ValueError, RuntimeError) as exc:
        return _fail(str(exc))
    metrics, result = compute_result(
        run, target, load, percentiles=percentiles, goodput_slos_ms=goodput,
        count_tokens=setup.count_tokens(), model_id=target.model, tokenizer_id=setup.tokenizer_id,
        label=args.label or args.preset,
    )  # fmt: skip
    print(format_summary(metrics, run.duration_s, load.request_rate, load.max_concurrency))
    if args.result_json:
        write_json(args.result_json, result)
    if args.plot:
        from pagedserve.benchmark.plots import plot_serve_result

        plot_serve_result(result, args.plot)
    return 0 if metrics.completed else 1


def run_sweep(args: argparse.Namespace) -> int:
    import asyncio

    from pagedserve.benchmark.client_setup import make_requests
    from pagedserve.benchmark.report import write_json
    from pagedserve.benchmark.sweep import (
        SweepPlan,
        format_sweep_table,
        parse_concurrencies,
        parse_slos,
        percentiles_needed,
    )
    from pagedserve.benchmark.sweep import (
        run_sweep as sweep_levels,
    )

    try:
        plan = SweepPlan(
            parse_concurrencies(args.concurrency),
            args.num_prompts,
            args.min_prompts,
            args.prompts_per_concurrency,
        )
        slos = parse_slos(args.slo)
        setup, target, percentiles, goodput = _prepare(args)
        pool_size = max(plan.prompts_at(c) for c in plan.concurrencies)
        pool = make_requests(
            setup, args.dataset, pool_size, args.input_len, args.output_len,
            args.prompts_file, args.random_range_ratio, args.seed,
        )  # fmt: skip

        def progress(row: dict[str, Any]) -> None:
            print(
                f"  c={row['concurrency']}: {row['output_throughput']:.1f} output tok/s, "
                f"p99 TTFT {row['p99_ttft_ms']:.0f} ms, failed {row['failed']}",
                flush=True,
            )

        sweep = asyncio.run(
            sweep_levels(
                target, pool, plan, slos=slos, percentiles=percentiles_needed(slos, percentiles),
                goodput_slos_ms=goodput, count_tokens=setup.count_tokens(), model_id=target.model,
                tokenizer_id=setup.tokenizer_id, show_progress=not args.disable_tqdm, on_level=progress,
            )
        )  # fmt: skip
    except (ValueError, RuntimeError) as exc:
        return _fail(str(exc))
    print(format_sweep_table(sweep["rows"], slos))
    if args.result_json:
        write_json(args.result_json, sweep)
    if args.plot:
        from pagedserve.benchmark.plots import plot_sweep

        plot_sweep({target.model: sweep["rows"]}, args.plot, slos.get("p99_ttft_ms"))
    return 0


def run_throughput(args: argparse.Namespace) -> int:
    from pagedserve.benchmark.offline import chat_prompt_ids, load_llm, offline_throughput
    from pagedserve.benchmark.presets import OFFLINE_PRESETS, topic_messages

    preset = OFFLINE_PRESETS[args.preset]
    num_prompts = args.num_prompts or preset.num_prompts
    output_len = args.output_len or preset.output_len
    try:
        llm = load_llm(**_llm_kwargs(args))
    except (ValueError, FileNotFoundError) as exc:
        return _fail(str(exc))
    prompt_ids = chat_prompt_ids(llm.get_tokenizer(), topic_messages(num_prompts))
    result = offline_throughput(llm, preset.name, prompt_ids, output_len, warmup=preset.warmup)
    print(
        f"Throughput ({preset.name}, {num_prompts} prompts x {output_len} tokens): "
        f"{result.requests_per_s:.2f} requests/s, {result.total_tokens_per_s:.2f} total tokens/s, "
        f"{result.output_tokens_per_s:.2f} output tokens/s"
    )
    if result.decode_tokens_per_s is not None:
        print(f"Single-stream decode: {result.decode_tokens_per_s:.2f} tokens/s")
    if result.kv_utilisation is not None:
        print(
            f"KV cache at the busiest step: {result.kv_busiest_used_blocks}/{result.kv_total_blocks} blocks in use, "
            f"{100 * result.kv_utilisation:.1f} % of their token slots filled"
        )
    if args.output_json:
        from pagedserve.benchmark.report import write_json

        write_json(args.output_json, result.to_dict())
    return 0


def run_latency(args: argparse.Namespace) -> int:
    from pagedserve.benchmark.offline import load_llm, offline_latency

    try:
        llm = load_llm(**_llm_kwargs(args))
        result = offline_latency(
            llm, args.batch_size, args.input_len, args.output_len, args.num_iters, args.num_iters_warmup
        )
    except (ValueError, FileNotFoundError) as exc:
        return _fail(str(exc))
    print(
        f"Avg latency: {result.mean_s:.4f} seconds (batch {args.batch_size}, {args.output_len} tokens each)"
    )
    for name, value in result.percentiles_s.items():
        print(f"{name[1:]}% percentile latency: {value:.4f} seconds")
    if args.output_json:
        from pagedserve.benchmark.report import write_json

        write_json(args.output_json, result.to_dict())
    return 0
