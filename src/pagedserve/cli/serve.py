"""`pagedserve serve [MODEL]`: the vLLM-compatible OpenAI server (drop-in for `vllm serve`).

Flags are generated from the config dataclasses and spelled as vLLM's. Signals: the first SIGTERM/SIGINT drains
(/ready 503, new requests 503, in-flight ones finish within --shutdown-timeout, exit 0); a second one exits now.
Exit status 1 when the engine failed to load or died.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import signal
import sys
from types import FrameType
from typing import Any

from pagedserve import envs
from pagedserve.cli.args import add_config_args, config_from_args, configure_logging, parse_json_string_list
from pagedserve.config import (
    CacheConfig,
    EngineConfig,
    LoRAConfig,
    ParallelConfig,
    SchedulerConfig,
    SpeculativeConfig,
    StructuredOutputsConfig,
)
from pagedserve.config_fields import field_docs
from pagedserve.lora.request import LoRAModule
from pagedserve.model_config import QUANTIZATION_CHOICES, ModelConfig
from pagedserve.server_config import ServerConfig

API_KEY_ENV_VARS = ("VLLM_API_KEY", "PAGEDSERVE_API_KEY")
# ServerConfig's CORS lists, given as vLLM's JSON lists.
CORS_LISTS = ("allowed_origins", "allowed_methods", "allowed_headers")
# vLLM flags we recognise but do not implement: refused with a reason instead of argparse's generic error.
UNSUPPORTED_FLAGS = {
    "--fully-sharded-loras": "adapters already follow their layer's sharding (row-parallel layers keep their columns "
    "of A, column-parallel ones their rows of B)",
    "--data-parallel-size": "run more replicas instead (the Helm chart scales them)",
    "--ssl-keyfile": "terminate TLS at the ingress",
    "--ssl-certfile": "terminate TLS at the ingress",
    "--cpu-offload-gb": "weights stay in the device's memory; use a quantized checkpoint or more tensor-parallel ranks",
    "--enable-sleep-mode": "scale the Deployment to zero instead (KEDA in the chart)",
    "--kv-transfer-config": "no disaggregated prefill / KV transfer connector",
    "--enable-expert-parallel": "mixture-of-experts layers shard every expert over the tensor-parallel ranks "
    "(no expert parallelism)",
    "--rope-scaling": "removed from vLLM too; use --hf-overrides '{\"rope_scaling\": {...}}'",
    "--rope-theta": "removed from vLLM too; use --hf-overrides '{\"rope_theta\": ...}'",
    "--compilation-config": "pagedserve runs no torch.compile; its decode graphs are on unless --enforce-eager",
    "--async-scheduling": "each step is scheduled once the previous one's tokens are known",
    "--attention-backend": "the device picks it; PAGEDSERVE_ATTENTION_BACKEND overrides (cpu, cpu_torch, triton)",
    "--guided-decoding-backend": "removed from vLLM too; use --structured-outputs-config '{\"backend\": ...}'",
}
# uvicorn's own drain after ours; in-flight requests are already done or past --shutdown-timeout by then.
UVICORN_GRACEFUL_TIMEOUT_S = 3


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the OpenAI-compatible server (vLLM's flags)",
        description="Serve MODEL (default: the bundled SmolLM2-135M-Instruct) over the OpenAI API.",
    )
    parser.add_argument(
        "model_tag", nargs="?", default=None, metavar="MODEL", help="model folder or GGUF file"
    )
    parser.add_argument(
        "--config",
        dest="config_file",
        default=None,
        metavar="YAML",
        help="vLLM's config file: a YAML mapping of these flags' long names to values (model: ..., port: ...); "
        "flags on the command line win (cli/config_file.py).",
    )
    add_config_args(parser, ModelConfig)
    add_config_args(parser, CacheConfig)
    add_config_args(parser, SchedulerConfig)
    add_config_args(parser, ParallelConfig)
    add_config_args(parser, LoRAConfig)
    add_config_args(parser, ServerConfig, skip=CORS_LISTS)
    for name in CORS_LISTS:  # vLLM's syntax: one JSON list, e.g. --allowed-origins '["https://a.example"]'
        default = getattr(ServerConfig(), name)
        parser.add_argument(
            "--" + name.replace("_", "-"), dest=name, type=parse_json_string_list, default=default, metavar="JSON",
            help=field_docs(ServerConfig)[name],
        )  # fmt: skip
    parser.add_argument(
        "--structured-outputs-config",
        dest="structured_outputs_config",
        type=_structured_outputs_config,
        default=StructuredOutputsConfig(),
        metavar="JSON",
        help=StructuredOutputsConfig.__doc__ + " Keys: backend (auto, guidance), disable_any_whitespace, "
        "compile_timeout_s.",
    )
    parser.add_argument(
        "--speculative-config",
        dest="speculative_config",
        type=_speculative_config,
        default=None,
        metavar="JSON",
        help=SpeculativeConfig.__doc__ + " Keys: method (ngram), num_speculative_tokens, prompt_lookup_max, "
        "prompt_lookup_min, disable_by_batch_size.",
    )
    parser.add_argument(
        "--limit-mm-per-prompt",
        dest="limit_mm_per_prompt",
        type=_text_only_limits,
        default=None,
        metavar="JSON",
        help="vLLM's inputs per modality and prompt. pagedserve serves text only (a multimodal checkpoint such as "
        "Gemma 3 4B-27B serves its language model), so only zeros are accepted: '{\"image\": 0}'.",
    )
    unsupported = parser.add_argument_group("vLLM flags not supported (each fails with the reason)")
    for flag, reason in UNSUPPORTED_FLAGS.items():
        unsupported.add_argument(
            flag,
            dest=_unsupported_dest(flag),
            nargs="?",
            const=True,
            default=None,
            metavar="VALUE",
            help=reason,
        )
    parser.set_defaults(func=run)


def _unsupported_dest(flag: str) -> str:
    return "unsupported_" + flag[2:].replace("-", "_")


def _text_only_limits(text: str) -> dict[str, Any]:
    """--limit-mm-per-prompt's JSON, accepted where it asks for text only (every modality 0, or {"count": 0})."""
    try:
        limits = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None
    if not isinstance(limits, dict):
        raise argparse.ArgumentTypeError('a JSON object, e.g. {"image": 0}')
    for modality, limit in limits.items():
        count = limit.get("count") if isinstance(limit, dict) else limit
        if count != 0:
            raise argparse.ArgumentTypeError(
                f"{modality}: {json.dumps(limit)}: pagedserve serves text only (images, audio and video are not "
                "supported), so each modality's limit must be 0"
            )
    return limits


