"""GET /v1/models: the served model names (benchmark clients read data[0].id and data[0].root)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request

from pagedserve.server.request_context import server_state

router = APIRouter()
_STARTED = int(time.time())


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    state = server_state(request)
    engine = state.require_engine()
    data = [
        {
            "id": name,
            "object": "model",
            "created": _STARTED,
            "owned_by": "pagedserve",
            "root": engine.info.model_name,
            "parent": None,
            "max_model_len": engine.info.max_model_len,
            "permission": [],
        }
        for name in state.served_model_names
    ]
    data += [
        {
            "id": lora.lora_name,
            "object": "model",
            "created": _STARTED,
            "owned_by": "pagedserve",
            "root": lora.lora_path,
            "parent": lora.base_model_name or state.model_name,
            "max_model_len": None,
            "permission": [],
        }
        for lora in state.lora_adapters.by_name.values()
    ]
    return {"object": "list", "data": data}
