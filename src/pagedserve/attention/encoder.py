"""Bidirectional attention of encoder models (BERT, XLM-RoBERTa): every token of a prompt sees every other one.

Encoders pool each prompt into one vector and never decode, so nothing is read from or written to the KV cache: each
prompt runs whole in one step (the engine turns chunked prefill and prefix caching off for them, as vLLM does), and
its attention is one SDPA call over its own rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pagedserve.attention.backend import AttentionMetadata


def encoder_attention(
    q: torch.Tensor,  # [T, H, D]
    k: torch.Tensor,  # [T, H, D]
    v: torch.Tensor,  # [T, H, D]
    metadata: AttentionMetadata,
    scale: float,
) -> torch.Tensor:  # [T, H, D]
    if metadata.num_decode_tokens:
        raise ValueError("an encoder model has no decode steps: its prompts are pooled, never continued")
    out = torch.empty_like(q)
    for chunk in metadata.prefills:
        if chunk.context_len:
            raise ValueError(
                "an encoder model's prompt must run whole in one step (no chunked prefill, no prefix caching)"
            )
        rows = slice(chunk.token_start, chunk.token_start + chunk.num_tokens)
        # [1, H, n, D]: one prompt, its heads as SDPA's batch of independent attentions.
        q_i, k_i, v_i = (x[rows].transpose(0, 1).unsqueeze(0) for x in (q, k, v))
        attended = F.scaled_dot_product_attention(q_i, k_i, v_i, scale=scale)
        out[rows] = attended.squeeze(0).transpose(0, 1)
    return out
