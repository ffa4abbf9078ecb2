"""The LoRA adapters a server serves, by the name a request gives as its `model` (vLLM's --lora-modules).

Each adapter gets a new id when it is added, never reused: a name unloaded and loaded again from another folder
shares no prefix-cache block with the old one (the id is part of the block hashes).
"""

from __future__ import annotations

import itertools

from pagedserve.engine.protocol import EngineClient
from pagedserve.errors import InvalidRequestError
from pagedserve.lora.request import LoRAModule, LoRARequest
from pagedserve.server.errors import APIError


class LoRAAdapters:
    """The served adapters by name."""

    def __init__(self, served_model_names: list[str]) -> None:
        self.served_model_names = served_model_names
        self.by_name: dict[str, LoRARequest] = {}
        self._ids = itertools.count(1)

    def add(self, engine: EngineClient, module: LoRAModule) -> LoRARequest:
        """Checks the adapter's folder against the model (blocking: reads two small files); APIError 400."""
        if module.name in self.by_name:
            raise APIError(
                400, f"The lora adapter '{module.name}' has already been loaded.", param="lora_name"
            )
        if module.name in self.served_model_names:
            raise APIError(400, f"'{module.name}' is the name of the served model.", param="lora_name")
        lora = LoRARequest(module.name, next(self._ids), module.path, module.base_model_name)
        try:
            engine.check_lora_adapter(lora)
        except InvalidRequestError as error:
            raise APIError(400, str(error), param="lora_path") from None
        self.by_name[module.name] = lora
        return lora

    def remove(self, name: str) -> None:
        if self.by_name.pop(name, None) is None:
            raise APIError(404, f"The lora adapter '{name}' cannot be found.", param="lora_name")
