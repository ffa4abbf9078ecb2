"""The CPU tensor-parallel all-reduce through shared memory (ops/csrc/shm_all_reduce.c), for a group whose ranks
share one machine; gloo stays for everything else.

A gloo all-reduce of one 576-float row between two processes took ~1.2 ms on a 2-vCPU VM, ~60 of them a decode
step of the bundled model (BENCHMARKS.md, "Tensor parallelism on two CPU cores"). Here each call is a copy into
this rank's slot, a flag, a wait for the others' flags and a sum in rank order (every rank gets the same bits).

Set-up is collective: rank 0 makes the region in /dev/shm and names it in the group's store, every rank maps it,
and one gloo all-reduce tells whether all of them could (ranks on other nodes, a missing /dev/shm, no C kernels:
then none uses it). Rank 0 then unlinks the name, so a killed group leaves nothing behind in /dev/shm.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import uuid

import torch
import torch.distributed as dist

from pagedserve import envs
from pagedserve.ops import build

logger = logging.getLogger("pagedserve")

SHM_DIR = "/dev/shm"
STORE_KEY = "pagedserve/shm_all_reduce"
# Elements per rank slot: 256 Ki (1 MiB of float32). A larger tensor (a long prefill's hidden states) goes through
# in chunks; the region stays 2 MiB a rank, so 8 ranks fit Docker's default 64 MiB /dev/shm.
SLOT_ELEMENTS = 256 * 1024
_DATA_OFFSET = 4096  # the flags' page (ops/csrc/shm_all_reduce.c)
_DTYPES = {torch.float32: 0, torch.bfloat16: 1}


class ShmAllReduce:
    """A mapped region shared by the `world` ranks of one group; `all_reduce(x)` sums x over them in place."""

    def __init__(self, region: mmap.mmap, rank: int, world: int, capacity: int, timeout_s: float) -> None:
        self._region = region
        self._view = torch.frombuffer(region, dtype=torch.uint8)  # keeps the mapping's address valid
        self.rank, self.world, self.capacity, self.timeout_s = rank, world, capacity, timeout_s
        self._seq = ctypes.c_int64(0)
        self._library = build.load()

    @staticmethod
    def region_bytes(world: int, capacity: int) -> int:
        return _DATA_OFFSET + 2 * world * capacity * 4

    def handles(self, x: torch.Tensor) -> bool:
        return x.device.type == "cpu" and x.dtype in _DTYPES and x.is_contiguous()

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        assert self._library is not None
        status = self._library.shm_all_reduce(
            self._view.data_ptr(), x.data_ptr(), x.numel(), self.capacity, _DTYPES[x.dtype], self.rank,
            self.world, ctypes.addressof(self._seq), self.timeout_s,
        )  # fmt: skip
        if status == 1:
            raise RuntimeError(
                f"tensor-parallel all-reduce: a rank did not arrive within {self.timeout_s:.0f} s (did one die?)"
            )
        if status != 0:
            raise RuntimeError(f"shm_all_reduce refused its arguments (status {status})")
        return x

    def close(self) -> None:
        del self._view
        self._region.close()


def _map(path: str, size: int, create: bool) -> mmap.mmap:
    flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
    fd = os.open(path, flags, 0o600)
    try:
        if create:
            os.ftruncate(fd, size)
        return mmap.mmap(fd, size)
    finally:
        os.close(fd)


def setup_shm_all_reduce(
    store: dist.Store, rank: int, world: int, timeout_s: float, capacity: int = SLOT_ELEMENTS
) -> ShmAllReduce | None:
    """Called by every rank of a gloo group right after it joined; the same answer on every rank."""
    size = ShmAllReduce.region_bytes(world, capacity)
    region: mmap.mmap | None = None
    path = ""
    reason = ""
    if envs.disable_shm_all_reduce():
        reason = "PAGEDSERVE_DISABLE_SHM_ALL_REDUCE"
    elif build.load() is None:
        reason = "no C kernels"
    try:
        if rank == 0:
            if not reason:
                path = os.path.join(SHM_DIR, f"pagedserve-tp-{os.getpid()}-{uuid.uuid4().hex[:12]}")
                region = _map(path, size, create=True)
            store.set(STORE_KEY, path)
        else:
            path = store.get(STORE_KEY).decode()
            if path and not reason:
                region = _map(path, size, create=False)
    except OSError as error:
        reason = reason or f"{SHM_DIR}: {error}"
    everyone = torch.tensor([0 if region is None else 1], dtype=torch.int32)
    dist.all_reduce(everyone, op=dist.ReduceOp.MIN)
    if rank == 0 and path:
        try:
            os.unlink(path)  # every rank has it mapped (or gave up): the name is no longer needed
        except FileNotFoundError:
            pass
    if not int(everyone.item()):
        if region is not None:
            region.close()
        if rank == 0 or reason:
            logger.info(
                "tensor parallel: all-reduce over gloo (shared memory unused: %s)",
                reason or "a rank could not map it",
            )
        return None
    assert region is not None
    if rank == 0:
        logger.info(
            "tensor parallel: all-reduce through shared memory (%d ranks, %d KiB)", world, size // 1024
        )
    return ShmAllReduce(region, rank, world, capacity, timeout_s)
