"""Virtual environments of their own for heavy PyPI tools that tests run as subprocesses (llm-compressor, the
LiteLLM proxy): their dependency pins must not touch `.venv`. Each is built once, from the package index, in the
user's cache folder (`envs.cache_dir()`, ~/.cache/pagedserve/NAME-venv), shared by every checkout and CI clone on
the machine, and rebuilt only when its key requirement changes: a marker file named after it is written last, so a
half-built venv (an interrupted install) is rebuilt from scratch on the next run."""

from __future__ import annotations

import pathlib
import subprocess
import sys

from pagedserve import envs


def tool_venv(name: str, *requirements: str, timeout: float = 1800) -> pathlib.Path:
    """The bin/ folder of the venv `NAME-venv`, creating it when missing or half-built. Each requirement is one
    pip install, in order (torch first, from the project's pin, keeps pip from pulling a CUDA build); the last
    one names the marker."""
    root = pathlib.Path(envs.cache_dir()) / f"{name}-venv"
    bin_dir = root / "bin"
    done = root / f".installed-{requirements[-1]}"
    if not done.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(root)], check=True)
        for requirement in requirements:
            subprocess.run(
                [
                    str(bin_dir / "python"),
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "--disable-pip-version-check",
                    requirement,
                ],
                check=True,
                timeout=timeout,
            )
        done.touch()
    return bin_dir
