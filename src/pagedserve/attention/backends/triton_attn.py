"""The CUDA backend: Triton kernels for the cache write, decode and prefill (attention/backends/triton_kernels.py).

Every step writes the K/V of its tokens first, then decodes (the first `num_decode_tokens` rows) and prefills (the
packed chunks after them) read only the cache, so a chunk sees its prefix-cache hit, its earlier chunks and its own
tokens the same way. Runs wherever Triton runs: CUDA, and the CPU under TRITON_INTERPRET=1 (the tests).
"""

from __future__ import annotations

import torch

from pagedserve.attention.backend import AttentionMetadata
from pagedserve.attention.backends import triton_kernels as kernels


class TritonBackend:
    name = "triton"

    def forward(
        self,
        q,
        k,
        v,
        k_cache,
        v_cache,
        metadata: AttentionMetadata,
        scale: float,
        sliding_window: int | None = None,
        softcap: float | None = None,
    ) -> torch.Tensor:
        kernels.write_kv(k, v, k_cache, v_cache, metadata.slot_mapping)
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
        num_decode = metadata.num_decode_tokens
        if num_decode:
            block_size = v_cache.shape[2]
            kernels.decode_attention(
                q[:num_decode], k_cache, v_cache, metadata.decode_block_tables, metadata.decode_seq_lens, scale,
                kernels.num_decode_splits(metadata.decode_max_seq_len, block_size), out[:num_decode],
                sliding_window, softcap,
            )  # fmt: skip
        if metadata.prefills:
            kernels.prefill_attention(
                q, k_cache, v_cache, metadata.prefill_block_tables, metadata.prefill_query_starts,
                metadata.prefill_query_lens, metadata.prefill_context_lens, metadata.prefill_max_query_len,
                scale, out, sliding_window, softcap,
            )  # fmt: skip
        return out
