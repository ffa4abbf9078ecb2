"""Builds the C kernels in csrc/ into one shared library on first use and loads it through ctypes.

Compiled with the system C compiler into a cache folder keyed by the sources, flags and CPU, so no build step is
needed at install time; if no compiler works, `load()` returns None and callers use their PyTorch path (logged
once). `PAGEDSERVE_DISABLE_C_KERNEL=1` forces that path.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

logger = logging.getLogger("pagedserve")

DISABLE_ENV = "PAGEDSERVE_DISABLE_C_KERNEL"
_CSRC = Path(__file__).parent / "csrc"
_SOURCES = sorted(_CSRC.glob("*.c"))
# Compiled with -ffast-math (vectorised reductions; expf from glibc's vector library, which gcc only calls under
# finite-math, so the kernels use -FLT_MAX, never infinities, as sentinels) but linked without it: linking a
# shared library with -ffast-math pulls in crtfastmath.o, which turns on flush-to-zero for the whole process.
_COMPILE_FLAGS = ["-O3", "-march=native", "-fopenmp", "-ffast-math", "-fPIC"]
_LINK_FLAGS = ["-shared", "-fopenmp"]
_P, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
# C signature of every exported function (all return int: 0 on success).
SIGNATURES: dict[str, list] = {
    # q, k_cache, v_cache, out, block_tables, seq_lens, batch, q_heads, kv_heads, head_dim, block_size,
    # max_blocks, q_row_stride, scale, dtype, threads
    "paged_decode_attention": [_P] * 6 + [_I] * 7 + [_F, ctypes.c_int, ctypes.c_int],
    # x, residual (or NULL), weight, out, rows, hidden, eps, dtype, threads
    "rms_norm": [_P] * 4 + [_I] * 2 + [_F, ctypes.c_int, ctypes.c_int],
    # x [rows, 2 * inter], out [rows, inter], rows, inter, dtype, threads
    "silu_and_mul": [_P] * 2 + [_I] * 2 + [ctypes.c_int, ctypes.c_int],
    # x, positions, cos_cache, sin_cache, rows, heads, head_dim, row_stride, max_position, dtype, threads
    "rotary_neox": [_P] * 4 + [_I] * 5 + [ctypes.c_int, ctypes.c_int],
    # logits [rows, n] bfloat16, out [rows] int64, rows, n, threads
    "argmax_bf16": [_P] * 2 + [_I] * 2 + [ctypes.c_int],
    # x [rows, k], w [n, k], bias (or NULL), out [rows, n], rows, n, k, threads (bfloat16 only)
    "gemv_bf16": [_P] * 4 + [_I] * 3 + [ctypes.c_int],
    # key, value, k_cache, v_cache, slot_mapping, rows, kv_heads, head_dim, block_size, row_stride, num_slots,
    # dtype
    "write_kv_cache": [_P] * 5 + [_I] * 6 + [ctypes.c_int],
}
_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_failed = False


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
    return ("".join(sorted(set(lines))) + platform.machine()).encode()


def _build() -> ctypes.CDLL:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler (cc/gcc) found")
    digest = hashlib.sha256()
    for source in sorted(_CSRC.glob("*.[ch]")):
        digest.update(source.name.encode() + source.read_bytes())
    digest.update(" ".join(_COMPILE_FLAGS + _LINK_FLAGS).encode() + compiler.encode() + _cpu_signature())
    target = _cache_dir() / f"pagedserve_ops_{digest.hexdigest()[:16]}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            built = Path(tmp) / target.name
            objects = [Path(tmp) / (source.stem + ".o") for source in _SOURCES]
            for source, obj in zip(_SOURCES, objects):
                command = [compiler, *_COMPILE_FLAGS, "-c", str(source), "-o", str(obj)]
                subprocess.run(command, check=True, capture_output=True, timeout=120)
            command = [compiler, *_LINK_FLAGS, *map(str, objects), "-o", str(built), "-lm"]
            subprocess.run(command, check=True, capture_output=True, timeout=120)
            os.replace(built, target)  # atomic: concurrent processes never load a half-written file
    library = ctypes.CDLL(str(target))
    for name, argtypes in SIGNATURES.items():
        function = getattr(library, name)
        function.restype = ctypes.c_int
        function.argtypes = argtypes
    return library


def disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "") not in ("", "0")


def load() -> ctypes.CDLL | None:
    """The compiled kernels, or None when they cannot be built here or are disabled (then use PyTorch)."""
    global _library, _failed
    if _library is not None or _failed:
        return _library
    with _lock:
        if _library is None and not _failed:
            if disabled():
                _failed = True
                logger.info("C kernels disabled by %s; using PyTorch", DISABLE_ENV)
                return None
            try:
                _library = _build()
            except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as error:
                _failed = True
                detail = getattr(error, "stderr", b"") or b""
                logger.warning("C kernels unavailable (%s %s); using PyTorch", error, detail[:200])
    return _library
