"""llm-compressor in a virtual environment of its own: llmcompressor 0.14 pins transformers <= 5.17 and
compressed-tensors == 0.19, older than the project's, so it cannot share `.venv`. Built once (about 3 minutes, from
the package index) in the user's cache folder, shared by every checkout and CI clone on the machine; torch is
installed first from the same pin as the project's, so pip never pulls a CUDA build."""

from __future__ import annotations

import pathlib
import subprocess
import sys

from pagedserve import envs

LLMCOMPRESSOR = "llmcompressor==0.14.0.1"
TORCH = "torch==2.13.0"


def llmcompressor_python() -> pathlib.Path:
    """The venv's python, creating the venv when it is missing or half-built (a marker file is written last)."""
    root = pathlib.Path(envs.cache_dir()) / "llmcompressor-venv"
    python = root / "bin" / "python"
    done = root / f".installed-{LLMCOMPRESSOR}"
    if not done.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(root)], check=True)
        for requirement in (TORCH, LLMCOMPRESSOR):
            subprocess.run(
                [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", requirement],
                check=True,
                timeout=1800,
            )
        done.touch()
    return python
