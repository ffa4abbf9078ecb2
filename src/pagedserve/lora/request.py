"""A request's LoRA adapter, as plain data (vLLM's `LoRARequest`): it travels with the request to the scheduler and
the workers, which load the adapter's tensors from `lora_path` themselves."""

from __future__ import annotations

import json
from dataclasses import dataclass

import msgspec


class LoRARequest(msgspec.Struct, frozen=True):
    lora_name: str
    """What the API calls it (the `model` field of a request)."""

    lora_int_id: int
    """> 0, unique per loaded adapter: the scheduler's and workers' key, and part of the prefix cache's hash (a new
    id after a reload, so no block computed with the old weights is ever reused)."""

    lora_path: str
    """A PEFT adapter folder: adapter_config.json and adapter_model.safetensors."""

    base_model_name: str | None = None
    """The served model it belongs to (`parent` in /v1/models); None: the first served name."""

    def __post_init__(self) -> None:
        if self.lora_int_id < 1:
            raise ValueError(f"lora_int_id must be >= 1, got {self.lora_int_id}")
        if not self.lora_name:
            raise ValueError("lora_name must be a non-empty string")


@dataclass(frozen=True)
class LoRAModule:
    """One --lora-modules value: `name=path`, or JSON {"name", "path", "base_model_name"} (vLLM's two forms)."""

    name: str
    path: str
    base_model_name: str | None = None

    @classmethod
    def parse(cls, text: str) -> LoRAModule:
        """ValueError saying what is wrong."""
        text = text.strip()
        if text.startswith("{"):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as error:
                raise ValueError(f"--lora-modules {text!r} is not valid JSON: {error}") from None
            unknown = set(value) - {"name", "path", "base_model_name"} if isinstance(value, dict) else set()
            if not isinstance(value, dict) or unknown:
                raise ValueError(
                    f"--lora-modules {text!r}: a JSON object with name, path and optionally base_model_name "
                    f"is expected{f' (unknown keys: {sorted(unknown)})' if unknown else ''}"
                )
            name, path, base = value.get("name"), value.get("path"), value.get("base_model_name")
        else:
            name, _, path = text.partition("=")
            base = None
        if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
            raise ValueError(
                f"--lora-modules {text!r}: expected name=path or a JSON object with name and path"
            )
        if base is not None and not isinstance(base, str):
            raise ValueError(f"--lora-modules {text!r}: base_model_name must be a string")
        return cls(name, path, base)
