/* float8 e4m3 rows (FP8 checkpoints, --quantization fp8; layers/ct_quant.py).
 *
 * fp8_quantize: FP8's dynamic activation quantization. x [m, k] float32 (dtype 0) or bfloat16 (1) ->
 * out float32 [m, k] holding the float8 e4m3 values the checkpoint was calibrated for, already scaled back:
 * scale = max(absmax / 448, 1e-12) per row, or per `group` values of a row (block FP8: vLLM's per-token-group
 * quantization; 0: the whole row), or per_tensor: one absmax over every row; static_scale > 0: that one, a
 * checkpoint's input_scale. out = e4m3(clamp(x / scale, +-448)) * scale, bit-identical to the PyTorch expression it replaces, so that a decode step of FP8 layers is
 * kernel calls only (quantize, then gemv.c's gemm_e4m3w) and decode graphs replay it.
 *
 * The scale and the division are compiled without -ffast-math (int8_rows.c says why: a reciprocal rounds some
 * quotients the other way). 0, or 1 for a bad dtype. */
#include <math.h>
#include <stdint.h>

#include "bf16.h"
#include "e4m3.h"
#include "simd.h"

#define FP8_MAX 448.0f

static inline float load_value(const void *x, int dtype, int64_t i) {
    return dtype == 0 ? ((const float *)x)[i] : bf16_to_f32(((const uint16_t *)x)[i]);
}

static float absmax_of(const void *x, int dtype, int64_t count) {
    float m = 0.0f;
    for (int64_t i = 0; i < count; ++i) {
        const float a = fabsf(load_value(x, dtype, i));
        m = a > m ? a : m;
    }
    return m;
}

__attribute__((optimize("no-fast-math"))) static float fp8_scale(float absmax) {
    const float scale = absmax / FP8_MAX;
    return scale < 1e-12f ? 1e-12f : scale;
}

__attribute__((optimize("no-fast-math"))) static void quantize_row(const void *x, int dtype, int64_t k, float scale,
                                                                    float *out) {
    for (int64_t i = 0; i < k; ++i) {
        float v = load_value(x, dtype, i) / scale;
        v = v < -FP8_MAX ? -FP8_MAX : (v > FP8_MAX ? FP8_MAX : v);
        out[i] = e4m3_to_f32(f32_to_e4m3(v)) * scale;
    }
}

int fp8_quantize(const void *x, float *out, int64_t m, int64_t k, int64_t group, int per_tensor, int dtype,
                 int threads, float static_scale) {
    if ((dtype != 0 && dtype != 1) || group < 0) return 1;
    const int64_t item = dtype == 0 ? 4 : 2;
    if (static_scale > 0.0f) per_tensor = 1;
    if (group == 0 || per_tensor) group = k;
    const float tensor_scale =
        static_scale > 0.0f ? static_scale : (per_tensor ? fp8_scale(absmax_of(x, dtype, m * k)) : 0.0f);
#pragma omp parallel for schedule(static) num_threads(threads) if (m > 8)
    for (int64_t r = 0; r < m; ++r) {
        for (int64_t g0 = 0; g0 < k; g0 += group) {
            const int64_t len = k - g0 < group ? k - g0 : group;
            const void *part = (const char *)x + (r * k + g0) * item;
            const float scale = per_tensor ? tensor_scale : fp8_scale(absmax_of(part, dtype, len));
            quantize_row(part, dtype, len, scale, out + r * k + g0);
        }
    }
    return 0;
}

/* w float8 e4m3 [n, k] with scales over blocks of block_n x block_k (gemv.c's gemm_e4m3w says how; one a row:
 * 1 x k) -> out float32 [n, k] = w * its scale, exactly (one rounding: the product).
 * For products of many rows, which then run as a float32 GEMM: PyTorch's own float8 -> float32 conversion took
 * ~6 ms for a 3072 x 576 weight (AVX2 EPYC, 2026-12-05), longer than the GEMM of a 512-token prefill. */
int e4m3_dequantize(const uint8_t *w, const float *scale, int64_t block_n, int64_t block_k, float *out, int64_t n,
                    int64_t k, int threads) {
    if (block_n < 1 || block_k < 1) return 1;
    const int64_t k_blocks = (k + block_k - 1) / block_k;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t r = 0; r < n; ++r) {
        for (int64_t kb = 0; kb < k_blocks; ++kb) {
            const int64_t k0 = kb * block_k, len = k - k0 < block_k ? k - k0 : block_k;
            const uint8_t *row = w + r * k + k0;
            float *o = out + r * k + k0;
            const float s = scale[r / block_n * k_blocks + kb];
            int64_t i = 0;
#ifdef PAGEDSERVE_SIMD
            const vf sv = vf_set1(s);
            for (; i + VF_LANES <= len; i += VF_LANES) vf_store(o + i, vf_mul(vf_load_e4m3(row + i), sv));
#endif
            for (; i < len; ++i) o[i] = e4m3_to_f32(row[i]) * s;
        }
    }
    return 0;
}
