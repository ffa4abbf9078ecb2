"""The GPU catalogue `pagedserve plan --gpu` sizes against (data/gpus.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

import yaml

MIB = 1024**2


@dataclass(frozen=True)
class GpuType:
    name: str
    memory_bytes: int
    product: str
    """Value of the node label nvidia.com/gpu.product for the common variant."""
    family: str
    bf16: bool
    fp8: bool


@cache
def gpu_catalogue() -> dict[str, GpuType]:
    raw = yaml.safe_load(resources.files("pagedserve.kube").joinpath("data/gpus.yaml").read_text())
    return {
        name: GpuType(
            name=name,
            memory_bytes=int(entry["memory_mib"]) * MIB,
            product=entry["product"],
            family=entry["family"],
            bf16=bool(entry["bf16"]),
            fp8=bool(entry["fp8"]),
        )
        for name, entry in raw.items()
    }


def find_gpu(name: str) -> GpuType:
    """Look up a GPU by catalogue name (case-insensitive; `A100-80G`/`a100_80gb` spellings accepted)."""
    wanted = name.upper().replace("_", "-")
    for key, gpu in gpu_catalogue().items():
        if wanted in (key.upper(), key.upper().removesuffix("B"), gpu.product.upper()):
            return gpu
    raise ValueError(f"unknown --gpu {name!r}; known: {', '.join(gpu_catalogue())}")
