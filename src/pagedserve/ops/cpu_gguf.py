"""PyTorch-facing wrappers of the GGUF block kernels (csrc/gguf.c, panel_gemm.c, gguf_moe.c) that
layers/gguf_quant.py and layers/moe.py multiply GGUF matrices with: blocks uint8 [rows, row bytes], activations
float32 (or bfloat16 for the bfloat16 panels)."""

from __future__ import annotations

import torch

from pagedserve.ops import build


def can_gguf(*tensors: torch.Tensor) -> bool:
    """GGUF kernels: built, every tensor on the CPU and contiguous (x float32, weights uint8 blocks)."""
    return all(t.device.type == "cpu" and t.is_contiguous() for t in tensors) and build.load() is not None


def gguf_dequantize(data: torch.Tensor, qtype: int, cols: int, interleave: int = 1) -> torch.Tensor:
    """GGUF blocks uint8 [rows, cols / 32 * block bytes] of GGML type `qtype`, rows interleaved by `interleave`
    (csrc/gguf.h) -> float32 [rows, cols] in natural row order."""
    library = build.load()
    assert library is not None and data.dtype == torch.uint8  # can_gguf
    out = torch.empty(data.shape[0], cols, dtype=torch.float32)
    if library.gguf_dequantize(
        data.data_ptr(), qtype, out.data_ptr(), data.shape[0], cols, interleave, torch.get_num_threads()
    ):
        raise ValueError(f"GGUF type {qtype} with {cols} columns is not a layout the kernel reads")
    return out


# (library, GGML type) -> gguf_gemv_max_rows: asked per matrix call by the layers (two ctypes calls, ~1 us each, on
# every eager step's every matrix); the library is the level's, kept loaded for the process (build.load_level).
_max_rows: dict[tuple[int, int], int] = {}
_bf16_panels: dict[int, bool] = {}


def gemv_max_rows(qtype: int) -> int:
    """Rows past which gguf_gemm leaves the GEMVs for the panels: 32 for every kept type on the AVX-512 levels,
    else 8 (csrc/gguf.c gguf_gemv_max_rows)."""
    library = build.load()
    assert library is not None
    key = (id(library), qtype)
    if key not in _max_rows:
        _max_rows[key] = int(library.gguf_gemv_max_rows(qtype))
    return _max_rows[key]


def has_bf16_panels() -> bool:
    """True where `gguf_gemm` multiplies bfloat16 rows (the avx512_bf16 kernel level)."""
    library = build.load()
    if library is None:
        return False
    if id(library) not in _bf16_panels:
        _bf16_panels[id(library)] = bool(library.gguf_has_bf16_panels())
    return _bf16_panels[id(library)]


def gguf_gemm(
    x: torch.Tensor,
    data: torch.Tensor,
    qtype: int,
    cols: int,
    bias: torch.Tensor | None,
    interleave: int = 1,
    out: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """x float32 [m, cols] @ the dequantized blocks^T (+ float32 bias), the blocks' rows interleaved by
    `interleave` (csrc/gguf.h); into `out` when given (float32 [m, n] whose rows may be a wider tensor's: one part
    of a merged layer's output). None when this ISA level's kernel does not take m rows (the caller dequantizes
    and uses the GEMM). x bfloat16: the bfloat16 panels (m > `gemv_max_rows`, where `has_bf16_panels`; the weights
    rounded to bfloat16, float32 sums and out; csrc/panel_gemm.c)."""
    library = build.load()
    bf16 = x.dtype == torch.bfloat16
    assert library is not None and x.dtype in (torch.float32, torch.bfloat16) and data.dtype == torch.uint8
    m, n = x.shape[0], data.shape[0]
    if out is None:
        out = torch.empty(m, n, dtype=torch.float32)
    assert out.dtype == torch.float32 and out.shape == (m, n) and (out.stride(1) == 1 or n == 1)
    failed = (library.gguf_gemm_bf16 if bf16 else library.gguf_gemm)(
        x.data_ptr(), data.data_ptr(), qtype, None if bias is None else bias.data_ptr(), out.data_ptr(), m, n, cols,
        interleave, out.stride(0) if m > 1 else n, torch.get_num_threads(),
    )  # fmt: skip
    if failed == 3 and bf16:
        raise ValueError(
            f"bfloat16 GGUF panels take more than {gemv_max_rows(qtype)} rows on the avx512_bf16 level"
        )
    if failed == 3:
        return None
    if failed == 2:
        raise MemoryError("GGUF kernel could not allocate its scratch memory")
    if failed:
        raise ValueError(f"GGUF type {qtype} with {cols} columns is not a layout the kernel reads")
    return out


def gguf_moe(
    x: torch.Tensor,
    router: torch.Tensor | None,
    logits: torch.Tensor | None,
    gate_up: tuple[torch.Tensor, int, int],
    down: tuple[torch.Tensor, int, int],
    inter: int,
    top_k: int,
    renormalize: bool,
    shared: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """A mixture-of-experts block for a few tokens (csrc/gguf_moe.c): x float32 [m, hidden]; either the router's
    weight float32 [experts, hidden] (the kernel multiplies) or its logits float32 [m, experts]; gate_up / down:
    (each expert's blocks' addresses int64 [experts], GGML type, interleave); shared: Qwen2-MoE's shared expert
    output float32 [m, hidden] and its gate: the weight float32 [1, hidden] (the kernel multiplies) or the logits
    float32 [m, 1] (or None). float32 [m, hidden]."""
    library = build.load()
    assert library is not None and x.dtype == torch.float32 and (router is None) != (logits is None)
    m, hidden = x.shape
    experts = gate_up[0].shape[0]
    out = torch.empty(m, hidden, dtype=torch.float32)
    shared_out, gate = (None, None) if shared is None else shared
    gate_weight = gate if gate is not None and gate.shape == (1, hidden) else None
    gate_logits = gate if gate is not None and gate_weight is None else None
    failed = library.gguf_moe(
        x.data_ptr(), None if router is None else router.data_ptr(), None if logits is None else logits.data_ptr(),
        out.data_ptr(), m, hidden, inter, experts, top_k, int(renormalize),
        gate_up[0].data_ptr(), gate_up[1], gate_up[2], down[0].data_ptr(), down[1], down[2],
        None if shared_out is None else shared_out.data_ptr(),
        None if gate_weight is None else gate_weight.data_ptr(), None if gate_logits is None else gate_logits.data_ptr(),
        torch.get_num_threads(),
    )  # fmt: skip
    if failed == 2:
        raise MemoryError("gguf_moe could not allocate its scratch memory")
    if failed:
        raise ValueError("gguf_moe: an expert type, shape or layout the kernel does not read")
    return out
