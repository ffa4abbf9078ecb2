"""Builds the C kernels in csrc/ into one shared library per ISA level and loads the one this CPU runs.

Each level (cpu_info.ISA_LEVELS: portable, avx2, avx512, avx512_bf16) is compiled with explicit -m flags, never
-march=native, so a build is named by its level and its sources alone: one cache folder (a shared volume, an
image's prebuilt folder) serves every host, and each host loads the highest level it supports. The C sources pick
their intrinsics from the compiler's macros (__AVX512BF16__, __AVX2__, ...), so a level's library holds exactly
that level's paths. Built on first use with the system C compiler into `envs.cache_dir()/kernels` (~1 s a level);
`python -m pagedserve.ops.build --out DIR` builds every level ahead of time into DIR, which PAGEDSERVE_KERNEL_DIR
names at run time (the images: their runtime stage has no compiler). If no compiler works, `load()` returns
None and callers use their PyTorch path (logged once); `PAGEDSERVE_DISABLE_C_KERNEL=1` forces that path and
`PAGEDSERVE_CPU_ISA` lowers the level.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import logging
import os
import platform
import re
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pagedserve import envs
from pagedserve.cpu_info import ISA_LEVELS, cpu_info
from pagedserve.ops import recording as kernel_recording

logger = logging.getLogger("pagedserve")

_CSRC = Path(__file__).parent / "csrc"
_SOURCES = sorted(_CSRC.glob("*.c"))
# Compiled with -ffast-math (vectorised reductions; expf from glibc's vector library, which gcc only calls under
# finite-math, so the kernels use -FLT_MAX, never infinities, as sentinels) but linked without it: linking a
# shared library with -ffast-math pulls in crtfastmath.o, which turns on flush-to-zero for the whole process.
_COMPILE_FLAGS = ["-O3", "-fopenmp", "-ffast-math", "-fPIC"]
_LINK_FLAGS = ["-shared", "-fopenmp"]
_X86_BASE = ["-march=x86-64", "-mtune=generic"]
_AVX2 = ["-mavx2", "-mfma", "-mf16c"]
_AVX512 = [*_AVX2, "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq"]
# Machine flags per level (x86); other architectures build `portable` with the compiler's defaults.
LEVEL_FLAGS: dict[str, list[str]] = {
    "portable": _X86_BASE,
    "avx2": [*_X86_BASE, *_AVX2],
    "avx512": [*_X86_BASE, *_AVX512],
    "avx512_bf16": [*_X86_BASE, *_AVX512, "-mavx512bf16", "-mavx512vnni"],
}
_P, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
# C signature of every exported function (all return int: 0 on success).
SIGNATURES: dict[str, list] = {
    # q, k_cache, v_cache, out, block_tables, seq_lens, batch, q_heads, kv_heads, head_dim, block_size,
    # max_blocks, q_row_stride, scale, dtype, cache_dtype (dtype's code, 2: float8 e4m3, 1: bfloat16 under
    # float32), threads, window, softcap (0: none)
    "paged_decode_attention": [_P] * 6 + [_I] * 7 + [_F, ctypes.c_int, ctypes.c_int, ctypes.c_int, _I, _F],
    # x, residual (or NULL), weight, out, rows, hidden, eps, dtype, threads
    "rms_norm": [_P] * 4 + [_I] * 2 + [_F, ctypes.c_int, ctypes.c_int],
    # x (in place), weight_a, weight_b, rows, row_stride, heads, split (heads before it take weight_a), head_dim,
    # eps, dtype, threads
    "rms_norm_heads": [_P] * 3 + [_I] * 5 + [_F, ctypes.c_int, ctypes.c_int],
    # x [rows, 2 * inter], out [rows, inter], rows, inter, dtype, threads
    "silu_and_mul": [_P] * 2 + [_I] * 2 + [ctypes.c_int, ctypes.c_int],
    "gelu_tanh_and_mul": [_P] * 2 + [_I] * 2 + [ctypes.c_int, ctypes.c_int],
    # x, positions, cos_cache, sin_cache, rows, heads, rot_dim, head_stride, row_stride, max_position, dtype,
    # threads
    "rotary_neox": [_P] * 4 + [_I] * 6 + [ctypes.c_int, ctypes.c_int],
    # logits [rows, n] bfloat16, out [rows] int64, rows, n, threads
    # logits, out, rows, n, dtype (0 float32, 1 bfloat16), threads
    "argmax_rows": [_P] * 2 + [_I] * 2 + [ctypes.c_int, ctypes.c_int],
    # logits [batch, vocab] float32, vocab, rows [num_rows] int64, num_rows, masks [num_rows, words] int32, words
    "apply_token_bitmask_f32": [_P, _I, _P, _I, _P, _I],
    # x [rows, k], w [n, k], bias (or NULL), out [rows, n], rows, n, k, dtype, threads
    "gemv": [_P] * 4 + [_I] * 3 + [ctypes.c_int, ctypes.c_int],
    # x [m, k] float32, w [n, k] bfloat16, bias (or NULL) float32, out [m, n] float32, m, n, k, threads
    "gemm_f32_bf16w": [_P] * 4 + [_I] * 3 + [ctypes.c_int],
    # x [m, k] float32, w GGUF blocks [n, k / 32], GGML type, bias (or NULL) float32, out [m, n] (rows ldo apart),
    # m, n, k, interleave (1 or 4: csrc/gguf.h), ldo, threads
    "gguf_gemm": [_P, _P, ctypes.c_int, _P, _P, _I, _I, _I, ctypes.c_int, _I, ctypes.c_int],
    # x [m, k] bfloat16 (m > 8), then as gguf_gemm
    "gguf_gemm_bf16": [_P, _P, ctypes.c_int, _P, _P, _I, _I, _I, ctypes.c_int, _I, ctypes.c_int],
    # x, router (or NULL), logits (or NULL), out, m, hidden, inter, experts, top_k, renormalize, gate_up addresses,
    # type, interleave, down addresses, type, interleave, shared (or NULL), shared gate weight (or NULL), shared
    # gate logits (or NULL), threads (csrc/gguf_moe.c)
    "gguf_moe": [_P] * 4
    + [_I] * 5
    + [ctypes.c_int, _P, ctypes.c_int, ctypes.c_int, _P, ctypes.c_int, ctypes.c_int]
    + [_P] * 3
    + [ctypes.c_int],
    # w GGUF blocks [n, k / 32], GGML type, out [n, k] float32, n, k, interleave, threads
    "gguf_dequantize": [_P, ctypes.c_int, _P, _I, _I, ctypes.c_int, ctypes.c_int],
    # key, value, k_cache, v_cache, slot_mapping, rows, kv_heads, head_dim, block_size, row_stride, num_slots,
    # dtype, cache_dtype (dtype's code, 2: float8 e4m3, 1: bfloat16 under float32)
    "write_kv_cache": [_P] * 5 + [_I] * 6 + [ctypes.c_int, ctypes.c_int],
    # acc [m, n] int32, x_scale [m], w_scale [n], bias (or NULL) float32, out [m, n], dtype, m, n, threads
    "int8_epilogue": [_P] * 5 + [ctypes.c_int, _I, _I, ctypes.c_int],
    # x [m, k] int8, w [n, k] int8, acc [m, n] int32, m, n, k, threads
    "int8_gemm": [_P] * 3 + [_I] * 3 + [ctypes.c_int],
    # x [m, k] (dtype), q [m, k] int8, scales [m] float32, m, k, per_tensor, dtype, threads, static scale (or 0)
    "int8_quantize": [_P] * 3 + [_I] * 2 + [ctypes.c_int] * 3 + [_F],
    # x [m, k] (x_dtype), w [n, k] float8 e4m3, w_scale [ceil(n / block_n), ceil(k / block_k)] float32, block_n,
    # block_k, bias (or NULL) float32, out [m, n] (out_dtype), m, n, k, x_dtype, out_dtype, threads
    "gemm_e4m3w": [_P] * 3 + [_I] * 2 + [_P] * 2 + [_I] * 3 + [ctypes.c_int] * 3,
    # x [m, k] (dtype), out [m, k] float32, m, k, group (0: the row), per_tensor, dtype, threads, static scale (or 0)
    "fp8_quantize": [_P] * 2 + [_I] * 3 + [ctypes.c_int] * 3 + [_F],
    # w [n, k] float8 e4m3, scale [ceil(n / block_n), ceil(k / block_k)] float32, block_n, block_k, out [n, k]
    # float32, n, k, threads
    "e4m3_dequantize": [_P] * 2 + [_I] * 2 + [_P] + [_I] * 2 + [ctypes.c_int],
    # region, x, n, slot capacity, dtype, rank, world, &seq (int64), timeout_s -> 0, 1 (timeout), 2 (arguments)
    "shm_all_reduce": [_P, _P, _I, _I, ctypes.c_int, ctypes.c_int, ctypes.c_int, _P, _F],
    # region, x, nbytes, out [world, nbytes], slot capacity, rank, world, &seq (int64), timeout_s -> as above
    "shm_all_gather": [_P, _P, _I, _P, _I, ctypes.c_int, ctypes.c_int, _P, _F],
    # area, data, len, capacity (bytes), world, &seq (int64), timeout_s -> 0, 1 (a rank did not ack), 2 (arguments)
    "shm_broadcast_send": [_P, _P, _I, _I, ctypes.c_int, _P, _F],
    # area, out, capacity (bytes), rank, &seq (int64), &len (int64), sender pid -> 0, 1 (the sender is gone)
    "shm_broadcast_recv": [_P, _P, _I, ctypes.c_int, _P, _P, _I],
    # x [rows, in] (dtype), out [rows, out_stride] (dtype, += the delta), a [slots, max_rank, in] float32,
    # bt [slots, max_rank, out] float32, ranks [slots] int32, slot_of_row [rows] int32 (-1: none), rows, in, out,
    # out_stride, max_rank, slots, dtype, threads -> 0, 1 (memory), 2 (arguments)
    "lora_delta": [_P] * 6 + [_I] * 6 + [ctypes.c_int, ctypes.c_int],
    # calls [count] (recording.ReplayCall), count -> 0, or 1 + the index of the first call that failed
    "replay_calls": [_P, _I],
    # () -> 1 where gguf_gemm takes any number of rows (the 256-bit panels, every level with AVX2), else 0
    "gguf_has_panels": [],
    "gguf_has_bf16_panels": [],
    # GGML type -> the most rows gguf_gemm multiplies with a GEMV
    "gguf_gemv_max_rows": [ctypes.c_int],
    # () -> the level the library was compiled for, as an index into ISA_LEVELS
    "compiled_level": [],
}
_lock = threading.Lock()
_libraries: dict[str, ctypes.CDLL | None] = {}  # level -> library, None when it failed to build
_active: ctypes.CDLL | None = None
_active_known = False


def cache_dir() -> Path:
    return Path(envs.cache_dir()) / "kernels"


def level_flags(level: str) -> list[str]:
    if level not in ISA_LEVELS:
        raise ValueError(f"ISA level must be one of {', '.join(ISA_LEVELS)}; got {level!r}")
    if platform.machine() not in ("x86_64", "AMD64"):
        if level != "portable":
            raise ValueError(f"ISA level {level!r} is x86-only; this is {platform.machine()}")
        return []
    return LEVEL_FLAGS[level]


def _compiler() -> str:
    compiler = envs.c_compiler() or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler (cc/gcc) found")
    return compiler


def _flags(level: str) -> list[str]:
    return [*_COMPILE_FLAGS, *level_flags(level), f"-DPAGEDSERVE_LEVEL={ISA_LEVELS.index(level)}"]


def _digest(level: str, compiler: str) -> str:
    """A hash of the sources, the flags, the machine and (for builds on this host) the compiler."""
    digest = hashlib.sha256()
    for source in sorted(_CSRC.glob("*.[ch]")):
        digest.update(source.name.encode() + source.read_bytes())
    digest.update(
        " ".join(_flags(level) + _LINK_FLAGS).encode() + compiler.encode() + platform.machine().encode()
    )
    return digest.hexdigest()[:16]


def library_path(level: str, compiler: str) -> Path:
    """Where `level`'s library lives: named by the level and a hash of sources, flags and compiler."""
    return cache_dir() / f"pagedserve_ops_{level}_{_digest(level, compiler)}.so"


