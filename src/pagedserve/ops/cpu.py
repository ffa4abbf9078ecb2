"""PyTorch-facing wrappers of the C kernels (see build.py). Each one checks what the C code assumes (device,
dtype, layout) in `usable_*`; callers fall back to their PyTorch path when that returns False."""

from __future__ import annotations

import torch

from pagedserve.ops import build

DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1}  # the kernels' dtype argument


def available(*tensors: torch.Tensor) -> bool:
    """True when the kernels are built and every tensor is a CPU tensor of a dtype they handle."""
    return (
        all(t.device.type == "cpu" and t.dtype in DTYPE_CODES for t in tensors) and build.load() is not None
    )


def supports(dtype: torch.dtype) -> bool:
    return dtype in DTYPE_CODES


def _code(tensor: torch.Tensor) -> int:
    return DTYPE_CODES[tensor.dtype]


def argmax(logits: torch.Tensor) -> torch.Tensor:
    """torch.argmax(logits, dim=-1) over float32 or bfloat16 rows on the CPU, in C: PyTorch's bfloat16 argmax is
    scalar and its float32 one ~12x slower than the kernel (csrc/argmax.c). NaN is never chosen."""
    if logits.dim() != 2 or not available(logits):
        # Without the kernel a float32 copy is still faster than PyTorch's scalar bfloat16 argmax.
        return (logits.float() if logits.dtype == torch.bfloat16 else logits).argmax(dim=-1)
    library = build.load()
    logits = logits.contiguous()
    out = torch.empty(logits.shape[0], dtype=torch.int64)
    library.argmax_rows(
        logits.data_ptr(), out.data_ptr(), *logits.shape, _code(logits), torch.get_num_threads()
    )
    return out


def apply_token_bitmask(logits: torch.Tensor, rows: torch.Tensor, masks: torch.Tensor) -> bool:
    """Set the tokens each constrained row's grammar forbids to -inf, in place (csrc/token_bitmask.c).
    logits [B, V] float32 contiguous, rows [R] int64, masks [R, words] int32. False: no kernel here."""
    if logits.dtype != torch.float32 or not logits.is_contiguous() or not available(logits):
        return False
    library = build.load()
    library.apply_token_bitmask_f32(
        logits.data_ptr(), logits.shape[1], rows.data_ptr(), rows.shape[0], masks.data_ptr(), masks.shape[1]
    )
    return True


GEMV_MAX_ROWS = 4  # csrc/gemv.c


def can_gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Small-batch products go through the C GEMV (memory-bound: it reads the weights faster than the GEMM)."""
    return (
        x.dim() == 2
        and 1 <= x.shape[0] <= GEMV_MAX_ROWS
        and x.dtype == weight.dtype
        and x.dtype in DTYPE_CODES
        and (bias is None or (bias.dtype == x.dtype and bias.is_contiguous()))
        and x.is_contiguous()
        and weight.is_contiguous()
        and available(x, weight)
    )


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [rows, k] @ weight [n, k]^T (+ bias) for rows <= GEMV_MAX_ROWS, float32 or bfloat16 (what `can_gemv`
    accepts); float32 sums, rounded once to the dtype."""
    library = build.load()
    # Callers check can_gemv first (linear() does): checking again doubled the Python work of every call.
    assert library is not None and x.dtype == weight.dtype and x.shape[1] == weight.shape[1]
    rows, k = x.shape
    n = weight.shape[0]
    out = torch.empty(rows, n, dtype=x.dtype)
    failed = library.gemv(
        x.data_ptr(), weight.data_ptr(), None if bias is None else bias.data_ptr(), out.data_ptr(), rows, n, k,
        _code(x), torch.get_num_threads(),
    )  # fmt: skip
    if failed:
        raise MemoryError("GEMV kernel could not allocate its scratch memory")
    return out


