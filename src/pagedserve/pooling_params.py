"""Parameters of an embedding request (vLLM's `PoolingParams`, the part pagedserve runs)."""

from __future__ import annotations

import msgspec


class PoolingParams(msgspec.Struct, frozen=True):
    """How a prompt becomes one embedding (--runner pooling): its last position's final hidden state, as vLLM
    pools a causal model converted to embeddings (Qwen3-Embedding's own rule)."""

    normalize: bool = True  # scale the vector to unit L2 norm (vLLM's default for embeddings)

    def __post_init__(self) -> None:
        if not isinstance(self.normalize, bool):
            raise ValueError(f"PoolingParams.normalize must be a boolean, got {self.normalize!r}")