def prebuilt_name(level: str) -> str:
    """A prebuilt library's file name: the compiler is left out of its hash, since the host that loads it may
    have none (an image's runtime stage)."""
    return f"pagedserve_ops_{level}_{_digest(level, '')}.so"


def prebuilt_path(level: str) -> Path | None:
    """`level`'s library in PAGEDSERVE_KERNEL_DIR, when that folder holds one built from these sources."""
    folder = envs.prebuilt_kernel_dir()
    path = Path(folder) / prebuilt_name(level) if folder else None
    return path if path is not None and path.is_file() else None


def _run_compiler(command: list[str]) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=120)


def build_level(level: str) -> Path:
    """Compiles `level`'s library unless the cache folder holds it already; returns its path."""
    compiler = _compiler()
    target = library_path(level, compiler)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        objects = [Path(tmp) / (source.stem + ".o") for source in _SOURCES]
        compiles = [[compiler, *_flags(level), "-c", str(s), "-o", str(o)] for s, o in zip(_SOURCES, objects)]
        # One compiler process per core: a level is ~10 s of compiling on one core (AVX2 EPYC, 2026-12-04),
        # paid at a host's first start and, for every level, in the CPU image's build.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        with ThreadPoolExecutor(max_workers=cores) as pool:
            list(pool.map(_run_compiler, compiles))  # list(): raises the first failure
        _run_compiler([compiler, *_LINK_FLAGS, *map(str, objects), "-o", str(built), "-lm"])
        os.replace(built, target)  # atomic: concurrent processes never load a half-written file
    _prune(level, target)
    return target