def _structured_outputs_config(text: str) -> StructuredOutputsConfig:
    try:
        return StructuredOutputsConfig.from_json(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _speculative_config(text: str) -> SpeculativeConfig:
    try:
        return SpeculativeConfig.from_json(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _fail(message: str) -> int:
    print(f"pagedserve serve: error: {message}", file=sys.stderr)
    return 2


def _check_supported(args: argparse.Namespace) -> str | None:
    for flag, reason in UNSUPPORTED_FLAGS.items():
        if getattr(args, _unsupported_dest(flag), None) is not None:
            return f"{flag} is not supported: {reason}."
    if args.pipeline_parallel_size != 1:
        return "--pipeline-parallel-size other than 1 is not supported; scale out with more replicas."
    if args.quantization not in (None, *QUANTIZATION_CHOICES):
        return (
            f"--quantization {args.quantization} is not supported yet; supported: gguf (a .gguf file's blocks "
            "kept), compressed-tensors (W4A16, W8A16, W8A8, FP8 checkpoints), awq and gptq (AutoAWQ GEMM and GPTQ "
            "checkpoints), fp8 (fp8 checkpoints, or a float one quantized at load), none (weights dequantized at "
            "load)."
        )
    if args.enable_log_requests and args.disable_log_requests:
        return "--enable-log-requests and --disable-log-requests contradict each other."
    if args.max_num_queued_reqs < 1:
        return "--max-num-queued-reqs must be >= 1."
    if args.tool_call_parser is not None:
        from pagedserve.server.tool_parsers import TOOL_PARSERS

        if args.tool_call_parser not in TOOL_PARSERS:
            return f"--tool-call-parser must be one of: {', '.join(sorted(TOOL_PARSERS))}."
    if args.enable_auto_tool_choice and args.tool_call_parser is None:
        return "--enable-auto-tool-choice needs --tool-call-parser (hermes, llama3_json or pythonic)."
    if args.max_request_body_bytes < 1:
        return "--max-request-body-bytes must be >= 1."
    if args.shutdown_timeout < 0:
        return "--shutdown-timeout must be >= 0."
    if args.ready_stall_seconds < 1:  # the idle engine refreshes its progress time 4 times a second
        return "--ready-stall-seconds must be >= 1."
    if not 1 <= args.max_n:
        return "--max-n must be >= 1."
    if args.lora_modules and not args.enable_lora:
        return "--lora-modules needs --enable-lora."
    try:
        for text in args.lora_modules or []:
            LoRAModule.parse(text)
        config_from_args(LoRAConfig, args).validate()
    except ValueError as error:
        return f"{error}."
    return None


def run(args: argparse.Namespace) -> int:
    problem = _check_supported(args)
    if problem:
        return _fail(problem)
    if args.model_tag is not None:
        args.model = args.model_tag
    if args.api_key is None:
        args.api_key = next((os.environ[v] for v in API_KEY_ENV_VARS if os.environ.get(v)), None)
    if args.served_model_name is None:
        from pagedserve.models.bundled import BUNDLED_MODEL_NAME

        args.served_model_name = [args.model or BUNDLED_MODEL_NAME]
    engine_config = EngineConfig(
        model=config_from_args(ModelConfig, args),
        cache=config_from_args(CacheConfig, args),
        scheduler=config_from_args(SchedulerConfig, args),
        parallel=config_from_args(ParallelConfig, args),
        lora=config_from_args(LoRAConfig, args),
        structured_outputs=args.structured_outputs_config,
        speculative=args.speculative_config,
    )
    server_config: ServerConfig = config_from_args(ServerConfig, args)
    if server_config.reasoning_parser:  # the grammar of a constrained answer waits for the reasoning to end
        engine_config.structured_outputs = dataclasses.replace(
            engine_config.structured_outputs, reasoning_parser=server_config.reasoning_parser
        )
    try:
        engine_config.validate()
        in_process = not envs.engine_core_process()
        configure_logging()
    except ValueError as error:
        return _fail(str(error))
    if engine_config.parallel.headless or engine_config.parallel.node_rank > 0:
        from pagedserve.worker.device import resolve_device
        from pagedserve.worker.multiproc_executor import run_headless_node

        return run_headless_node(engine_config.parallel, resolve_device(engine_config.model.device).type)
    return asyncio.run(_serve(engine_config, server_config, in_process))


async def _serve(engine_config: EngineConfig, server_config: ServerConfig, in_process: bool) -> int:
    import uvicorn

    from pagedserve.engine.protocol import EngineClient
    from pagedserve.server.app import create_app

    def build_engine() -> EngineClient:
        # A step wedged for twice the readiness window is declared dead: fail its clients, exit, restart.
        stall_timeout = 2 * server_config.ready_stall_seconds
        if in_process:
            from pagedserve.engine.async_engine import AsyncEngine

            return AsyncEngine.from_config(engine_config, stall_timeout=stall_timeout)
        from pagedserve.engine.core_client import EngineCoreClient

        return EngineCoreClient(engine_config, stall_timeout=stall_timeout)

    app = create_app(server_config, build_engine, list(server_config.served_model_name or []))
    state = app.state.pagedserve
    config = uvicorn.Config(
        app,
        host=server_config.host,
        port=server_config.port,
        log_level=server_config.uvicorn_log_level,
        access_log=not server_config.disable_uvicorn_access_log,
        root_path=server_config.root_path or "",
        timeout_graceful_shutdown=UVICORN_GRACEFUL_TIMEOUT_S,
        lifespan="on",
    )
    loop = asyncio.get_running_loop()

    class DrainingServer(uvicorn.Server):
        """uvicorn, except that the first SIGTERM/SIGINT drains instead of closing the listening socket."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if state.draining or state.exit_requested.is_set():
                self.should_exit = True
                if sig == signal.SIGINT:
                    self.force_exit = True
                return
            logging.getLogger("pagedserve").info("Received %s: draining", signal.Signals(sig).name)
            loop.call_soon_threadsafe(lambda: loop.create_task(state.drain()))

    server = DrainingServer(config)

    async def stop_when_requested() -> None:
        await state.exit_requested.wait()
        server.should_exit = True

    stopper = asyncio.create_task(stop_when_requested())
    try:
        await server.serve()
    finally:
        stopper.cancel()
    if not server.started:
        return 1
    return state.exit_code
