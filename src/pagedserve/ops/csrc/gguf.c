/* Matrix products with GGUF weights kept in their blocks (gguf.h): x float32 [m, k], w [n, k / 32 blocks].
 *
 * Why: single-stream decode only streams the weights, and the bundled model's Q4_1 blocks are 5 bits a weight
 * against bfloat16's 16 (92 against 270 MB a token). Each block is dequantized to float32 in registers/L1 — exact
 * to the gguf package's own dequantizer up to rounding of d * q + m — and multiplied in float32, so results equal
 * the dequantized float32 model's up to summation order (no activation quantization, unlike llama.cpp's Q8 dots).
 *   up to GGUF_DOT_MAX_ROWS rows: one block of one weight row at a time, FMA'd into every row of x;
 *   more rows, AVX2: the panel kernel (panel_gemm_avx2.c) dequantizes 16 weight rows into a float32 panel;
 *   more rows, other levels: returns 3 and the caller dequantizes the matrix (gguf_dequantize) for the GEMM.
 */
#include <stdint.h>
#include <stdlib.h>

#include "gguf.h"
#include "simd.h"

#define GGUF_DOT_MAX_ROWS 8

#if defined(PAGEDSERVE_SIMD) && VF_LANES == 8
int gguf_gemm_avx2(const float *x, const uint8_t *w, int qtype, const float *bias, float *out, int64_t m, int64_t n,
                   int64_t k, int threads); /* panel_gemm_avx2.c */
#endif

/* 1 where gguf_gemm multiplies any number of rows from the blocks (the AVX2 panels), 0 where past
 * GGUF_DOT_MAX_ROWS the caller dequantizes. */
int gguf_has_panels(void) {
#if defined(PAGEDSERVE_SIMD) && VF_LANES == 8
    return 1;
#else
    return 0;
#endif
}

/* out[n, k] float32 = the dequantized matrix. */
int gguf_dequantize(const uint8_t *w, int qtype, float *out, int64_t n, int64_t k, int threads) {
    const int64_t row_bytes = gguf_row_bytes(qtype, k);
    if (row_bytes == 0) return 1;
    const int64_t per_row = k / GGUF_BLOCK, blocks = n * per_row;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t b = 0; b < blocks; ++b)
        gguf_dequantize_block(w + b / per_row * row_bytes, b % per_row, qtype, out + b * GGUF_BLOCK);
    return 0;
}

/* sums[r] = x_r . w_row for up to GGUF_DOT_MAX_ROWS rows (ROWS a constant, so the accumulators stay in registers).
 * 256-bit vectors at every x86 SIMD level: at the AVX-512 levels a block widened to 16-lane vectors went through L1
 * (32 floats stored, then reloaded), and the 3072 x 576 Q4_1 GEMV of one row ran at 619-1237 us against 147 us
 * for this register path on the same AVX-512 CPU (2026-12-02). */
#if defined(__AVX2__) && defined(__FMA__)
static inline float sum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}
/* ACC accumulators per row (4 for one row, 1 for four): one accumulator per row made each block's four FMAs a
 * dependent chain, and the one-row GEMV ran latency-bound at half the speed of the bfloat16 one. */
#define DEFINE_DOT(NR)                                                                                                \
    static void dot_##NR(const float *x, int64_t k, const uint8_t *row, int qtype, float *sums) {                     \
        enum { ROWS = NR, ACC = NR >= 3 ? 1 : 4 / NR };                                                               \
        __m256 acc[ROWS][ACC];                                                                                        \
        for (int r = 0; r < ROWS; ++r)                                                                                \
            for (int a = 0; a < ACC; ++a) acc[r][a] = _mm256_setzero_ps();                                            \
        for (int64_t b = 0; b < k / GGUF_BLOCK; ++b) {                                                                \
            __m256 wv[4];                                                                                             \
            gguf_block_vectors(row, b, qtype, wv);                                                                    \
            for (int v = 0; v < 4; ++v)                                                                               \
                for (int r = 0; r < ROWS; ++r)                                                                        \
                    acc[r][v % ACC] = _mm256_fmadd_ps(wv[v], _mm256_loadu_ps(x + r * k + b * GGUF_BLOCK + v * 8),     \
                                                      acc[r][v % ACC]);                                               \
        }                                                                                                             \
        for (int r = 0; r < ROWS; ++r) {                                                                              \
            float total = 0.0f;                                                                                       \
            for (int a = 0; a < ACC; ++a) total += sum8(acc[r][a]);                                                   \
            sums[r] = total;                                                                                          \
        }                                                                                                             \
    }
#else
#define DEFINE_DOT(NR)                                                                                                \
    static void dot_##NR(const float *x, int64_t k, const uint8_t *row, int qtype, float *sums) {                     \
        float wv[GGUF_BLOCK];                                                                                         \
        for (int r = 0; r < NR; ++r) sums[r] = 0.0f;                                                                  \
        for (int64_t b = 0; b < k / GGUF_BLOCK; ++b) {                                                                \
            gguf_dequantize_block(row, b, qtype, wv);                                                                 \
            for (int r = 0; r < NR; ++r) {                                                                            \
                float total = 0.0f;                                                                                   \
                for (int j = 0; j < GGUF_BLOCK; ++j) total += wv[j] * x[r * k + b * GGUF_BLOCK + j];                  \
                sums[r] += total;                                                                                     \
            }                                                                                                         \
        }                                                                                                             \
    }
#endif
DEFINE_DOT(1)
DEFINE_DOT(2)
DEFINE_DOT(3)
DEFINE_DOT(4)

static void dot(const float *x, int64_t k, const uint8_t *row, int qtype, int64_t rows, float *sums) {
    switch (rows) {
    case 1: dot_1(x, k, row, qtype, sums); break;
    case 2: dot_2(x, k, row, qtype, sums); break;
    case 3: dot_3(x, k, row, qtype, sums); break;
    default: dot_4(x, k, row, qtype, sums); break;
    }
}

/* 0 done; 1 bad type or k; 2 out of memory; 3 too many rows for this level (dequantize and use the GEMM). */
int gguf_gemm(const float *x, const uint8_t *w, int qtype, const float *bias, float *out, int64_t m, int64_t n,
              int64_t k, int threads) {
    const int64_t row_bytes = gguf_row_bytes(qtype, k);
    if (row_bytes == 0) return 1;
    if (m > GGUF_DOT_MAX_ROWS) {
#if defined(PAGEDSERVE_SIMD) && VF_LANES == 8
        return gguf_gemm_avx2(x, w, qtype, bias, out, m, n, k, threads);
#else
        return 3;
#endif
    }
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t c = 0; c < n; ++c) {
        float sums[4];
        /* at most 4 rows a pass (8 and more spill the AVX2 registers); a second pass re-reads the row from cache */
        for (int64_t r0 = 0; r0 < m; r0 += 4) {
            const int64_t rows = m - r0 < 4 ? m - r0 : 4;
            dot(x + r0 * k, k, w + c * row_bytes, qtype, rows, sums);
            for (int64_t r = 0; r < rows; ++r) out[(r0 + r) * n + c] = sums[r] + (bias != NULL ? bias[c] : 0.0f);
        }
    }
    return 0;
}
