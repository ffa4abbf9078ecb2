"""This process's place in the tensor-parallel group, and the collectives the sharded layers call.

Size 1 (the default, and every process that never calls `init_tensor_parallel`) makes every collective a no-op, so
the layers have one code path. The group is a torch.distributed process group: gloo on the CPU, NCCL on CUDA. On
the CPU, ranks that share a machine all-reduce and all-gather through shared memory instead (shm_collectives.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from pagedserve.distributed.shm_collectives import ShmCollectives, setup_shm_collectives


@dataclass(frozen=True)
class TensorParallel:
    rank: int = 0
    size: int = 1


_STATE = TensorParallel()
_SHM: ShmCollectives | None = None


def get_tp() -> TensorParallel:
    return _STATE


def init_tensor_parallel(
    store: dist.Store, rank: int, size: int, backend: str = "gloo", timeout_s: float = 600.0
) -> None:
    """Joins the group through `store` (a TCPStore the engine or the first node hosts on a free port)."""
    global _STATE, _SHM
    dist.init_process_group(
        backend, store=store, rank=rank, world_size=size, timeout=timedelta(seconds=timeout_s)
    )
    _STATE = TensorParallel(rank, size)
    if backend == "gloo":  # a CPU group (a CUDA group's tensors go over NCCL)
        _SHM = setup_shm_collectives(store, rank, size, timeout_s)


def destroy_tensor_parallel() -> None:
    global _STATE, _SHM
    if _SHM is not None:
        _SHM.close()
        _SHM = None
    if dist.is_initialized():
        dist.destroy_process_group()
    _STATE = TensorParallel()


def collectives_replayable() -> bool:
    """True when the group's all-reduces and all-gathers are C kernel calls (shared memory), which a CPU decode
    graph can record and replay (worker/cpu_graph.py); always at size 1, where they are no-ops."""
    return _STATE.size == 1 or _SHM is not None


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (row-parallel outputs, vocabulary-parallel embeddings), in place."""
    if _STATE.size > 1:
        if _SHM is not None and _SHM.can_sum(x):
            _SHM.all_reduce(x)
        else:
            dist.all_reduce(x)
    return x


def all_gather_last_dim(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Concatenates every rank's [..., sizes[r]] slice along the last dimension (vocabulary-parallel logits).

    Slices are padded to the largest size for the collective and trimmed after."""
    if _STATE.size == 1:
        return x
    width = max(sizes)
    padded = x if x.shape[-1] == width else torch.nn.functional.pad(x, (0, width - x.shape[-1]))
    padded = padded.contiguous()
    if _SHM is not None and _SHM.can_gather(padded):
        parts = list(_SHM.all_gather(padded).unbind(0))
    else:
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
    return torch.cat([p[..., :n] for p, n in zip(parts, sizes)], dim=-1)


def broadcast_bytes(payload: bytes | None, src: int = 0) -> bytes:
    """Rank `src` sends `payload` to every rank (the engine's step, from the first rank to the others)."""
    if _SHM is not None and src == 0:
        return _SHM.broadcast_bytes(payload)
    length = torch.tensor([0 if payload is None else len(payload)], dtype=torch.int64)
    dist.broadcast(length, src)
    if _STATE.rank == src:
        data = (
            torch.frombuffer(bytearray(payload), dtype=torch.uint8)
            if payload
            else torch.empty(0, dtype=torch.uint8)
        )
    else:
        data = torch.empty(int(length.item()), dtype=torch.uint8)
    if data.numel():
        dist.broadcast(data, src)
    return payload if _STATE.rank == src else data.numpy().tobytes()
