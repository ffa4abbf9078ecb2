"""Triton kernels for attention over the paged KV cache: the CUDA backend's, verified on the CPU under
TRITON_INTERPRET=1 (tests/unit/attention/test_triton_kernels.py) against the reference backend.

The cache layout is the CPU backend's (attention/backend.py): keys `[blocks, Hkv, D, block_size]`, values
`[blocks, Hkv, block_size, D]`. A key tile `[D, BLOCK_N]` is then the right operand of `q @ k` as loaded, and
tokens are addressed one by one through the block table (block = table[token // block_size], offset = token %
block_size), so any block size works, including ones that are not a power of two.

- `write_kv`: K/V of the step's tokens into their slots; a negative slot (a padded CUDA-graph row) is skipped.
- `decode_attention`: one query token a sequence. A program takes one (sequence, KV head, partition of the
  context): its query heads (the GQA group, padded to 16 rows for the tensor cores) share every K/V load. Partials
  (running max, sum, unnormalised output) are merged by a second kernel, so long contexts spread over many programs
  (split-K) and a CUDA graph captured for `max_seq_len` replays for any shorter context.
- `prefill_attention`: the packed varlen batch of prefill chunks. A program takes (chunk, tile of BLOCK_M query
  rows, query head) and reads every key, cached prefix and the chunk's own, from the cache (which `write_kv` filled
  first), under the causal mask shifted by the chunk's context length.

Softmax runs in float32 (online, flash-attention style); float32 inputs multiply in IEEE float32 (no TF32), so the
float32 path matches the reference to ~1e-5.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedserve.attention.backend import to_cache_dtype

# Tokens of context one decode program reads: 256 keeps 8B-class batch-1 decode at ~32 programs a layer for a 2k
# context (8 KV heads x 4 partitions) while the merge stays small (one partial per 256 tokens).
DECODE_PARTITION = 256
# Key tile of every kernel; tl.dot needs at least 16 on each side.
BLOCK_N = 32
PREFILL_BLOCK_M = 64
MIN_DOT = 16


def _pow2(n: int, floor: int = MIN_DOT) -> int:
    return max(floor, triton.next_power_of_2(n))


@triton.jit
def _write_kv_kernel(
    k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh,
    kc_sb, kc_sh, kc_sd, kc_so,
    vc_sb, vc_sh, vc_so, vc_sd,
    block_size, head_dim,
    BLOCK_D: tl.constexpr,
):  # fmt: skip
    t = tl.program_id(0)
    h = tl.program_id(1)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    mask = (d < head_dim) & ((tl.zeros([BLOCK_D], tl.int64) + slot) >= 0)
    slot = tl.maximum(slot, 0)
    block = slot // block_size
    offset = slot % block_size
    k = tl.load(k_ptr + t * stride_kt + h * stride_kh + d, mask=mask, other=0.0)
    v = tl.load(v_ptr + t * stride_vt + h * stride_vh + d, mask=mask, other=0.0)
    key_at = k_cache_ptr + block * kc_sb + h * kc_sh + d * kc_sd + offset * kc_so
    value_at = v_cache_ptr + block * vc_sb + h * vc_sh + offset * vc_so + d * vc_sd
    tl.store(key_at, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(value_at, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _attend_keys(
    q, row_max, row_sum, acc, k_cache_ptr, v_cache_ptr, table_ptr, kv_head, n0, end, last_visible, window, d, d_mask,
    scale, softcap, block_size, kc_sb, kc_sh, kc_sd, kc_so, vc_sb, vc_sh, vc_so, vc_sd,
    BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    """One online-softmax step over keys [n0, n0 + BLOCK_N) below `end`, row r seeing keys <= last_visible[r] and,
    with a sliding window (window > 0), keys > last_visible[r] - window: the tile body decode and prefill share.
    softcap > 0: scores become softcap * tanh(score / softcap) (Gemma 2). Returns the updated (row_max, row_sum,
    acc). A row that sees no key of the tile keeps its state."""
    compute_dtype = q.dtype
    tok = n0 + tl.arange(0, BLOCK_N)
    t_mask = tok < end
    block = tl.load(table_ptr + tok // block_size, mask=t_mask, other=0).to(tl.int64)
    offset = tok % block_size
    k = tl.load(
        k_cache_ptr + block[None, :] * kc_sb + kv_head * kc_sh + d[:, None] * kc_sd + offset[None, :] * kc_so,
        mask=d_mask[:, None] & t_mask[None, :], other=0.0,
    ).to(compute_dtype)  # fmt: skip
    scores = _dot(q, k, IEEE) * scale  # [rows, BLOCK_N]
    if softcap > 0:
        # tanh(x) = 1 - 2 / (exp(2x) + 1): exp overflows to inf for large x (giving 1), underflows to 0 (giving -1).
        scores = softcap * (1.0 - 2.0 / (tl.exp(2.0 * scores / softcap) + 1.0))
    visible = (tok[None, :] <= last_visible[:, None]) & t_mask[None, :]
    if window > 0:
        visible = visible & (tok[None, :] > last_visible[:, None] - window)
    scores = tl.where(visible, scores, float("-inf"))
    new_max = tl.maximum(row_max, tl.max(scores, 1))
    # A row with nothing visible yet (a window starting past this tile) subtracts 0, not -inf: no NaN.
    safe_max = tl.where(new_max > float("-inf"), new_max, 0.0)
    p = tl.exp(scores - safe_max[:, None])
    alpha = tl.exp(row_max - safe_max)
    row_sum = row_sum * alpha + tl.sum(p, 1)
    v = tl.load(
        v_cache_ptr + block[:, None] * vc_sb + kv_head * vc_sh + offset[:, None] * vc_so + d[None, :] * vc_sd,
        mask=t_mask[:, None] & d_mask[None, :], other=0.0,
    ).to(compute_dtype)  # fmt: skip
    acc = acc * alpha[:, None] + _dot(p.to(compute_dtype), v, IEEE)
    return new_max, row_sum, acc


@triton.jit
def _decode_partial_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, tables_ptr, seq_lens_ptr,
    part_out_ptr, part_max_ptr, part_sum_ptr,
    scale, stride_qt, stride_qh, stride_tb,
    kc_sb, kc_sh, kc_sd, kc_so,
    vc_sb, vc_sh, vc_so, vc_sd,
    block_size, head_dim, group, num_q_heads, num_splits, window, softcap,
    PARTITION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr,
    IEEE: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + b)
    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, BLOCK_D)
    heads = kv_head * group + g
    g_mask = g < group
    d_mask = d < head_dim
    q = tl.load(
        q_ptr + b * stride_qt + heads[:, None] * stride_qh + d[None, :],
        mask=g_mask[:, None] & d_mask[None, :], other=0.0,
    )  # fmt: skip
    row_max = tl.full([BLOCK_G], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    start = split * PARTITION
    end = tl.minimum(seq_len, start + PARTITION)
    if window > 0:
        # Partitions wholly before the window read nothing (their partials weigh nothing in the merge).
        start = tl.maximum(start, seq_len - window)
    last_visible = tl.zeros([BLOCK_G], tl.int32) + (seq_len - 1)
    for n0 in range(start, end, BLOCK_N):
        row_max, row_sum, acc = _attend_keys(
            q, row_max, row_sum, acc, k_cache_ptr, v_cache_ptr, tables_ptr + b * stride_tb, kv_head, n0, end,
            last_visible, window, d, d_mask, scale, softcap, block_size, kc_sb, kc_sh, kc_sd, kc_so, vc_sb, vc_sh,
            vc_so, vc_sd, BLOCK_N, IEEE,
        )  # fmt: skip
    # Partials are [B, Hq, splits(, D)] float32.
    slot = (b * num_q_heads + heads) * num_splits + split
    tl.store(part_max_ptr + slot, row_max, mask=g_mask)
    tl.store(part_sum_ptr + slot, row_sum, mask=g_mask)
    tl.store(
        part_out_ptr + slot[:, None] * head_dim + d[None, :], acc, mask=g_mask[:, None] & d_mask[None, :]
    )


@triton.jit
def _decode_merge_kernel(
    part_out_ptr, part_max_ptr, part_sum_ptr, out_ptr,
    stride_ot, stride_oh, head_dim, num_q_heads, num_splits,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    h = tl.program_id(1)
    s = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    s_mask = s < num_splits
    d_mask = d < head_dim
    base = (b * num_q_heads + h) * num_splits
    part_max = tl.load(part_max_ptr + base + s, mask=s_mask, other=float("-inf"))
    part_sum = tl.load(part_sum_ptr + base + s, mask=s_mask, other=0.0)
    top = tl.max(part_max, 0)
    # Empty partitions (past the context, or a padded row with no context) weigh nothing.
    weight = tl.where(part_max > float("-inf"), tl.exp(part_max - top), 0.0)
    total = tl.sum(weight * part_sum, 0)
    parts = tl.load(
        part_out_ptr + (base + s[:, None]) * head_dim + d[None, :],
        mask=s_mask[:, None] & d_mask[None, :],
        other=0.0,
    )
    out = tl.sum(weight[:, None] * parts, 0) / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + b * stride_ot + h * stride_oh + d, out.to(out_ptr.dtype.element_ty), mask=d_mask)


@triton.jit
def _prefill_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, tables_ptr, q_starts_ptr, q_lens_ptr, context_lens_ptr,
    scale, stride_qt, stride_qh, stride_ot, stride_oh, stride_tb,
    kc_sb, kc_sh, kc_sd, kc_so,
    vc_sb, vc_sh, vc_so, vc_sd,
    block_size, head_dim, group, window, softcap,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    chunk = tl.program_id(0)
    tile = tl.program_id(1)
    head = tl.program_id(2)
    q_len = tl.load(q_lens_ptr + chunk)
    if tile * BLOCK_M < q_len:
        q_start = tl.load(q_starts_ptr + chunk)
        context = tl.load(context_lens_ptr + chunk)
        kv_head = head // group
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        d = tl.arange(0, BLOCK_D)
        r_mask = rows < q_len
        d_mask = d < head_dim
        q = tl.load(
            q_ptr + (q_start + rows)[:, None] * stride_qt + head * stride_qh + d[None, :],
            mask=r_mask[:, None] & d_mask[None, :], other=0.0,
        )  # fmt: skip
        positions = context + rows  # absolute position of each query row
        row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
        row_sum = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        # Keys up to the tile's last row (causal), never past the chunk.
        end = tl.minimum(context + q_len, context + (tile + 1) * BLOCK_M)
        # Keys from the tile's first row's window on (all of them without a window); every row sees itself.
        start = 0
        if window > 0:
            start = tl.maximum(context + tile * BLOCK_M - window + 1, 0)
        for n0 in range(start, end, BLOCK_N):
            row_max, row_sum, acc = _attend_keys(
                q, row_max, row_sum, acc, k_cache_ptr, v_cache_ptr, tables_ptr + chunk * stride_tb, kv_head, n0,
                end, positions, window, d, d_mask, scale, softcap, block_size, kc_sb, kc_sh, kc_sd, kc_so, vc_sb,
                vc_sh, vc_so, vc_sd, BLOCK_N, IEEE,
            )  # fmt: skip
        # Padded rows past the chunk may see no key under a window: divide them by 1, not 0 (never stored).
        out = acc / tl.where(row_sum > 0, row_sum, 1.0)[:, None]
        tl.store(
            out_ptr + (q_start + rows)[:, None] * stride_ot + head * stride_oh + d[None, :],
            out.to(out_ptr.dtype.element_ty), mask=r_mask[:, None] & d_mask[None, :],
        )  # fmt: skip


def _cache_strides(k_cache: torch.Tensor, v_cache: torch.Tensor) -> tuple[int, ...]:
    # keys [blocks, Hkv, D, block_size]: (block, head, dim, offset); values [blocks, Hkv, block_size, D]:
    # (block, head, offset, dim)
    return (*k_cache.stride(), *v_cache.stride())


def _ieee_products(dtype: torch.dtype) -> bool:
    """float32 products in IEEE float32, not TF32. Under the interpreter also 16-bit ones: its tl.dot multiplies
    bfloat16 bit patterns as integers (triton 3.9), so there they are widened first; on a GPU they go to the tensor
    cores as they are."""
    return dtype == torch.float32 or bool(triton.knobs.runtime.interpret)


def _rows_ok(x: torch.Tensor) -> torch.Tensor:
    """[T, H, D] with unit stride along D (the kernels index D directly); q/k/v slices of a fused QKV already are."""
    return x if x.stride(-1) == 1 else x.contiguous()


def num_decode_splits(max_seq_len: int, block_size: int) -> int:
    """Partitions of the longest context: the decode grid's third dimension (fixed per CUDA graph)."""
    return max(1, triton.cdiv(max_seq_len, decode_partition(block_size)))