def _prune(level: str, keep: Path) -> None:
    """Removes this level's builds of other sources (and pre-level builds), so the folder stays a few files. A
    process that has one loaded keeps its mapping; one that has not rebuilds it (~1 s)."""
    stale = re.compile(rf"pagedserve_ops_({re.escape(level)}_)?[0-9a-f]{{16}}\.so")
    for path in keep.parent.glob("pagedserve_ops_*.so"):
        if path != keep and stale.fullmatch(path.name):
            with contextlib.suppress(OSError):
                path.unlink()


def _open(path: Path) -> ctypes.CDLL:
    library = ctypes.CDLL(str(path))
    for name, argtypes in SIGNATURES.items():
        function = getattr(library, name)
        function.restype = ctypes.c_int
        function.argtypes = argtypes
    return library


def load_level(level: str) -> ctypes.CDLL | None:
    """`level`'s library (built on first use), or None when it cannot be built or this CPU cannot run it."""
    if level in _libraries:
        return _libraries[level]
    with _lock:
        if level not in _libraries:
            library = None
            if not cpu_info().supports(level):
                logger.warning("C kernels for %s cannot run on this CPU (%s)", level, cpu_info().describe())
            else:
                try:
                    library = _open(prebuilt_path(level) or build_level(level))
                except (
                    OSError,
                    RuntimeError,
                    ValueError,
                    subprocess.SubprocessError,
                    AttributeError,
                ) as error:
                    detail = getattr(error, "stderr", b"") or b""
                    logger.warning("C kernels for %s unavailable (%s %s)", level, error, detail[:200])
            _libraries[level] = library
    return _libraries[level]


