"""Probes and info: /health and /ping (liveness, vLLM's), /ready (readiness, ours), /version, /load, /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pagedserve import __version__
from pagedserve.cpu_info import cpu_info
from pagedserve.server.errors import error_response
from pagedserve.server.request_context import server_state

router = APIRouter()


def _liveness(request: Request) -> Response:
    if server_state(request).alive:
        return Response(status_code=200)
    return error_response(503, "The engine stopped.", code="engine_dead")


@router.get("/health")
async def health(request: Request) -> Response:
    return _liveness(request)


@router.get("/ping")
async def ping(request: Request) -> Response:
    return _liveness(request)


@router.get("/ready")
async def ready(request: Request) -> Response:
    is_ready, reason = server_state(request).readiness()
    if is_ready:
        return JSONResponse({"status": "ready"})
    return error_response(503, f"Not ready: {reason}.", code="not_ready", headers={"Retry-After": "1"})


@router.get("/version")
async def version(request: Request) -> dict[str, object]:
    """vLLM's {"version"}, plus the CPU this replica runs on and the kernels it chose (pods differ by node)."""
    cpu = cpu_info().as_dict()
    engine = server_state(request).engine
    if engine is not None:
        cpu["kernel_isa"] = engine.info.cpu_kernels or None
    return {"version": __version__, "cpu": cpu}


@router.get("/load")
async def load(request: Request) -> dict[str, int]:
    """vLLM's {"server_load"}: engine requests in flight, with --enable-server-load-tracking (0 without)."""
    state = server_state(request)
    return {"server_load": state.in_flight if state.config.enable_server_load_tracking else 0}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    registry = server_state(request).metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
