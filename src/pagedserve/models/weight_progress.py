"""One progress bar on stderr for a stream of weights: which file is loading, bytes read, time elapsed."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import NamedTuple

import torch
from tqdm import tqdm


class StoredTensor(NamedTuple):
    """A tensor as a checkpoint reader yields it, with what the progress bar needs."""

    name: str  # Hugging Face parameter name
    tensor: torch.Tensor
    stored_bytes: int  # bytes it took in the file (quantized size for GGUF)
    file_name: str


def with_progress(
    stream: Iterator[StoredTensor], total_bytes: int, first_file: str
) -> Iterator[tuple[str, torch.Tensor]]:
    """Pass `stream` through as (name, tensor) pairs while advancing a byte-counting bar."""
    current_file = first_file
    bar = tqdm(
        desc=f"Loading {current_file}",
        total=total_bytes,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        # Pod logs are not terminals: a slower refresh keeps them from filling with carriage-return updates.
        mininterval=0.5,
        dynamic_ncols=True,
    )
    try:
        for stored in stream:
            if stored.file_name != current_file:
                current_file = stored.file_name
                bar.set_description(f"Loading {current_file}", refresh=False)
            bar.update(stored.stored_bytes)
            yield stored.name, stored.tensor
        # File headers are counted in total_bytes but belong to no tensor; finish at 100%.
        bar.update(max(0, total_bytes - bar.n))
    finally:
        bar.close()
