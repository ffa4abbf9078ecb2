"""Parameters of an embedding or scoring request (vLLM's `PoolingParams`, the part pagedserve runs)."""

from __future__ import annotations

import msgspec


class PoolingParams(msgspec.Struct, frozen=True):
    """How a prompt becomes one vector (--runner pooling): its final hidden states pooled as the model's rule says
    (layers/pooler.py), or, on a cross-encoder, the one score its classification head gives the pair."""

    normalize: bool = True  # scale the vector to unit L2 norm (vLLM's default for embeddings)
    use_activation: bool = (
        True  # a cross-encoder's score through a sigmoid (vLLM's default), else its raw logit
    )
    token_type_start: int | None = None
    """A cross-encoder pair's first token of its second text: token type 1 from there on (vLLM's
    compressed_token_type_ids); None: every token of type 0."""

    def __post_init__(self) -> None:
        for name in ("normalize", "use_activation"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"PoolingParams.{name} must be a boolean, got {getattr(self, name)!r}")
        start = self.token_type_start
        if start is not None and (isinstance(start, bool) or not isinstance(start, int) or start < 1):
            raise ValueError(f"PoolingParams.token_type_start must be an integer >= 1, got {start!r}")
