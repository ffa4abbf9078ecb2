"""Every environment variable pagedserve reads, in one place (vLLM's `envs.py` habit).

Each is read when asked for, not at import, so tests and launchers can set them late. Values are validated here
and a bad one raises `ValueError` naming the variable.
"""

from __future__ import annotations

import os
import pathlib

ISA_LEVELS = ("portable", "avx2", "avx512", "avx512_bf16")


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip() not in ("", "0")


def disable_c_kernels() -> bool:
    """PAGEDSERVE_DISABLE_C_KERNEL=1: use the PyTorch path of every CPU kernel."""
    return _flag("PAGEDSERVE_DISABLE_C_KERNEL")


def disable_shm_collectives() -> bool:
    """PAGEDSERVE_DISABLE_SHM_COLLECTIVES=1: CPU tensor-parallel ranks on one machine all-reduce and all-gather
    over gloo, not through shared memory (distributed/shm_collectives.py)."""
    return _flag("PAGEDSERVE_DISABLE_SHM_COLLECTIVES")


def allow_runtime_lora_updating() -> bool:
    """VLLM_ALLOW_RUNTIME_LORA_UPDATING=1 or true (vLLM's variable): serve POST /v1/load_lora_adapter and
    /v1/unload_lora_adapter."""
    return os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "").strip().lower() in ("1", "true")


def allow_long_max_model_len() -> bool:
    """VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 (vLLM's variable): accept a --max-model-len past the model's
    max_position_embeddings (positions it was never trained on: the output may degrade)."""
    return os.environ.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "").strip().lower() in ("1", "true")


def cpu_isa_cap() -> str | None:
    """PAGEDSERVE_CPU_ISA: the highest kernel ISA level to use (portable, avx2, avx512, avx512_bf16), below what
    the CPU has — to run an older CPU's kernels on a newer one (tests, benchmarks). Never raises the level."""
    value = os.environ.get("PAGEDSERVE_CPU_ISA", "").strip().lower()
    if not value:
        return None
    if value not in ISA_LEVELS:
        raise ValueError(f"PAGEDSERVE_CPU_ISA must be one of {', '.join(ISA_LEVELS)}; got {value!r}")
    return value


def cache_dir() -> str:
    """PAGEDSERVE_CACHE_DIR, else $XDG_CACHE_HOME/pagedserve, else ~/.cache/pagedserve (built kernels live here)."""
    return os.environ.get("PAGEDSERVE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "pagedserve"
    )


def prebuilt_kernel_dir() -> str | None:
    """PAGEDSERVE_KERNEL_DIR: a folder of kernels built ahead of time (`python -m pagedserve.ops.build --out DIR`,
    as the images do), used before building any; it may be read-only, and no compiler is needed to use it."""
    return os.environ.get("PAGEDSERVE_KERNEL_DIR", "").strip() or None


def c_compiler() -> str | None:
    """CC: the C compiler for the kernels (default: cc or gcc on PATH)."""
    return os.environ.get("CC") or None


def cpu_threads() -> int | None:
    """PAGEDSERVE_CPU_THREADS: torch intra-op threads when --cpu-threads is not given."""
    value = os.environ.get("PAGEDSERVE_CPU_THREADS", "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"PAGEDSERVE_CPU_THREADS must be an integer, got {value!r}") from None


def cpu_omp_threads_bind() -> str:
    """VLLM_CPU_OMP_THREADS_BIND (vLLM's variable): the CPUs each rank's math threads run on. "auto" (default)
    and "nobind" (or vLLM 0.9's "all") pin nothing; otherwise a CPU list per rank of this node, separated by "|",
    e.g. "0-15|16-31" (cpu_placement.py parses and checks it)."""
    return os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "").strip() or "auto"


def cpu_reserved() -> int | None:
    """VLLM_CPU_NUM_OF_RESERVED_CPU (vLLM's variable): CPUs the engine leaves to other work (the API server, the
    scheduler) when it sizes its thread count itself; unused when --cpu-threads or a CPU list says."""
    value = os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU", "").strip()
    if not value:
        return None
    try:
        reserved = int(value)
    except ValueError:
        raise ValueError(f"VLLM_CPU_NUM_OF_RESERVED_CPU must be an integer, got {value!r}") from None
    if reserved < 0:
        raise ValueError(f"VLLM_CPU_NUM_OF_RESERVED_CPU must be >= 0, got {reserved}")
    return reserved


LOGGING_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def logging_level() -> str:
    """VLLM_LOGGING_LEVEL (vLLM's variable, default INFO): the level of pagedserve's log lines in every process
    (server, engine core, tensor-parallel ranks). uvicorn's access log keeps --uvicorn-log-level."""
    value = os.environ.get("VLLM_LOGGING_LEVEL", "").strip().upper() or "INFO"
    if value not in LOGGING_LEVELS:
        raise ValueError(f"VLLM_LOGGING_LEVEL must be one of {', '.join(LOGGING_LEVELS)}; got {value!r}")
    return value


