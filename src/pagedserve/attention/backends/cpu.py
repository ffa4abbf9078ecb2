"""The fast CPU backend: decode straight from the paged cache, SDPA for prefills.

Decode: a small C kernel (ops/csrc/paged_decode.c) reads each sequence's K/V once through its block table; where it cannot be
built, the whole decode batch goes through a few large PyTorch operations instead (one gather of the batch's
blocks, two batched matrix products, one masked softmax), which copies the history once per step. Prefill without cached context attends over the chunk's own fresh K/V (no
cache read); with context (chunked prefill, prefix-cache hit) it gathers that sequence's blocks once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pagedserve.attention.backend import (
    AttentionMetadata,
    as_stored,
    causal_mask,
    gather_sequence_kv,
    key_rows,
    soft_cap,
    value_rows,
    window_start,
    write_kv_cache,
)
from pagedserve.ops import cpu as cpu_ops


class CpuBackend:
    name = "cpu"

    def __init__(self, use_kernel: bool = True) -> None:
        # The kernels also step aside on their own (PAGEDSERVE_DISABLE_C_KERNEL, no compiler): cpu_ops.available.
        self.use_kernel = use_kernel

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
        if self.use_kernel and cpu_ops.can_write_kv_cache(k, v, k_cache):
            cpu_ops.write_kv_cache(k, v, k_cache, v_cache, metadata.slot_mapping)
        else:
            write_kv_cache(k, v, k_cache, v_cache, metadata.slot_mapping)
        num_decode = metadata.num_decode_tokens
        if not metadata.prefills:
            return self._decode(q, k_cache, v_cache, metadata, scale, sliding_window, softcap)
        out = torch.empty_like(q)
        if num_decode:
            out[:num_decode] = self._decode(
                q[:num_decode], k_cache, v_cache, metadata, scale, sliding_window, softcap
            )
        for chunk in metadata.prefills:
            rows = slice(chunk.token_start, chunk.token_start + chunk.num_tokens)
            if chunk.context_len == 0:
                # As stored: with a float8 cache, every attention sees the same rounded K/V, whether its context
                # came from this step, an earlier chunk or a prefix hit.
                ks, vs = as_stored(k[rows], k_cache), as_stored(v[rows], v_cache)
            else:
                # Keys before the chunk's first window are never seen: their blocks are not gathered.
                block_size, first = v_cache.shape[2], window_start(chunk.context_len, sliding_window)
                first_block, skip = divmod(first, block_size)
                table = chunk.block_table[first_block:]
                total = chunk.context_len + chunk.num_tokens - first_block * block_size
                ks = gather_sequence_kv(key_rows(k_cache), table, total)[skip:].to(q.dtype)
                vs = gather_sequence_kv(value_rows(v_cache), table, total)[skip:].to(q.dtype)
            out[rows] = _prefill_sdpa(q[rows], ks, vs, scale, sliding_window, softcap)
        return out

    def _decode(
        self,
        q,
        k_cache,
        v_cache,
        metadata: AttentionMetadata,
        scale: float,
        sliding_window: int | None,
        softcap: float | None,
    ) -> torch.Tensor:
        if self.use_kernel and cpu_ops.can_decode_from(q, k_cache):
            return cpu_ops.paged_decode_attention(
                q if cpu_ops.usable_rows(q) else q.contiguous(),
                k_cache,
                v_cache,
                metadata.decode_block_tables,
                metadata.decode_seq_lens,
                scale,
                sliding_window,
                softcap,
            )
        return _decode_torch(q, k_cache, v_cache, metadata, scale, sliding_window, softcap)


def _decode_torch(
    q,
    k_cache,
    v_cache,
    metadata: AttentionMetadata,
    scale: float,
    sliding_window: int | None,
    softcap: float | None = None,
) -> torch.Tensor:
    batch, num_q_heads, head_dim = q.shape
    num_kv_heads, block_size = v_cache.shape[1:3]
    group = num_q_heads // num_kv_heads
    num_blocks = -(-metadata.decode_max_seq_len // block_size)
    tables = metadata.decode_block_tables[:, :num_blocks]
    length = num_blocks * block_size
    # [B, L, Hkv, D] -> [B, Hkv, L, D]
    keys = (
        key_rows(k_cache)[tables].reshape(batch, length, num_kv_heads, head_dim).transpose(1, 2).to(q.dtype)
    )
    values = (
        value_rows(v_cache)[tables].reshape(batch, length, num_kv_heads, head_dim).transpose(1, 2).to(q.dtype)
    )
    queries = q.view(batch, num_kv_heads, group, head_dim)
    scores = soft_cap(
        torch.matmul(queries, keys.transpose(-1, -2)).float() * scale, softcap
    )  # [B, Hkv, G, L]
    positions = torch.arange(length, device=q.device)
    pad = positions[None, :] >= metadata.decode_seq_lens[:, None]  # [B, L]
    if sliding_window:
        pad |= positions[None, :] < metadata.decode_seq_lens[:, None] - sliding_window
    scores.masked_fill_(pad[:, None, None, :], float("-inf"))
    probs = scores.softmax(dim=-1).to(q.dtype)
    return torch.matmul(probs, values).view(batch, num_q_heads, head_dim)


def _prefill_sdpa(
    q, k, v, scale: float, sliding_window: int | None, softcap: float | None = None
) -> torch.Tensor:
    """q: [n, Hq, D], the last n positions of k, v: [keys, Hkv, D]."""
    n = q.shape[0]
    qh = q.transpose(0, 1).unsqueeze(0)  # [1, Hq, n, D]
    kh = k.transpose(0, 1).unsqueeze(0)
    vh = v.transpose(0, 1).unsqueeze(0)
    if softcap:  # SDPA has no soft-capping: scores, cap, mask and softmax in float32, then the values
        group = q.shape[1] // k.shape[1]
        kh, vh = kh.repeat_interleave(group, dim=1), vh.repeat_interleave(group, dim=1)
        scores = soft_cap(torch.matmul(qh, kh.transpose(-1, -2)).float() * scale, softcap)
        scores.masked_fill_(~causal_mask(n, k.shape[0], sliding_window, q.device), float("-inf"))
        out = torch.matmul(scores.softmax(-1).to(q.dtype), vh)
        return out.squeeze(0).transpose(0, 1)
    if k.shape[0] == n and not (sliding_window and sliding_window < n):
        out = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, scale=scale, enable_gqa=True)
    else:
        mask = causal_mask(n, k.shape[0], sliding_window, q.device)
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=scale, enable_gqa=True)
    return out.squeeze(0).transpose(0, 1)
