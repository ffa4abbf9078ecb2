"""The CPU tensor-parallel all-reduce and all-gather through shared memory (ops/csrc/shm_collectives.c), for a
group whose ranks share one machine; gloo stays for everything else.

A gloo all-reduce of one 576-float row between two processes took ~1.2 ms on a 2-vCPU VM, ~60 of them a decode
step of the bundled model (BENCHMARKS.md, "Tensor parallelism on two CPU cores"). Here each call is a copy into
this rank's slot, a flag, a wait for the others' flags and a sum in rank order (every rank gets the same bits).
The step's broadcast (rank 0 to the others, two a step: its length and its bytes over gloo, ~1.2 ms each) goes
through the region too: between steps a rank waits there for as long as the server is idle, so after a short spin
it sleeps on a futex that rank 0 wakes (ops/csrc/shm_collectives.c), checking each second that rank 0 still
exists. A step message longer than the broadcast buffer is announced there and sent over gloo.

Set-up is collective: rank 0 makes the region in /dev/shm and names it in the group's store, every rank maps it,
and one gloo all-reduce tells whether all of them could (ranks on other nodes, a missing /dev/shm, no C kernels:
then none uses it). Rank 0 then unlinks the name, so a killed group leaves nothing behind in /dev/shm.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import struct
import uuid
from typing import Any

import torch
import torch.distributed as dist

from pagedserve import envs
from pagedserve.ops import build

logger = logging.getLogger("pagedserve")

SHM_DIR = "/dev/shm"
STORE_KEY = "pagedserve/shm_collectives"
# Float32 elements per rank slot: 256 Ki (1 MiB). A larger tensor (a long prefill's hidden states, a batch's
# logits) goes through in chunks; the region stays 2 MiB a rank, so 8 ranks fit Docker's default 64 MiB /dev/shm.
SLOT_ELEMENTS = 256 * 1024
# Bytes of a step message the broadcast carries itself (two buffers): a decode step of 256 sequences is ~10 KB, a
# step admitting long prompts carries their token ids (~3 bytes each); longer ones go over gloo.
BROADCAST_BYTES = 512 * 1024
_DATA_OFFSET = 4096  # the flags' page (ops/csrc/shm_collectives.c)
_BROADCAST_HEADER = 8192  # its control line and acks (BCAST_HEADER there)
_SENDER_PID = struct.Struct("<q")  # rank 0's pid, in the broadcast's control line after its other fields
_SENDER_PID_AT = 32
_SUM_DTYPES = {torch.float32: 0, torch.bfloat16: 1}


class ShmCollectives:
    """A region mapped by the `world` ranks of one group, and the collectives that go through it."""

    def __init__(self, region: mmap.mmap, rank: int, world: int, capacity: int, timeout_s: float) -> None:
        self._region = region
        self._view = torch.frombuffer(region, dtype=torch.uint8)  # keeps the mapping's address valid
        self.rank, self.world, self.capacity, self.timeout_s = rank, world, capacity, timeout_s
        self._seq = ctypes.c_int64(0)  # the last call number, the same on every rank
        self._broadcast_seq = ctypes.c_int64(0)
        self._broadcast_area = self._view.data_ptr() + _broadcast_offset(world, capacity)
        self._received = ctypes.create_string_buffer(BROADCAST_BYTES)
        (self._sender_pid,) = _SENDER_PID.unpack_from(
            region, _broadcast_offset(world, capacity) + _SENDER_PID_AT
        )

    @staticmethod
    def region_bytes(world: int, capacity: int) -> int:
        return _broadcast_offset(world, capacity) + _BROADCAST_HEADER + 2 * BROADCAST_BYTES

    def broadcast_bytes(self, payload: bytes | None) -> bytes:
        """Rank 0's `payload` on every rank (rank 0 passes it, the others None)."""
        length = ctypes.c_int64(0)
        if self.rank == 0:
            assert payload is not None
            status = _library().shm_broadcast_send(
                self._broadcast_area, payload, len(payload), BROADCAST_BYTES, self.world,
                ctypes.addressof(self._broadcast_seq), self.timeout_s,
            )  # fmt: skip
            self._check(status, "step broadcast")
            if len(payload) > BROADCAST_BYTES:
                dist.broadcast(torch.frombuffer(bytearray(payload), dtype=torch.uint8), 0)
            return payload
        status = _library().shm_broadcast_recv(
            self._broadcast_area, self._received, BROADCAST_BYTES, self.rank, ctypes.addressof(self._broadcast_seq),
            ctypes.addressof(length), self._sender_pid,
        )  # fmt: skip
        if status:
            raise RuntimeError("tensor-parallel step broadcast: rank 0 is gone")
        if length.value > BROADCAST_BYTES:
            data = torch.empty(length.value, dtype=torch.uint8)
            dist.broadcast(data, 0)
            return data.numpy().tobytes()
        return ctypes.string_at(self._received, length.value)  # .raw would copy the whole buffer

    @staticmethod
    def can_sum(x: torch.Tensor) -> bool:
        return x.device.type == "cpu" and x.dtype in _SUM_DTYPES and x.is_contiguous()

    @staticmethod
    def can_gather(x: torch.Tensor) -> bool:
        return x.device.type == "cpu" and x.is_contiguous()

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """x summed over the ranks, in place."""
        status = _library().shm_all_reduce(
            self._view.data_ptr(), x.data_ptr(), x.numel(), self.capacity, _SUM_DTYPES[x.dtype], self.rank,
            self.world, ctypes.addressof(self._seq), self.timeout_s,
        )  # fmt: skip
        self._check(status, "all-reduce")
        return x

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        """Every rank's x (same shape and dtype on each), stacked in rank order: [world, *x.shape]."""
        out = torch.empty((self.world, *x.shape), dtype=x.dtype)
        status = _library().shm_all_gather(
            self._view.data_ptr(), x.data_ptr(), x.numel() * x.element_size(), out.data_ptr(), self.capacity,
            self.rank, self.world, ctypes.addressof(self._seq), self.timeout_s,
        )  # fmt: skip
        self._check(status, "all-gather")
        return out

    def _check(self, status: int, name: str) -> None:
        if status == 1:
            raise RuntimeError(
                f"tensor-parallel {name}: a rank did not arrive within {self.timeout_s:.0f} s (did one die?)"
            )
        if status != 0:
            raise RuntimeError(f"shared-memory {name} refused its arguments (status {status})")

    def close(self) -> None:
        del self._view
        self._region.close()