def tp_timeout_s() -> float:
    """PAGEDSERVE_TP_TIMEOUT_S: seconds a tensor-parallel rank waits for the others in a collective before it fails
    (default 600). gloo fails a step broadcast that waits longer, so while the engine is idle rank 0 broadcasts a
    keep-alive every tenth of it (worker/tp_worker.py)."""
    value = os.environ.get("PAGEDSERVE_TP_TIMEOUT_S", "").strip()
    if not value:
        return 600.0
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise ValueError(f"PAGEDSERVE_TP_TIMEOUT_S must be a number of seconds > 0, got {value!r}")
    return seconds


def cpu_kv_cache_bytes() -> int | None:
    """VLLM_CPU_KVCACHE_SPACE (GiB, vLLM's variable): the CPU KV cache budget when none is given."""
    value = os.environ.get("VLLM_CPU_KVCACHE_SPACE", "").strip()
    if not value:
        return None
    try:
        return int(float(value) * 1024**3)
    except ValueError:
        raise ValueError(f"VLLM_CPU_KVCACHE_SPACE must be a number of GiB, got {value!r}") from None


# Where vLLM's image keeps its Hub cache (it runs as root): vLLM's Kubernetes examples mount the model claim here.
VLLM_IMAGE_HUB_CACHE = pathlib.Path("/root/.cache/huggingface/hub")


def hf_hub_cache_dirs() -> list[pathlib.Path]:
    """The Hugging Face Hub cache folders Hub ids are looked up in (models/hub_cache.py; nothing is downloaded into
    them): HF_HUB_CACHE, else HF_HOME/hub, as huggingface_hub picks; with neither set, $XDG_CACHE_HOME/huggingface/hub
    or ~/.cache/huggingface/hub, then VLLM_IMAGE_HUB_CACHE, so a claim mounted where vLLM's image keeps its cache is
    found by our non-root image too."""
    if os.environ.get("HF_HUB_CACHE", "").strip():
        return [pathlib.Path(os.environ["HF_HUB_CACHE"].strip()).expanduser()]
    if os.environ.get("HF_HOME", "").strip():
        return [pathlib.Path(os.environ["HF_HOME"].strip()).expanduser() / "hub"]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    own = pathlib.Path(cache).expanduser() / "huggingface" / "hub"
    return [own] if own == VLLM_IMAGE_HUB_CACHE else [own, VLLM_IMAGE_HUB_CACHE]


def fault_step(name: str) -> int | None:
    """Fault injection for tests (PAGEDSERVE_FAULT_*): a step number >= 1, or None when unset."""
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    number = int(value)
    if number < 1:
        raise ValueError(f"{name} must be a step number >= 1, got {value!r}")
    return number


def engine_core_process() -> bool:
    """PAGEDSERVE_ENABLE_ENGINE_PROCESS (default 1; vLLM's VLLM_ENABLE_V1_MULTIPROCESSING): the server runs the
    engine core in its own process; 0 runs it on a thread of the server process (one process to debug)."""
    value = os.environ.get("PAGEDSERVE_ENABLE_ENGINE_PROCESS", "1").strip()
    if value not in ("0", "1"):
        raise ValueError(f"PAGEDSERVE_ENABLE_ENGINE_PROCESS must be 0 or 1, got {value!r}")
    return value == "1"


ATTENTION_BACKENDS = ("cpu", "cpu_torch", "torch_ref", "triton")


def attention_backend() -> str | None:
    """PAGEDSERVE_ATTENTION_BACKEND (vLLM's VLLM_ATTENTION_BACKEND): cpu, cpu_torch, torch_ref or triton instead of
    the device's default (cpu on the CPU, triton on CUDA); triton on the CPU needs TRITON_INTERPRET=1 (tests)."""
    value = os.environ.get("PAGEDSERVE_ATTENTION_BACKEND", "").strip().lower()
    if not value:
        return None
    if value not in ATTENTION_BACKENDS:
        raise ValueError(
            f"PAGEDSERVE_ATTENTION_BACKEND must be one of {', '.join(ATTENTION_BACKENDS)}; got {value!r}"
        )
    return value


# Spins of a waiting libgomp thread before it sleeps. libgomp's own default, 300 000, holds a core for milliseconds
# while a thread of the same team waits to be scheduled; libgomp drops to 1 000 itself when it sees more threads
# than CPUs, but not when another process (the API server, a neighbour pod, CI) takes a core. With one of 2 cores
# busy, 1 000 decoded 1.5x (single stream) to 1.9x (16 streams) faster than the default, and within noise of it
# on an idle machine (benchmarks/omp_contention.py, AVX2 EPYC, 2026-12-04; docs/architecture.md).
ENGINE_GOMP_SPINCOUNT = "1000"


def engine_process_env() -> dict[str, str]:
    """The environment of the engine-core and tensor-parallel worker processes: this one, plus
    GOMP_SPINCOUNT=ENGINE_GOMP_SPINCOUNT unless GOMP_SPINCOUNT or OMP_WAIT_POLICY is set (the user's choice wins;
    libgomp reads them once, when torch loads it, so they are set for the child, not here)."""
    env = dict(os.environ)
    if "GOMP_SPINCOUNT" not in env and "OMP_WAIT_POLICY" not in env:
        env["GOMP_SPINCOUNT"] = ENGINE_GOMP_SPINCOUNT
    return env
