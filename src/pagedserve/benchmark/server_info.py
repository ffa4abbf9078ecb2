"""Reading a server's `/v1/models`: vLLM/pagedserve list `data[i].id` and `.root`; llama.cpp adds `models`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class ServedModel:
    id: str  # the name to put in requests' "model"
    root: str | None  # where the weights came from, when the server says (vLLM: the path or repo id)
    max_model_len: int | None
    server_kind: str  # "vllm" (pagedserve answers the same shape), "llama.cpp" or "openai"


def parse_models_response(body: Any) -> ServedModel:
    """The first model a `/v1/models` answer lists; ValueError when it lists none."""
    if not isinstance(body, dict):
        raise ValueError("/v1/models did not answer a JSON object")
    data = body.get("data")
    entries = [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []
    if entries and isinstance(entries[0].get("id"), str):
        first = entries[0]
        owner = str(first.get("owned_by", ""))
        kind = (
            "llama.cpp"
            if owner == "llamacpp" or "models" in body
            else ("vllm" if "root" in first else "openai")
        )
        max_len = first.get("max_model_len")
        meta = first.get("meta")
        if max_len is None and isinstance(meta, dict):
            max_len = meta.get("n_ctx_train")
        return ServedModel(
            id=first["id"],
            root=first.get("root") if isinstance(first.get("root"), str) else None,
            max_model_len=int(max_len) if isinstance(max_len, int) else None,
            server_kind=kind,
        )
    # Older llama.cpp servers list only `models: [{"name", "model", ...}]`.
    models = body.get("models")
    if isinstance(models, list) and models and isinstance(models[0], dict):
        name = models[0].get("model") or models[0].get("name")
        if isinstance(name, str):
            return ServedModel(id=name, root=None, max_model_len=None, server_kind="llama.cpp")
    raise ValueError("/v1/models lists no model")


async def fetch_served_model(
    base_url: str, api_key: str | None = None, timeout_s: float = 30.0
) -> ServedModel:
    import aiohttp

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = base_url.rstrip("/") + "/v1/models"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
            async with session.get(url, headers=headers) as response:
                if response.status != 200:
                    raise ValueError(f"GET {url} answered HTTP {response.status}")
                body = await response.json(content_type=None)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise ValueError(f"cannot reach {url}: {type(exc).__name__}: {exc}") from exc
    return parse_models_response(body)
