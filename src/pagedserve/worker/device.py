"""The torch device a runner uses (--device), and on a CPU the number of threads torch runs."""

from __future__ import annotations

import torch

from pagedserve import envs
from pagedserve.cpu_placement import default_cpu_threads


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA device is available")
    return torch.device(name)


def configure_cpu_threads(requested: int | None) -> int:
    """Set torch's intra-op threads (default: cpu_placement.default_cpu_threads, this process being one rank);
    returns the number used."""
    if requested is None:
        requested = envs.cpu_threads()
    if requested is None:
        requested = default_cpu_threads(ranks_per_node=1)
    if requested < 1:
        raise ValueError(f"cpu_threads must be >= 1, got {requested}")
    torch.set_num_threads(requested)
    return requested
