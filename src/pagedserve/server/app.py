"""The FastAPI app: routes, middleware, error handlers, and the start-up sequence (load → warm up → ready).

The HTTP server answers probes while the model loads in a worker thread: /health is 200 (alive), /ready is 503
until the model is loaded and one tiny generation went through, so Kubernetes routes no traffic to a cold pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from pagedserve import __version__, envs
from pagedserve.engine.protocol import EngineClient
from pagedserve.lora.request import LoRAModule
from pagedserve.pooling_params import PoolingParams
from pagedserve.sampling_params import SamplingParams
from pagedserve.server import (
    chat,
    classify,
    completions,
    embeddings,
    health,
    lora_adapters,
    models,
    responses,
    score,
    tokenize,
)
from pagedserve.server.auth import APIKeyMiddleware, open_paths
from pagedserve.server.body_limit import BodyLimitMiddleware
from pagedserve.server.errors import APIError, install_error_handlers
from pagedserve.server.http_metrics import HTTPMetricsMiddleware
from pagedserve.server.request_id import RequestIdMiddleware
from pagedserve.server.state import ServerState
from pagedserve.server.stats_logger import StatsLogger
from pagedserve.server_config import ServerConfig

logger = logging.getLogger("pagedserve")

# Builds the engine (loads the model: blocking, seconds); called in a worker thread at start-up.
EngineFactory = Callable[[], EngineClient]
WARMUP_PROMPT = "Hello"
_DEATH_POLL_S = 0.2


async def _warm_up(engine: EngineClient) -> None:
    """One tiny generation (an embedding under --runner pooling), so the first real request does not pay for lazy
    initialisation."""
    prompt = await asyncio.to_thread(engine.tokenizer.encode, WARMUP_PROMPT)
    pooling = PoolingParams() if engine.info.runner == "pooling" else None
    params = SamplingParams(max_tokens=1, temperature=0.0, pooling=pooling)
    async for _ in engine.generate({"prompt_token_ids": prompt}, params, "pagedserve-warmup"):
        pass


_T = TypeVar("_T")


async def _in_passing_thread(function: Callable[[], _T]) -> _T:
    """Run `function` in a thread that ends right after it.

    Loading weights runs torch operators, and each thread that does gets its own OpenMP thread pool for good. Once
    the pools' threads outnumber the cores, libgomp stops spinning in all of them, and every parallel region of
    the engine then pays a sleep/wake-up: measured, ~15 % of decode throughput. So the engine thread must be the
    only thread with a pool; the loading thread's pool goes away with the thread."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pagedserve-load")
    try:
        return await asyncio.get_running_loop().run_in_executor(executor, function)
    finally:
        executor.shutdown(wait=True)  # the work is done: the thread exits at once


async def _start_engine(state: ServerState, factory: EngineFactory, stats_logger: StatsLogger) -> None:
    try:
        engine = await _in_passing_thread(factory)
        await engine.start()
        state.engine = engine
        state.metrics.bind_engine(engine.info)
        await _add_lora_modules(state, engine)
        await _warm_up(engine)
        # Listeners join after the warm-up, so counters only count clients' requests.
        engine.add_stats_listener(state.metrics.observe)
        engine.add_stats_listener(stats_logger.observe)
        state.warmed = True
        info = engine.info
        logger.info(
            "Ready: model %s (max_model_len=%d, %d KV blocks of %d tokens, %s on %s)",
            state.model_name, info.max_model_len, info.num_kv_blocks, info.block_size, info.dtype, info.device,
        )  # fmt: skip
    except Exception as error:  # noqa: BLE001 - any start-up failure: report it and exit non-zero
        logger.error("Engine start-up failed: %s: %s", type(error).__name__, error)
        state.load_error = error
        state.request_exit(1)


async def _add_lora_modules(state: ServerState, engine: EngineClient) -> None:
    """--lora-modules: each adapter checked against the model before the server turns ready."""
    for text in state.config.lora_modules or []:
        module = LoRAModule.parse(text)
        try:
            await state.off_loop(state.lora_adapters.add, engine, module)
        except APIError as error:
            raise ValueError(f"--lora-modules {module.name}: {error.message}") from None
        logger.info("LoRA adapter %r served from %s", module.name, module.path)


async def _watch_engine(state: ServerState) -> None:
    """Turn an engine loop death into liveness 503 and a non-zero exit."""
    while True:
        await asyncio.sleep(_DEATH_POLL_S)
        engine = state.engine
        if engine is not None and not engine.is_running:
            state.on_engine_dead(getattr(engine, "dead_error", None) or RuntimeError("engine stopped"))
            return


def route_table(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every route the app serves, included routers flattened (for tests and docs)."""
    table: list[tuple[str, str]] = []

    def walk(routes: list[Any], prefix: str) -> None:
        for route in routes:
            included = getattr(route, "original_router", None)
            if included is not None:  # FastAPI wraps include_router() results
                walk(included.routes, prefix + getattr(route.include_context, "prefix", ""))
            else:
                table.extend((m, prefix + route.path) for m in sorted(route.methods or ()) if m != "HEAD")

    walk(list(app.routes), "")
    return table


def create_app(config: ServerConfig, engine_factory: EngineFactory, served_model_names: list[str]) -> FastAPI:
    state = ServerState(config, served_model_names)
    stats_logger = StatsLogger()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tasks = [
            asyncio.create_task(_start_engine(state, engine_factory, stats_logger)),
            asyncio.create_task(_watch_engine(state)),
        ]
        if not config.disable_log_stats:
            tasks.append(asyncio.create_task(stats_logger.run()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if state.engine is not None:
                await state.engine.shutdown()
            state.tokenizer_pool.shutdown(wait=False, cancel_futures=True)

    docs: dict[str, Any] = (
        {"docs_url": None, "redoc_url": None, "openapi_url": None} if config.disable_fastapi_docs else {}
    )
    app = FastAPI(title="pagedserve", version=__version__, lifespan=lifespan, **docs)
    app.state.pagedserve = state
    for module in (chat, completions, embeddings, score, classify, responses, models, tokenize, health):
        app.include_router(module.router)
    if envs.allow_runtime_lora_updating():
        app.include_router(lora_adapters.router)
    install_error_handlers(app)
    # add_middleware wraps: the last added runs first. Order of execution: request id → HTTP metrics →
    # auth → body limit → routes.
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_request_body_bytes)
    if config.api_key:
        app.add_middleware(
            APIKeyMiddleware, api_key=config.api_key, open_paths=open_paths(config.metrics_require_auth)
        )
    app.add_middleware(HTTPMetricsMiddleware, metrics=state.metrics)
    app.add_middleware(RequestIdMiddleware)
    # Outermost, as vLLM's: a browser's preflight (OPTIONS, no credentials) is answered before the API key check.
    app.add_middleware(
        CORSMiddleware,
        allow_origins=config.allowed_origins,
        allow_methods=config.allowed_methods,
        allow_headers=config.allowed_headers,
        allow_credentials=config.allow_credentials,
    )
    return app
