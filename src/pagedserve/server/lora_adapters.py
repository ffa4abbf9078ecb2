"""vLLM's endpoints to add and drop LoRA adapters at run time: POST /v1/load_lora_adapter and
/v1/unload_lora_adapter, served only with VLLM_ALLOW_RUNTIME_LORA_UPDATING set (as vLLM's). The adapters themselves:
server/lora_registry.py."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr
from starlette.responses import PlainTextResponse

from pagedserve.lora.request import LoRAModule
from pagedserve.server.errors import APIError
from pagedserve.server.request_context import server_state


class LoadLoRAAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    lora_name: StrictStr
    lora_path: StrictStr


class UnloadLoRAAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    lora_name: StrictStr
    lora_int_id: StrictInt | None = None


router = APIRouter()


@router.post("/v1/load_lora_adapter")
async def load_lora_adapter(body: LoadLoRAAdapterRequest, request: Request) -> PlainTextResponse:
    state = server_state(request)
    engine = state.require_engine()
    if not body.lora_name or not body.lora_path:
        raise APIError(400, "Both 'lora_name' and 'lora_path' must be provided.", param="lora_name")
    module = LoRAModule(body.lora_name, body.lora_path)
    await state.off_loop(state.lora_adapters.add, engine, module)
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")


@router.post("/v1/unload_lora_adapter")
async def unload_lora_adapter(body: UnloadLoRAAdapterRequest, request: Request) -> PlainTextResponse:
    state = server_state(request)
    state.lora_adapters.remove(body.lora_name)
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")