def can_mixed_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """float32 activations with bfloat16 weights (and a float32 bias): what `mixed_gemm` multiplies."""
    return (
        x.dim() == 2
        and x.dtype == torch.float32
        and weight.dtype == torch.bfloat16
        and (bias is None or (bias.dtype == torch.float32 and bias.is_contiguous()))
        and x.is_contiguous()
        and weight.is_contiguous()
        and available(x, weight)
    )


def mixed_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [m, k] float32 @ weight [n, k]^T bfloat16 (+ bias) -> float32, weights widened in registers."""
    library = build.load()
    assert (
        library is not None and x.dtype == torch.float32 and weight.dtype == torch.bfloat16
    )  # can_mixed_gemm
    assert x.shape[1] == weight.shape[1]
    m, k = x.shape
    n = weight.shape[0]
    out = torch.empty(m, n, dtype=torch.float32)
    failed = library.gemm_f32_bf16w(
        x.data_ptr(), weight.data_ptr(), None if bias is None else bias.data_ptr(), out.data_ptr(), m, n, k,
        torch.get_num_threads(),
    )  # fmt: skip
    if failed:
        raise MemoryError("mixed GEMM kernel could not allocate its scratch memory")
    return out


_BF16_F32_WEIGHT = 2  # the norms' code for bfloat16 activations with a float32 weight (csrc/layer_ops.c)


def norm_code(x: torch.Tensor, weight: torch.Tensor) -> int | None:
    """The norms' dtype code for these activations and weight: their shared dtype, or bfloat16 activations with a
    float32 weight (Gemma's 1 + weight); None when the kernels take neither."""
    if x.dtype == weight.dtype and x.dtype in DTYPE_CODES:
        return DTYPE_CODES[x.dtype]
    if x.dtype == torch.bfloat16 and weight.dtype == torch.float32:
        return _BF16_F32_WEIGHT
    return None


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor:
    """RMSNorm of `x` (2-D, contiguous); with `residual`, first `residual += x` in place and normalise that. The
    weight is in x's dtype, or float32 under bfloat16 activations (`norm_code`)."""
    library = build.load()
    code = norm_code(x, weight)
    assert library is not None and x.is_contiguous() and code is not None
    assert residual is None or (residual.is_contiguous() and residual.shape == x.shape)
    out = torch.empty_like(x)
    rows, hidden = x.shape
    library.rms_norm(
        x.data_ptr(), None if residual is None else residual.data_ptr(), weight.data_ptr(), out.data_ptr(),
        rows, hidden, eps, code, torch.get_num_threads(),
    )  # fmt: skip
    return out


def rms_norm_heads_(
    x: torch.Tensor, weight_a: torch.Tensor, weight_b: torch.Tensor, split: int, eps: float
) -> torch.Tensor:
    """RMSNorm of each head of x: [rows, heads, head_dim] in place (rows may be strided): heads before `split`
    with weight_a, the rest with weight_b (weights as `rms_norm`'s). Returns x."""
    library = build.load()
    rows, heads, head_dim = x.shape
    code = norm_code(x, weight_a)
    assert library is not None and usable_rows(x) and weight_a.dtype == weight_b.dtype and code is not None
    assert (
        weight_a.shape == weight_b.shape == (head_dim,)
        and weight_a.is_contiguous()
        and weight_b.is_contiguous()
    )
    library.rms_norm_heads(
        x.data_ptr(), weight_a.data_ptr(), weight_b.data_ptr(), rows, x.stride(0), heads, split, head_dim, eps,
        code, torch.get_num_threads(),
    )  # fmt: skip
    return x


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x: [rows, 2 * inter] (gate | up), contiguous -> silu(gate) * up."""
    return _gated_mul("silu_and_mul", x)


def gelu_tanh_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x: [rows, 2 * inter] (gate | up), contiguous -> gelu(gate, approximate="tanh") * up (Gemma)."""
    return _gated_mul("gelu_tanh_and_mul", x)


def _gated_mul(kernel: str, x: torch.Tensor) -> torch.Tensor:
    library = build.load()
    assert library is not None and x.is_contiguous()
    rows, width = x.shape
    out = torch.empty(rows, width // 2, dtype=x.dtype)
    getattr(library, kernel)(
        x.data_ptr(), out.data_ptr(), rows, width // 2, _code(x), torch.get_num_threads()
    )
    return out


def rotary_neox_(
    x: torch.Tensor, positions: torch.Tensor, cos_cache: torch.Tensor, sin_cache: torch.Tensor
) -> None:
    """Rotates x: [rows, heads, head_dim] in place (rows may be strided, heads and dims contiguous): the first
    cos_cache.shape[1] values of each head (all of them, or part with partial rotary)."""
    library = build.load()
    rows, heads, head_dim = x.shape
    rot_dim = cos_cache.shape[1]
    assert library is not None and x.stride(2) == 1 and x.stride(1) == head_dim and rot_dim <= head_dim
    assert cos_cache.dtype == torch.float32 and cos_cache.is_contiguous() and sin_cache.is_contiguous()
    assert positions.dtype == torch.int64 and positions.is_contiguous() and positions.shape == (rows,)
    failed = library.rotary_neox(
        x.data_ptr(), positions.data_ptr(), cos_cache.data_ptr(), sin_cache.data_ptr(), rows, heads, rot_dim,
        head_dim, x.stride(0), cos_cache.shape[0], _code(x), torch.get_num_threads(),
    )  # fmt: skip
    if failed:
        raise ValueError(f"a position is outside the rotary table (0..{cos_cache.shape[0] - 1})")


def usable_rows(x: torch.Tensor) -> bool:
    """[rows, heads, head_dim] with contiguous heads and dims (rows may be strided): what the kernels read."""
    return x.dim() == 3 and x.stride(2) == 1 and x.stride(1) == x.shape[2]


# The kernels' cache_dtype code for each (activations, cache) dtype pair they take (csrc/paged_decode.c,
# csrc/layer_ops.c): the activations' dtype, float8 e4m3 under either, or bfloat16 under float32 (the model's
# matrices bfloat16, its compute float32: worker/kv_cache.py).
_CACHE_CODES = {
    (torch.float32, torch.float32): 0,
    (torch.bfloat16, torch.bfloat16): 1,
    (torch.float32, torch.bfloat16): 1,
    (torch.float32, torch.float8_e4m3fn): 2,
    (torch.bfloat16, torch.float8_e4m3fn): 2,
}


def _cache_code(activations: torch.Tensor, cache: torch.Tensor) -> int | None:
    return _CACHE_CODES.get((activations.dtype, cache.dtype))


def can_write_kv_cache(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor) -> bool:
    """K/V in the cache's dtype, float32 / bfloat16 K/V into a float8 e4m3 cache (converted as PyTorch casts
    after saturating at +-448: attention/backend.py::to_cache_dtype), or float32 K/V into a bfloat16 cache
    (rounded to nearest even, as PyTorch's cast)."""
    return (
        available(key, value)
        and k_cache.device.type == "cpu"
        and key.dtype == value.dtype
        and _cache_code(key, k_cache) is not None
        and usable_rows(key)
        and usable_rows(value)
        and (key.shape[0] == 1 or key.stride(0) == value.stride(0))  # one row: its stride means nothing
    )


def write_kv_cache(
    key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor
) -> None:
    """key, value: [rows, kv_heads, head_dim] with the same row stride; caches as attention/backend.py."""
    library = build.load()
    assert library is not None and can_write_kv_cache(key, value, k_cache)
    assert k_cache.is_contiguous() and v_cache.is_contiguous() and slots.dtype == torch.int64
    slots = slots.contiguous()
    rows, kv_heads, head_dim = key.shape
    num_blocks, _, block_size, _ = v_cache.shape
    failed = library.write_kv_cache(
        key.data_ptr(), value.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), slots.data_ptr(), rows,
        kv_heads, head_dim, block_size, key.stride(0), num_blocks * block_size, _code(key), _cache_code(key, k_cache),
    )  # fmt: skip
    if failed:
        raise ValueError("a slot in slot_mapping is outside the KV cache")


def can_decode_from(q: torch.Tensor, k_cache: torch.Tensor) -> bool:
    """The decode kernel reads a cache in q's dtype (float32, bfloat16), in float8 e4m3 (--kv-cache-dtype fp8) or
    in bfloat16 under float32 q."""
    return (
        q.device.type == "cpu"
        and q.dtype in DTYPE_CODES
        and _cache_code(q, k_cache) is not None
        and build.load() is not None
    )


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """q: [batch, q_heads, head_dim] (rows may be strided) -> [batch, q_heads, head_dim], contiguous. The cache
    is one `can_decode_from` takes. sliding_window: each query sees only its last that many
    keys; softcap: scores become softcap * tanh(score / softcap) (Gemma 2)."""
    library = build.load()
    assert library is not None and usable_rows(q) and k_cache.is_contiguous() and v_cache.is_contiguous()
    batch, num_q_heads, head_dim = q.shape
    _, num_kv_heads, block_size, _ = v_cache.shape
    # The kernel reads both as int64: an int32 table read as int64 walks off its end (a segfault, not an error).
    for name, index in (("block_tables", block_tables), ("seq_lens", seq_lens)):
        if index.dtype != torch.int64:
            raise ValueError(f"decode attention's {name} must be int64, got {index.dtype}")
    tables = block_tables.contiguous()
    lens = seq_lens.contiguous()
    out = torch.empty(batch, num_q_heads, head_dim, dtype=q.dtype)
    failed = library.paged_decode_attention(
        q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), out.data_ptr(), tables.data_ptr(), lens.data_ptr(),
        batch, num_q_heads, num_kv_heads, head_dim, block_size, tables.shape[1], q.stride(0), scale, _code(q),
        _cache_code(q, k_cache), torch.get_num_threads(),
        sliding_window or 0, softcap or 0.0,
    )  # fmt: skip
    if failed == 1:
        raise MemoryError("decode attention kernel could not allocate its scratch memory")
    if failed:
        raise ValueError("a decode sequence length is outside its block table")
    return out


