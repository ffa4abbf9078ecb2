"""Recording the C kernel calls of one forward pass, so that the pass can be replayed without Python.

While a `KernelRecording` is active (`with recording.active():`), `build.load()` hands out the library wrapped so
that every kernel call runs as usual and is also appended to `recording.calls` as (function, arguments). The
arguments are plain ints and floats (pointers included), so a replay only has sense while every tensor whose
address was recorded stays alive and in place: the caller keeps them (worker/cpu_graph.py).

`ReplayProgram` packs the calls into records for csrc/replay.c, which runs them all in one ctypes call (a call
through ctypes costs ~5 us; a decode step of the bundled model is ~300 calls).
"""

from __future__ import annotations

import contextvars
import ctypes
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

# Calls that ask the library something and compute nothing: not recorded.
_QUERIES = frozenset(
    {"gguf_has_panels", "gguf_has_bf16_panels", "gguf_gemv_max_rows", "compiled_level", "replay_calls"}
)

# The kernels csrc/replay.c can run, in the order of its enum.
REPLAY_KERNELS = (
    "paged_decode_attention", "rms_norm", "silu_and_mul", "rotary_neox", "argmax_rows", "gemv", "gemm_f32_bf16w",
    "gguf_gemm", "gguf_dequantize", "write_kv_cache", "int8_epilogue", "int8_gemm", "int8_quantize",
    "gemm_e4m3w", "fp8_quantize", "e4m3_dequantize",
    "shm_all_reduce", "shm_all_gather", "rms_norm_heads", "lora_delta", "gelu_tanh_and_mul", "gguf_moe",
    "gguf_gemm_bf16",
)  # fmt: skip
_REPLAY_INTS, _REPLAY_FLOATS = 20, 2  # csrc/replay.c


class ReplayCall(ctypes.Structure):
    """csrc/replay.c's replay_call: the kernel's index in REPLAY_KERNELS, its pointer / integer arguments in order
    (NULL as 0), its float arguments in order."""

    _fields_ = [
        ("kernel", ctypes.c_int64),
        ("i", ctypes.c_int64 * _REPLAY_INTS),
        ("f", ctypes.c_float * _REPLAY_FLOATS),
    ]


KernelCall = tuple[Callable[..., int], tuple[Any, ...]]


class KernelRecording:
    """The kernel calls made while active, in order, and the library they were made to."""

    def __init__(self) -> None:
        self.calls: list[KernelCall] = []
        self.library: Any = None

    @contextmanager
    def active(self) -> Iterator[KernelRecording]:
        token = _current.set(self)
        try:
            yield self
        finally:
            _current.reset(token)

    def wrap(self, library: Any) -> _RecordingLibrary:
        if self.library is None:
            self.library = library
        if library is not self.library:
            raise RuntimeError(
                "one recording spans two kernel libraries (the ISA level changed while recording)"
            )
        return _RecordingLibrary(library, self)

    def program(self) -> ReplayProgram:
        return ReplayProgram(self.library, self.calls)


class _RecordingLibrary:
    def __init__(self, library: Any, recording: KernelRecording) -> None:
        self._library = library
        self._recording = recording

    def __getattr__(self, name: str) -> Callable[..., int]:
        function = getattr(self._library, name)
        if name in _QUERIES:
            return function
        calls = self._recording.calls

        def call(*args: Any) -> int:
            calls.append((function, args))
            return function(*args)

        return call


_current: contextvars.ContextVar[KernelRecording | None] = contextvars.ContextVar(
    "pagedserve_kernel_recording", default=None
)


def current() -> KernelRecording | None:
    """The recording active in this thread (context), if any."""
    return _current.get()


def pack(function: Callable[..., int], args: tuple[Any, ...]) -> ReplayCall:
    """One recorded call as csrc/replay.c's record; ValueError for a kernel it cannot run."""
    name = function.__name__
    if name not in REPLAY_KERNELS:
        raise ValueError(f"kernel {name!r} is not replayable (csrc/replay.c)")
    record = ReplayCall(kernel=REPLAY_KERNELS.index(name))
    ints = floats = 0
    for argtype, value in zip(function.argtypes, args, strict=True):
        if argtype is ctypes.c_float:
            record.f[floats] = float(value)
            floats += 1
        else:
            record.i[ints] = 0 if value is None else int(value)
            ints += 1
    return record


def _pointer_slots(argtypes: list[Any]) -> tuple[int, ...]:
    integers = [argtype for argtype in argtypes if argtype is not ctypes.c_float]
    return tuple(slot for slot, argtype in enumerate(integers) if argtype is ctypes.c_void_p)


class ReplayProgram:
    """Recorded calls packed for one `replay_calls` crossing."""

    def __init__(self, library: Any, calls: list[KernelCall]) -> None:
        self.library = library
        self.names = [function.__name__ for function, _ in calls]
        self.records = (ReplayCall * len(calls))(*(pack(function, args) for function, args in calls))
        # Per call, the integer slots that hold pointers (worker/graph_arena.py moves some of them).
        self.pointer_slots = [_pointer_slots(function.argtypes) for function, _ in calls]

    def pointer_arguments(self) -> list[list[tuple[int, int]]]:
        """Per call, its non-NULL pointer arguments as (slot, address)."""
        return [
            [(slot, record.i[slot]) for slot in slots if record.i[slot]]
            for record, slots in zip(self.records, self.pointer_slots, strict=True)
        ]

    def set_pointer(self, call: int, slot: int, address: int) -> None:
        assert slot in self.pointer_slots[call]
        self.records[call].i[slot] = address

    def __len__(self) -> int:
        return len(self.names)

    def run(self) -> None:
        """Runs the calls in order. A kernel that fails (a non-zero return: scratch memory it could not allocate,
        an index outside a table) stops the replay with the kernel's name."""
        if not self.names:
            return
        failed = self.library.replay_calls(ctypes.addressof(self.records), len(self.names))
        if failed:
            name = self.names[failed - 1]
            why = (
                " (a tensor-parallel rank did not arrive in time: did one die?)"
                if name.startswith("shm_")
                else ""
            )
            raise RuntimeError(f"C kernel {name} (call {failed - 1}) failed on replay{why}")
