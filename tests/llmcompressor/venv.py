"""llm-compressor in a virtual environment of its own (tests/tool_venv.py): llmcompressor 0.14 pins
transformers <= 5.17 and compressed-tensors == 0.19, older than the project's, so it cannot share `.venv`. Built
once (about 3 minutes, from the package index) in ~/.cache/pagedserve/llmcompressor-venv; torch is installed first
from the same pin as the project's, so pip never pulls a CUDA build."""

from __future__ import annotations

import pathlib

from tests.tool_venv import tool_venv

LLMCOMPRESSOR = "llmcompressor==0.14.0.1"
TORCH = "torch==2.13.0"


def llmcompressor_python() -> pathlib.Path:
    """The venv's python, creating the venv when it is missing or half-built."""
    return tool_venv("llmcompressor", TORCH, LLMCOMPRESSOR) / "python"