def _broadcast_offset(world: int, capacity: int) -> int:
    """Where the step broadcast's area starts: after the flags page and the two sets of slots."""
    return _DATA_OFFSET + 2 * world * capacity * 4


def _library() -> Any:
    """Looked up at each call, not kept: inside a decode graph's capture (worker/cpu_graph.py) `build.load()`
    hands out the recording library, so the collective is replayed with the step's other kernels."""
    library = build.load()
    assert library is not None  # setup_shm_collectives made no region without kernels
    return library


def _map(path: str, size: int, create: bool) -> mmap.mmap:
    fd = os.open(path, os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0), 0o600)
    try:
        if create:
            os.ftruncate(fd, size)  # zero-filled: every flag starts at call 0
        return mmap.mmap(fd, size)
    finally:
        os.close(fd)


def setup_shm_collectives(
    store: dist.Store, rank: int, world: int, timeout_s: float, capacity: int = SLOT_ELEMENTS
) -> ShmCollectives | None:
    """Called by every rank of a gloo group right after it joined; the same answer on every rank."""
    size = ShmCollectives.region_bytes(world, capacity)
    region: mmap.mmap | None = None
    path = ""
    reason = ""
    if envs.disable_shm_collectives():
        reason = "PAGEDSERVE_DISABLE_SHM_COLLECTIVES (or --disable-custom-all-reduce)"
    elif build.load() is None:
        reason = "no C kernels"
    try:
        if rank == 0:
            if not reason:
                path = os.path.join(SHM_DIR, f"pagedserve-tp-{os.getpid()}-{uuid.uuid4().hex[:12]}")
                region = _map(path, size, create=True)
                _SENDER_PID.pack_into(
                    region, _broadcast_offset(world, capacity) + _SENDER_PID_AT, os.getpid()
                )
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
                "tensor parallel: collectives over gloo (shared memory unused: %s)",
                reason or "a rank could not map it",
            )
        return None
    assert region is not None
    if rank == 0:
        logger.info(
            "tensor parallel: all-reduce, all-gather and the step broadcast through shared memory (%d KiB)",
            size // 1024,
        )
    return ShmCollectives(region, rank, world, capacity, timeout_s)
