"""pagedserve: PagedAttention, continuous batching and a vLLM-compatible OpenAI server.

Public API only; heavy modules (torch, transformers) load lazily on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["LLM", "PoolingParams", "SamplingParams", "__version__"]

if TYPE_CHECKING:
    from pagedserve.entrypoints.llm import LLM
    from pagedserve.pooling_params import PoolingParams
    from pagedserve.sampling_params import SamplingParams


def __getattr__(name: str) -> Any:
    if name == "LLM":
        from pagedserve.entrypoints.llm import LLM

        return LLM
    if name == "PoolingParams":
        from pagedserve.pooling_params import PoolingParams

        return PoolingParams
    if name == "SamplingParams":
        from pagedserve.sampling_params import SamplingParams

        return SamplingParams
    raise AttributeError(name)
