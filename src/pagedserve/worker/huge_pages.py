"""The model's CPU weights moved, once loaded, into one block of memory the kernel backs with transparent huge
pages (2 MB), where the system allows them (`/sys/kernel/mm/transparent_hugepage/enabled`: always or madvise).

Why: a decode step streams every weight once. In 4 KB pages that is a TLB miss every 4 KB, and the hardware
prefetchers stop at every page's end. PyTorch's allocator asks for no huge pages; numpy's does for its arrays past
4 MB, so before this only the matrices the GGUF loader left as numpy copies were in 2 MB pages, by chance (217 of
636 MB of a Llama-3.2-1B-shaped Q4_K_M model). Zen 4, 2 threads, the same matrices timed in one process, 4 KB
pages against 2 MB pages: Q4_K gate_up (16384 x 2048, regrouped) 25.7-26.8 -> 29.5-32.3 GB/s standalone, 30.4 ->
31.5 in the model; Q6_K ffn_down (2048 x 8192, file order) 22.5 -> 29.4-30.1 standalone, 30.6 -> 33.3 in the model
(docs/architecture.md, "Weights in huge pages").

Tensors keep their dtype, shape, strides and sharing (tied weights, views of one storage); only their storage
moves. It runs before anything records a weight's address (the MoE kernels' tables, CPU decode graphs, LoRA).
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import pathlib
from collections.abc import Iterator

import torch
from torch import nn

logger = logging.getLogger(__name__)

HUGE_PAGE = 2 << 20
ALIGN = 64
"""Each storage starts on a cache line (PyTorch's own alignment)."""
THP_SETTING = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")


def huge_pages_mode() -> str:
    """The kernel's transparent huge page setting (always, madvise or never); "never" where it cannot be read or
    this Python's mmap cannot ask for them (not Linux)."""
    if not hasattr(mmap, "MADV_HUGEPAGE"):
        return "never"
    try:
        text = THP_SETTING.read_text()
    except OSError:
        return "never"
    chosen = [word[1:-1] for word in text.split() if word.startswith("[")]
    return chosen[0] if chosen else "never"


def _holders(model: nn.Module) -> Iterator[tuple[dict[str, torch.Tensor | None], str]]:
    """(the module's parameter or buffer table, name) of every CPU tensor the model holds, shared ones once per
    holder."""
    for module in model.modules():
        for table in (module._parameters, module._buffers):
            for name, tensor in table.items():
                if tensor is not None and tensor.device.type == "cpu" and tensor.layout == torch.strided:
                    yield table, name


def move_weights_to_huge_pages(model: nn.Module) -> int:
    """Every CPU parameter and buffer of `model` re-homed in one 2 MB-aligned block asked for in huge pages
    (MADV_HUGEPAGE), storage by storage, so the peak is the weights plus one storage. Bytes moved; 0 where the
    system gives no huge pages (nothing moves)."""
    if huge_pages_mode() == "never":
        return 0
    by_storage: dict[int, list[tuple[dict[str, torch.Tensor | None], str]]] = {}
    sizes: dict[int, int] = {}
    for table, name in _holders(model):
        storage = table[name].untyped_storage()  # type: ignore[union-attr]
        if storage.nbytes() == 0:
            continue
        by_storage.setdefault(storage.data_ptr(), []).append((table, name))
        sizes[storage.data_ptr()] = storage.nbytes()
    total = sum((size + ALIGN - 1) // ALIGN * ALIGN for size in sizes.values())
    if total == 0:
        return 0
    arena = mmap.mmap(-1, total + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    arena.madvise(mmap.MADV_HUGEPAGE)  # before the first touch: pages are faulted in 2 MB at a time
    whole = torch.frombuffer(arena, dtype=torch.uint8)  # keeps `arena` alive as long as any view of it
    at = (-whole.data_ptr()) % HUGE_PAGE
    for ptr, holders in by_storage.items():
        first = holders[0][0][holders[0][1]]
        assert first is not None
        old = torch.empty(0, dtype=torch.uint8).set_(first.untyped_storage(), 0, (sizes[ptr],), (1,))
        whole[at : at + sizes[ptr]].copy_(old)
        moved: set[int] = set()
        for table, name in holders:
            tensor = table[name]
            assert tensor is not None
            if id(tensor) in moved:  # already re-homed: held by two modules (tied weights, shared buffers)
                continue
            size = tensor.element_size()
            assert at % size == 0  # at is a multiple of 64
            view = torch.empty(0, dtype=tensor.dtype).set_(
                whole.untyped_storage(), at // size + tensor.storage_offset(), tensor.shape, tensor.stride()
            )
            if isinstance(tensor, nn.Parameter):
                tensor.data = view  # the Parameter object stays: every module that shares it sees the move
                moved.add(id(tensor))
            else:
                moved.add(id(view))
                for other_table, other_name in holders:
                    if other_table[other_name] is tensor:
                        other_table[other_name] = view
        at += (sizes[ptr] + ALIGN - 1) // ALIGN * ALIGN
        del old, first
    _return_freed_memory()
    return total


def _return_freed_memory() -> None:
    """glibc's free() hands back only the top of its heap; the weights' old homes in the middle stay resident until
    malloc_trim (a Llama-3.2-1B-shaped Q4_K_M model: ~420 MB)."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # the process's own libc; absent outside glibc
    if trim is not None:
        trim(0)