def decode_partition(block_size: int) -> int:
    """DECODE_PARTITION tokens, or one block where blocks are larger."""
    return max(DECODE_PARTITION, triton.next_power_of_2(block_size))


def write_kv(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """K/V [T, Hkv, D] into the cache slots `slot_mapping` [T] (negative slots are skipped)."""
    num_tokens, num_kv_heads, head_dim = k.shape
    if num_tokens == 0:
        return
    if k_cache.dtype != k.dtype:
        # Rounded by PyTorch's cast (float8 saturating as attention/backend.py does) and copied as stored: one
        # rounding everywhere, and Triton's interpreter rounds float8 and bfloat16 stores differently from CUDA
        # (bfloat16 by truncation).
        k, v = to_cache_dtype(k, k_cache), to_cache_dtype(v, v_cache)
    if k_cache.dtype == torch.float8_e4m3fn:
        k, v = k.view(torch.uint8), v.view(torch.uint8)
        k_cache, v_cache = k_cache.view(torch.uint8), v_cache.view(torch.uint8)
    k, v = _rows_ok(k), _rows_ok(v)
    _write_kv_kernel[(num_tokens, num_kv_heads)](
        k, v, k_cache, v_cache, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        *_cache_strides(k_cache, v_cache),
        v_cache.shape[2], head_dim,
        BLOCK_D=triton.next_power_of_2(head_dim),
    )  # fmt: skip


def decode_attention(
    q: torch.Tensor,  # [B, Hq, D]
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [B, max_blocks]
    seq_lens: torch.Tensor,  # [B]; 0 for a padded row (output 0)
    scale: float,
    num_splits: int,
    out: torch.Tensor,  # [B, Hq, D]
    sliding_window: int | None = None,  # a query sees only its last this many keys
    softcap: float | None = None,  # scores become softcap * tanh(score / softcap)
) -> torch.Tensor:
    batch, num_q_heads, head_dim = q.shape
    num_kv_heads, block_size = v_cache.shape[1], v_cache.shape[2]
    group = num_q_heads // num_kv_heads
    q = _rows_ok(q)
    part_out = torch.empty(batch, num_q_heads, num_splits, head_dim, dtype=torch.float32, device=q.device)
    part_max = torch.empty(batch, num_q_heads, num_splits, dtype=torch.float32, device=q.device)
    part_sum = torch.empty_like(part_max)
    block_d = _pow2(head_dim)
    _decode_partial_kernel[(batch, num_kv_heads, num_splits)](
        q, k_cache, v_cache, block_tables, seq_lens, part_out, part_max, part_sum,
        scale, q.stride(0), q.stride(1), block_tables.stride(0),
        *_cache_strides(k_cache, v_cache),
        block_size, head_dim, group, num_q_heads, num_splits, sliding_window or 0, float(softcap or 0.0),
        PARTITION=decode_partition(block_size), BLOCK_N=BLOCK_N, BLOCK_G=_pow2(group), BLOCK_D=block_d,
        IEEE=_ieee_products(q.dtype),
    )  # fmt: skip
    _decode_merge_kernel[(batch, num_q_heads)](
        part_out, part_max, part_sum, out, out.stride(0), out.stride(1), head_dim, num_q_heads, num_splits,
        BLOCK_S=triton.next_power_of_2(num_splits), BLOCK_D=block_d,
    )  # fmt: skip
    return out


def prefill_attention(
    q: torch.Tensor,  # [T, Hq, D]: the step's rows; chunks address theirs by q_starts
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [P, max_blocks]
    q_starts: torch.Tensor,  # [P] first row of each chunk
    q_lens: torch.Tensor,  # [P] rows of each chunk
    context_lens: torch.Tensor,  # [P] tokens cached before each chunk
    max_q_len: int,
    scale: float,
    out: torch.Tensor,  # [T, Hq, D]
    sliding_window: int | None = None,  # a query sees only its last this many keys
    softcap: float | None = None,  # scores become softcap * tanh(score / softcap)
) -> torch.Tensor:
    num_chunks = q_starts.shape[0]
    _, num_q_heads, head_dim = q.shape
    num_kv_heads, block_size = v_cache.shape[1], v_cache.shape[2]
    q = _rows_ok(q)
    grid = (num_chunks, triton.cdiv(max_q_len, PREFILL_BLOCK_M), num_q_heads)
    _prefill_kernel[grid](
        q, k_cache, v_cache, out, block_tables, q_starts, q_lens, context_lens,
        scale, q.stride(0), q.stride(1), out.stride(0), out.stride(1), block_tables.stride(0),
        *_cache_strides(k_cache, v_cache),
        block_size, head_dim, num_q_heads // num_kv_heads, sliding_window or 0, float(softcap or 0.0),
        BLOCK_M=PREFILL_BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=_pow2(head_dim), IEEE=_ieee_products(q.dtype),
    )  # fmt: skip
    return out