def disabled() -> bool:
    return envs.disable_c_kernels()


def load() -> ctypes.CDLL | None:
    """The kernels for this CPU's level, or None when they cannot be built here or are disabled (use PyTorch)."""
    global _active, _active_known
    if not _active_known:
        library = None
        if disabled():
            logger.info("C kernels disabled by PAGEDSERVE_DISABLE_C_KERNEL; using PyTorch")
        else:
            level = cpu_info().kernel_level
            library = load_level(level)
            if library is None and level != "portable":
                library = load_level("portable")
            if library is None:
                logger.warning("no C kernels on this host; using the PyTorch paths")
        # Idempotent: two threads racing here load the same cached library.
        _active, _active_known = library, True
    recording = kernel_recording.current()
    return _active if recording is None or _active is None else recording.wrap(_active)


def active_level() -> str | None:
    """The ISA level of the kernels in use, or None when the PyTorch paths run."""
    library = load()
    return None if library is None else ISA_LEVELS[library.compiled_level()]


def use_level(level: str | None) -> ctypes.CDLL | None:
    """Makes `level`'s library the one every kernel call uses (None: back to this CPU's own choice); returns it.
    For tests that run each level the machine supports, and for benchmarks of a lower level."""
    global _active, _active_known
    if level is None:
        with _lock:
            _active, _active_known = None, False
        return load()
    library = load_level(level)
    with _lock:
        _active, _active_known = library, True
    return library


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the C kernels for every ISA level ahead of time.")
    parser.add_argument("--levels", default=",".join(ISA_LEVELS), help="comma-separated ISA levels")
    parser.add_argument(
        "--out",
        default=None,
        help="copy the libraries here under their prebuilt names (PAGEDSERVE_KERNEL_DIR)",
    )
    args = parser.parse_args(argv)
    levels = [lv.strip() for lv in args.levels.split(",") if lv.strip()]
    if platform.machine() not in ("x86_64", "AMD64"):
        levels = ["portable"]
    for level in levels:
        built = build_level(level)
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            target = Path(args.out) / prebuilt_name(level)
            shutil.copyfile(built, target)
            built = target
        print(f"{level}: {built}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
