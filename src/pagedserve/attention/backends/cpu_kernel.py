"""Builds and calls the C decode-attention kernel (csrc/paged_decode.c) through ctypes.

Compiled on first use with the system C compiler into a cache folder keyed by the source and flags, so no build
step is needed at install time; if no compiler works, callers fall back to the pure-PyTorch path (logged once).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

logger = logging.getLogger("pagedserve")

_SOURCE = Path(__file__).parent / "csrc" / "paged_decode.c"
# Compiled with -ffast-math (vectorised expf and reductions) but linked without it: linking a shared library
# with -ffast-math pulls in crtfastmath.o, which turns on flush-to-zero for the whole process.
_COMPILE_FLAGS = ["-O3", "-march=native", "-fopenmp", "-ffast-math", "-fno-finite-math-only", "-fPIC"]
_LINK_FLAGS = ["-shared", "-fopenmp"]
_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_failed = False
_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1}


def _cache_dir() -> Path:
    base = os.environ.get("PAGEDSERVE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "pagedserve"
    )
    return Path(base) / "kernels"


def _cpu_signature() -> bytes:
    """The CPU model and feature flags: a -march=native build must never be loaded on another kind of CPU (a
    cache folder on a volume shared by different nodes would otherwise crash the process with SIGILL)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            lines = [
                line for line in cpuinfo if line.startswith(("model name", "flags", "Features", "CPU part"))
            ]
    except OSError:
        lines = []
    import platform

    return ("".join(sorted(set(lines))) + platform.machine()).encode()


def _build() -> ctypes.CDLL:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler (cc/gcc) found")
    source = _SOURCE.read_bytes()
    flags = " ".join(_COMPILE_FLAGS + _LINK_FLAGS)
    key = hashlib.sha256(source + flags.encode() + compiler.encode() + _cpu_signature()).hexdigest()[:16]
    target = _cache_dir() / f"paged_decode_{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            built = Path(tmp) / target.name
            obj = Path(tmp) / "paged_decode.o"
            for command in (
                [compiler, *_COMPILE_FLAGS, "-c", str(_SOURCE), "-o", str(obj)],
                [compiler, *_LINK_FLAGS, str(obj), "-o", str(built), "-lm"],
            ):
                subprocess.run(command, check=True, capture_output=True, timeout=120)
            os.replace(built, target)  # atomic: concurrent processes never load a half-written file
    library = ctypes.CDLL(str(target))
    function = library.paged_decode_attention
    function.restype = ctypes.c_int
    function.argtypes = (
        [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 6 + [ctypes.c_float, ctypes.c_int, ctypes.c_int]
    )
    return library


def load() -> ctypes.CDLL | None:
    """The compiled kernel, or None when it cannot be built here (then use the PyTorch path)."""
    global _library, _failed
    if _library is not None or _failed:
        return _library
    with _lock:
        if _library is None and not _failed:
            try:
                _library = _build()
            except (OSError, RuntimeError, subprocess.SubprocessError) as error:
                _failed = True
                detail = getattr(error, "stderr", b"") or b""
                logger.warning(
                    "C decode-attention kernel unavailable (%s %s); using PyTorch", error, detail[:200]
                )
    return _library


def supports(dtype: torch.dtype) -> bool:
    return dtype in _DTYPE_CODES


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    library = load()
    assert library is not None and q.is_contiguous() and k_cache.is_contiguous() and v_cache.is_contiguous()
    batch, num_q_heads, head_dim = q.shape
    _, num_kv_heads, block_size, _ = v_cache.shape
    tables = block_tables.contiguous()
    lens = seq_lens.contiguous()
    out = torch.empty_like(q)
    failed = library.paged_decode_attention(
        q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), out.data_ptr(), tables.data_ptr(), lens.data_ptr(),
        batch, num_q_heads, num_kv_heads, head_dim, block_size, tables.shape[1], scale,
        _DTYPE_CODES[q.dtype], torch.get_num_threads(),
    )  # fmt: skip
    if failed:
        raise MemoryError("decode attention kernel could not allocate its scratch memory")
    return out
