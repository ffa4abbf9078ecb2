"""Truncation of the distribution of random rows: min_p, then top_k / top_p (vLLM V1 order).

The filters work on unnormalised probabilities `weights = exp(logits / T - max)` [R, V], whose largest entry
is exactly 1 in every row, and zero out removed tokens in place. The sampler needs these weights anyway, so no
softmax or logsumexp over the vocabulary is spent on filtering. Each filter keeps a prefix of the tokens
sorted by weight, so it reduces to one threshold per row; tokens tied with the threshold are all kept.
"""

from __future__ import annotations

import torch

# On the CPU a full sort of [256, 49152] costs ~25x torch.topk(512). Top-p first looks at this many candidates
# per row, then at more for the rows whose nucleus is wider, and sorts whole rows only for the few left (on
# real SmolLM2 logits at temperature 1, top_p 0.95 the nucleus has a median of ~1000 tokens, max ~8000).
_CPU_TOP_P_CANDIDATES = (512, 4096)
# Above this fraction of the vocabulary topk is no cheaper than a sort.
_TOPK_SORT_FRACTION = 0.25


def apply_min_p(weights: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Drop tokens whose probability is below min_p times the most likely token's (whose weight is 1)."""
    return weights.masked_fill_(weights < min_p.unsqueeze(1), 0.0)


def apply_top_k_top_p(
    weights: torch.Tensor,
    top_k: torch.Tensor | None,
    top_p: torch.Tensor | None,
    max_top_k: int,
    truncated_rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """top_k: [R] int64 (V = off); top_p: [R] float32 (1.0 = off); max_top_k: largest k below V;
    truncated_rows: the rows using either filter when only some do (the others are left alone)."""
    if top_k is None and top_p is None:
        return weights
    vocab_size = weights.shape[-1]
    if top_p is None:
        sizes = [max_top_k]
    elif weights.device.type == "cpu":
        sizes = sorted({max(max_top_k, size) for size in _CPU_TOP_P_CANDIDATES}) + [vocab_size]
    else:
        sizes = [vocab_size]  # a sort is cheap there, and a data-dependent retry would cost a device sync
    sizes = sorted({vocab_size if size > vocab_size * _TOPK_SORT_FRACTION else size for size in sizes})

    # top-p of rows without top-k normalises over the whole row: summed once, whatever the candidates.
    row_total = weights.sum(dim=-1) if top_p is not None else None
    threshold = torch.zeros(weights.shape[0], dtype=weights.dtype, device=weights.device)
    rows = (
        truncated_rows
        if truncated_rows is not None
        else torch.arange(weights.shape[0], device=weights.device)
    )
    for size in sizes:
        row_weights = weights if rows.numel() == weights.shape[0] else weights[rows]
        row_threshold, needs_more = _thresholds(
            _sorted_candidates(row_weights, size),
            vocab_size,
            None if top_k is None else top_k[rows],
            None if top_p is None else top_p[rows],
            None if row_total is None else row_total[rows],
        )
        threshold[rows] = row_threshold
        if needs_more is None:
            break
        rows = rows[needs_more]
        if rows.numel() == 0:
            break
    return weights.masked_fill_(weights < threshold.unsqueeze(1), 0.0)


def _sorted_candidates(weights: torch.Tensor, count: int) -> torch.Tensor:
    """The `count` largest weights of each row, in descending order."""
    if count >= weights.shape[-1]:
        return weights.sort(dim=-1, descending=True).values
    return weights.topk(count, dim=-1, sorted=True).values


def _thresholds(
    candidates: torch.Tensor,
    vocab_size: int,
    top_k: torch.Tensor | None,
    top_p: torch.Tensor | None,
    row_total: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-row smallest weight to keep ([R], 0 = keep all), and which rows need more candidates (None when
    the candidates are the whole vocabulary)."""
    num_rows, num_candidates = candidates.shape
    device = candidates.device
    no_top_k = torch.ones(num_rows, dtype=torch.bool, device=device)
    keep_count = torch.full((num_rows,), num_candidates, dtype=torch.int64, device=device)
    if top_k is not None:
        no_top_k = top_k >= vocab_size
        keep_count = top_k.clamp(max=num_candidates)
    unrestricted = no_top_k
    needs_more = None

    if top_p is not None:
        assert row_total is not None, "top-p comes with the rows' total weights"
        positions = torch.arange(num_candidates, device=device)
        in_top_k = candidates.masked_fill(positions.unsqueeze(0) >= keep_count.unsqueeze(1), 0.0)
        # top-p works on the distribution left by top-k: normalise over the k survivors, or the whole row.
        normaliser = torch.where(no_top_k, row_total, in_top_k.sum(dim=-1))
        cumulative = in_top_k.cumsum_(dim=-1).div_(normaliser.unsqueeze(1))
        # Token i is kept while the mass strictly before it is below p, so the top token always stays.
        # Counting on the (monotone) cumulative sum keeps the kept set a prefix despite rounding.
        p_count = 1 + (cumulative[:, :-1] < top_p.unsqueeze(1)).sum(dim=-1)
        uses_top_p = top_p < 1.0
        keep_count = torch.where(uses_top_p, torch.minimum(keep_count, p_count), keep_count)
        unrestricted = no_top_k & ~uses_top_p
        if num_candidates < vocab_size:
            needs_more = uses_top_p & no_top_k & (cumulative[:, -1] < top_p)

    threshold = candidates.gather(1, (keep_count - 1).unsqueeze(1)).squeeze(1)
    return threshold.masked_fill_(unrestricted, 0.0), needs_more