def can_lora_delta(x: torch.Tensor, out: torch.Tensor) -> bool:
    """What `lora_delta` takes: CPU rows of float32 or bfloat16, x contiguous, out's rows contiguous."""
    return (
        x.dim() == 2
        and out.dim() == 2
        and x.dtype == out.dtype
        and x.is_contiguous()
        and out.stride(1) == 1
        and available(x, out)
    )


def lora_delta(
    x: torch.Tensor,
    out: torch.Tensor,
    a: torch.Tensor,
    bt: torch.Tensor,
    ranks: torch.Tensor,
    slot_of_row: torch.Tensor,
) -> None:
    """out[r] += bt[s, :ranks[s]].T @ (a[s, :ranks[s]] @ x[r]) for each row r with slot s = slot_of_row[r] >= 0
    (csrc/lora_delta.c); a [slots, max_rank, in], bt [slots, max_rank, out], float32; ranks, slot_of_row int32."""
    library = build.load()
    assert library is not None and a.dtype == bt.dtype == torch.float32 and slot_of_row.dtype == torch.int32
    rows, k = x.shape
    failed = library.lora_delta(
        x.data_ptr(), out.data_ptr(), a.data_ptr(), bt.data_ptr(), ranks.data_ptr(), slot_of_row.data_ptr(), rows, k,
        out.shape[1], out.stride(0), a.shape[1], a.shape[0], _code(x), torch.get_num_threads(),
    )  # fmt: skip
    if failed == 1:
        raise MemoryError("lora_delta could not allocate its row buffer")
    if failed:
        raise ValueError("lora_delta: a slot index or a rank out of range")
