/* The W8A8 product (layers/ct_quant.py): acc int32 [m, n] = int8 activations x int8 weights^T, then
 * out [m, n] = acc * x_scale[row] * w_scale[column] (+ bias[column]) in float32 (dtype 0) or bfloat16 (1, rounded
 * once).
 *
 * int8_gemm: torch._int_mm on an AVX2 host without VNNI ran 8-50x slower than a float32 matmul of the same shape
 * (576 x 3072 weights: 14.8 ms for one row against 0.29 ms; 2026-12-04, AMD EPYC), so there the product is ours:
 * int8 widened to int16 and multiplied in pairs into int32 lanes (vpmaddwd), exact. Each weight row is widened
 * once per tile of 4 activation rows, which are widened once per call.
 *
 * int8_epilogue: in PyTorch this is four passes over [m, n] (float copy, two scalings, the dtype cast), and at 256
 * rows x 3072 columns they cost half as much as the int8 product itself (AVX-512 BF16 host, 2026-12-02).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "bf16.h"

#define GEMM_ROWS 4 /* activation rows a weight row is multiplied with while widened */

#if defined(__AVX2__)
static inline int32_t hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}
#endif

/* acc [m, n] = x [m, k] . w [n, k]^T, int8 in, int32 out (exact for k < 2^17). 0, or 1 when scratch memory (m x k
 * int16) could not be had. */
int int8_gemm(const int8_t *x, const int8_t *w, int32_t *acc, int64_t m, int64_t n, int64_t k, int threads) {
    int16_t *x16 = malloc((size_t)(m * k) * sizeof(int16_t));
    if (x16 == NULL) return 1;
    for (int64_t i = 0; i < m * k; ++i) x16[i] = x[i];
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t j = 0; j < n; ++j) {
        const int8_t *wr = w + j * k;
        for (int64_t r0 = 0; r0 < m; r0 += GEMM_ROWS) {
            const int rows = m - r0 < GEMM_ROWS ? (int)(m - r0) : GEMM_ROWS;
            int32_t total[GEMM_ROWS] = {0};
            int64_t i = 0;
#if defined(__AVX2__)
            __m256i sums[GEMM_ROWS];
            for (int r = 0; r < GEMM_ROWS; ++r) sums[r] = _mm256_setzero_si256();
            for (; i + 16 <= k; i += 16) {
                const __m256i wv = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(wr + i)));
                for (int r = 0; r < rows; ++r) {
                    const __m256i xv = _mm256_loadu_si256((const __m256i *)(x16 + (r0 + r) * k + i));
                    sums[r] = _mm256_add_epi32(sums[r], _mm256_madd_epi16(wv, xv));
                }
            }
            for (int r = 0; r < rows; ++r) total[r] = hsum_epi32(sums[r]);
#endif
            for (; i < k; ++i)
                for (int r = 0; r < rows; ++r) total[r] += (int32_t)wr[i] * x16[(r0 + r) * k + i];
            for (int r = 0; r < rows; ++r) acc[(r0 + r) * n + j] = total[r];
        }
    }
    free(x16);
    return 0;
}

int int8_epilogue(const int32_t *acc, const float *x_scale, const float *w_scale, const float *bias, void *out,
                  int dtype, int64_t m, int64_t n, int threads) {
    if (dtype != 0 && dtype != 1) return 1;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t r = 0; r < m; ++r) {
        const int32_t *row = acc + r * n;
        const float xs = x_scale[r];
        if (dtype == 0) {
            float *o = (float *)out + r * n;
            for (int64_t c = 0; c < n; ++c) o[c] = (float)row[c] * xs * w_scale[c] + (bias != NULL ? bias[c] : 0.0f);
        } else {
            uint16_t *o = (uint16_t *)out + r * n;
            for (int64_t c = 0; c < n; ++c)
                o[c] = f32_to_bf16((float)row[c] * xs * w_scale[c] + (bias != NULL ? bias[c] : 0.0f));
        }
    }
    return 0;
}

/* W8A8's dynamic activation quantization, as compressed-tensors computes it and layers/ct_quant.py did in PyTorch:
 * scale = max(absmax / 127.5, 1e-12) per row (per_tensor: one absmax over every row, the scale repeated), q =
 * round-half-even(x / scale) clamped to [-128, 127]. In C so that a decode step of W8A8 layers is kernel calls only
 * (worker/cpu_graph.py replays it) instead of eight PyTorch operations a layer.
 *
 * The scale and the division are compiled without -ffast-math: it would multiply by a reciprocal, and the quotient
 * could then round to the other integer at a .5 boundary; the test compares every element with PyTorch's. */
static float absmax_row(const void *x, int dtype, int64_t k) {
    float m = 0.0f;
    if (dtype == 0) {
        const float *v = x;
        for (int64_t i = 0; i < k; ++i) m = fabsf(v[i]) > m ? fabsf(v[i]) : m;
    } else {
        const uint16_t *v = x;
        for (int64_t i = 0; i < k; ++i) m = fabsf(bf16_to_f32(v[i])) > m ? fabsf(bf16_to_f32(v[i])) : m;
    }
    return m;
}

__attribute__((optimize("no-fast-math"))) static float int8_scale(float absmax) {
    const float scale = absmax / 127.5f;
    return scale < 1e-12f ? 1e-12f : scale;
}

__attribute__((optimize("no-fast-math"))) static void quantize_row(const void *x, int dtype, int64_t k, float scale,
                                                                    int8_t *q) {
    for (int64_t i = 0; i < k; ++i) {
        const float v = dtype == 0 ? ((const float *)x)[i] : bf16_to_f32(((const uint16_t *)x)[i]);
        float r = nearbyintf(v / scale);
        r = r < -128.0f ? -128.0f : (r > 127.0f ? 127.0f : r);
        q[i] = (int8_t)r;
    }
}

/* x [m, k] float32 (dtype 0) or bfloat16 (1) -> q int8 [m, k], scales float32 [m]. static_scale > 0: that scale
 * for every row (a checkpoint's input_scale), no absmax. 0, or 1 for a bad dtype. */
int int8_quantize(const void *x, int8_t *q, float *scales, int64_t m, int64_t k, int per_tensor, int dtype,
                  int threads, float static_scale) {
    if (dtype != 0 && dtype != 1) return 1;
    const size_t row_bytes = (size_t)k * (dtype == 0 ? 4 : 2);
    if (static_scale > 0.0f) {
        per_tensor = 1;
        for (int64_t r = 0; r < m; ++r) scales[r] = static_scale;
    } else if (per_tensor) {
        float amax = 0.0f;
        for (int64_t r = 0; r < m; ++r) {
            const float a = absmax_row((const char *)x + r * row_bytes, dtype, k);
            amax = a > amax ? a : amax;
        }
        const float scale = int8_scale(amax);
        for (int64_t r = 0; r < m; ++r) scales[r] = scale;
    }
#pragma omp parallel for schedule(static) num_threads(threads) if (m > 8)
    for (int64_t r = 0; r < m; ++r) {
        const void *row = (const char *)x + r * row_bytes;
        if (!per_tensor) scales[r] = int8_scale(absmax_row(row, dtype, k));
        quantize_row(row, dtype, k, scales[r], q + r * k);
    }
    return 0;
}
