"""Vision-language checkpoints served text-only (Gemma 3 4B-27B, Mistral Small 3.1 / 3.2): their language model's
tensors under the names the text model loads, the vision tower's and projector's skipped. transformers 4 saved them
as `language_model.model.*` / `language_model.lm_head.*`, transformers 5 as `model.language_model.*` / `lm_head.*`;
both are read. Requests with images are refused by the chat route (text only)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

_LANGUAGE_PREFIXES = {"language_model.model.": "model.", "model.language_model.": "model."}
_VISION_PREFIXES = (
    "vision_tower.",
    "multi_modal_projector.",
    "model.vision_tower.",
    "model.multi_modal_projector.",
)


def language_model_weights(weights: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
    """The language model's (name, tensor) pairs, renamed as the text model's; the vision parts dropped."""
    for name, tensor in weights:
        if name.startswith(_VISION_PREFIXES):
            continue
        for prefix, ours in _LANGUAGE_PREFIXES.items():
            if name.startswith(prefix):
                name = ours + name.removeprefix(prefix)
                break
        if name == "language_model.lm_head.weight":
            name = "lm_head.weight"
        yield name, tensor
