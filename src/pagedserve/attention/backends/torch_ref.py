"""The oracle: one sequence at a time, gather its blocks, plain softmax attention in float32. Slow and obvious."""

from __future__ import annotations

import torch

from pagedserve.attention.backend import (
    AttentionMetadata,
    causal_mask,
    gather_sequence_kv,
    key_rows,
    soft_cap,
    value_rows,
    write_kv_cache,
)


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    sliding_window: int | None,
    softcap: float | None,
) -> torch.Tensor:
    """q: [n, Hq, D], the last n of the sequence's positions; k, v: [every position, Hkv, D]."""
    n, num_q_heads, _ = q.shape
    group = num_q_heads // k.shape[1]
    k = k.repeat_interleave(group, dim=1).float()
    v = v.repeat_interleave(group, dim=1).float()
    scores = soft_cap(torch.einsum("qhd,khd->hqk", q.float(), k) * scale, softcap)
    allowed = causal_mask(n, k.shape[0], sliding_window, q.device)
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = scores.softmax(dim=-1)
    return torch.einsum("hqk,khd->qhd", probs, v).to(q.dtype)


class TorchReferenceBackend:
    name = "torch_ref"

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
        write_kv_cache(k, v, k_cache, v_cache, metadata.slot_mapping)
        out = torch.empty_like(q)
        for i in range(metadata.num_decode_tokens):
            seq_len = int(metadata.decode_seq_lens[i])
            table = metadata.decode_block_tables[i]
            ks = gather_sequence_kv(key_rows(k_cache), table, seq_len)
            vs = gather_sequence_kv(value_rows(v_cache), table, seq_len)
            out[i : i + 1] = _attend(q[i : i + 1], ks, vs, scale, sliding_window, softcap)
        for chunk in metadata.prefills:
            total = chunk.context_len + chunk.num_tokens
            ks = gather_sequence_kv(key_rows(k_cache), chunk.block_table, total)
            vs = gather_sequence_kv(value_rows(v_cache), chunk.block_table, total)
            rows = slice(chunk.token_start, chunk.token_start + chunk.num_tokens)
            out[rows] = _attend(q[rows], ks, vs, scale, sliding_window, softcap)
        return out
