/* out = x @ w^T (+ bias) for a few rows of x: the matrix products of small-batch decode, float32 or bfloat16.
 *
 * Why: at 1 to 4 rows a decode step only streams the weights from memory (270 MB per token for the bundled
 * model in bfloat16), and the general-purpose GEMM reads them well below what the cores can (bf16 on AVX-512:
 * ~24 of ~45 GB/s; float32 on a Zen 3 with AVX2: ~7 of ~17 GB/s). This loop reads each weight row once for all
 * rows of x, four weight rows at a time (independent streams for the prefetchers, and the next four prefetched),
 * and splits the output columns statically across the threads. Paths, chosen by the ISA level the library is
 * compiled for: AVX-512 BF16 dot products (vdpbf16ps, 32 pairs per instruction) for bfloat16; elsewhere x is
 * widened to float32 once and each weight vector is widened (bfloat16) or loaded (float32) and FMA'd, 16 lanes
 * (AVX-512) or 8 (AVX2); without either, a plain loop the compiler vectorises. Sums are float32, rounded once.
 *
 * x [rows, k], w [n, k], bias [n] or NULL, out [rows, n]; rows <= GEMV_MAX_ROWS; all contiguous, one dtype
 * (0 float32, 1 bfloat16).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "e4m3.h"
#include "simd.h"

#define GEMV_MAX_ROWS 4
#define GEMV_COLUMNS_PER_ITER 4

#if defined(__AVX512BF16__) && defined(__AVX512F__) && defined(__AVX512BW__)
#define GEMV_AVX512_BF16 1
/* Four output columns n0..n0+3 for every row of x (bfloat16 x and w); ROWS is a constant so the 4 x ROWS
 * accumulators stay in registers. */
#define DEFINE_COLUMNS_DPBF16(ROWS)                                                                               \
    static void columns_dpbf16_##ROWS(const uint16_t *x, const uint16_t *w, float *sums, int64_t k, int64_t n0) { \
        __m512 acc[GEMV_COLUMNS_PER_ITER][ROWS];                                                                  \
        for (int c = 0; c < GEMV_COLUMNS_PER_ITER; ++c)                                                           \
            for (int r = 0; r < ROWS; ++r) acc[c][r] = _mm512_setzero_ps();                                      \
        for (int64_t i = 0; i < k; i += 32) {                                                                     \
            const __mmask32 mask = k - i >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << (k - i)) - 1u);     \
            __m512i xs[ROWS];                                                                                     \
            for (int r = 0; r < ROWS; ++r) xs[r] = _mm512_maskz_loadu_epi16(mask, x + r * k + i);                \
            for (int c = 0; c < GEMV_COLUMNS_PER_ITER; ++c) {                                                     \
                const __m512i wv = _mm512_maskz_loadu_epi16(mask, w + (n0 + c) * k + i);                         \
                /* the next group's rows: 4 rows x k ahead, so their lines arrive before they are needed */      \
                prefetch_t0(w + (n0 + GEMV_COLUMNS_PER_ITER + c) * k + i);                                        \
                for (int r = 0; r < ROWS; ++r)                                                                    \
                    acc[c][r] = _mm512_dpbf16_ps(acc[c][r], (__m512bh)xs[r], (__m512bh)wv);                       \
            }                                                                                                     \
        }                                                                                                         \
        for (int c = 0; c < GEMV_COLUMNS_PER_ITER; ++c)                                                           \
            for (int r = 0; r < ROWS; ++r) sums[c * GEMV_MAX_ROWS + r] = _mm512_reduce_add_ps(acc[c][r]);         \
    }
DEFINE_COLUMNS_DPBF16(1)
DEFINE_COLUMNS_DPBF16(2)
DEFINE_COLUMNS_DPBF16(3)
DEFINE_COLUMNS_DPBF16(4)

static void columns_dpbf16(const uint16_t *x, const uint16_t *w, float *sums, int64_t rows, int64_t k,
                           int64_t n0) {
    switch (rows) {
    case 1: columns_dpbf16_1(x, w, sums, k, n0); break;
    case 2: columns_dpbf16_2(x, w, sums, k, n0); break;
    case 3: columns_dpbf16_3(x, w, sums, k, n0); break;
    default: columns_dpbf16_4(x, w, sums, k, n0); break;
    }
}

/* bfloat16 x and w at the AVX-512 BF16 level: its own loop, kept this small (a shared driver with the other
 * paths ran the LM head's product ~9 % slower, measured in one process against this one). */
static void gemv_dpbf16(const uint16_t *x, const uint16_t *w, const uint16_t *bias, uint16_t *out, int64_t rows,
                        int64_t n, int64_t k, int threads) {
    const int64_t groups = n / GEMV_COLUMNS_PER_ITER + (n % GEMV_COLUMNS_PER_ITER != 0);
#pragma omp parallel num_threads(threads)
    {
        float sums[GEMV_COLUMNS_PER_ITER * GEMV_MAX_ROWS];
#pragma omp for schedule(static)
        for (int64_t g = 0; g < groups; ++g) {
            const int64_t n0 = g * GEMV_COLUMNS_PER_ITER;
            const int64_t count = n - n0 < GEMV_COLUMNS_PER_ITER ? n - n0 : GEMV_COLUMNS_PER_ITER;
            if (count == GEMV_COLUMNS_PER_ITER) {
                columns_dpbf16(x, w, sums, rows, k, n0);
            } else {
                for (int64_t c = 0; c < count; ++c)
                    for (int64_t r = 0; r < rows; ++r) {
                        float total = 0.0f;
                        for (int64_t i = 0; i < k; ++i)
                            total += bf16_to_f32(x[r * k + i]) * bf16_to_f32(w[(n0 + c) * k + i]);
                        sums[c * GEMV_MAX_ROWS + r] = total;
                    }
            }
            for (int64_t c = 0; c < count; ++c)
                for (int64_t r = 0; r < rows; ++r) {
                    const float b = bias != NULL ? bf16_to_f32(bias[n0 + c]) : 0.0f;
                    out[r * n + n0 + c] = f32_to_bf16(sums[c * GEMV_MAX_ROWS + r] + b);
                }
        }
    }
}
#endif

#ifdef PAGEDSERVE_SIMD
/* Four output columns n0..n0+3 for every row of x; x already float32, w of storage type T (LOADV widens one
 * vector, LOAD one element). k elements of rows `ld` apart (ld > k: a block of the columns, for block scales). The
 * k tail past the last full vector is added in plain C. */
#define DEFINE_COLUMNS_FMA(NAME, T, LOADV, LOAD, ROWS)                                                           \
    static void NAME##_##ROWS(const float *x, const T *w, float *sums, int64_t k, int64_t ld, int64_t n0) {                \
        vf acc[GEMV_COLUMNS_PER_ITER][ROWS];                                                                      \
        for (int c = 0; c < GEMV_COLUMNS_PER_ITER; ++c)                                                           \
            for (int r = 0; r < ROWS; ++r) acc[c][r] = vf_zero();                                                \
        int64_t i = 0;                                                                                            \
        for (; i + VF_LANES <= k; i += VF_LANES) {                                                                \
            vf xs[ROWS];                                                                                          \
            for (int r = 0; r < ROWS; ++r) xs[r] = vf_load(x + r * ld + i);                                        \
            for (int c = 0; c < GEMV_COLUMNS_PER_ITER; ++c) {                                                     \
                const vf wv = LOADV(w + (n0 + c) * ld + i);                                                        \
                prefetch_t0(w + (n0 + GEMV_COLUMNS_PER_ITER + c) * ld + i);                                        \
                for (int r = 0; r < ROWS; ++r) acc[c][r] = vf_fma(xs[r], wv, acc[c][r]);                         \
            }                                                                                                     \
        }                                                                                                         \
        for (int c = 0; c < GEMV_COLUMNS_PER_ITER; ++c)                                                           \
            for (int r = 0; r < ROWS; ++r) {                                                                      \
                float total = vf_sum(acc[c][r]);                                                                  \
                for (int64_t j = i; j < k; ++j) total += x[r * ld + j] * LOAD(w[(n0 + c) * ld + j]);                \
                sums[c * GEMV_MAX_ROWS + r] = total;                                                              \
            }                                                                                                     \
    }
#define DEFINE_COLUMNS_FMA_ALL(NAME, T, LOADV, LOAD)                                                              \
    DEFINE_COLUMNS_FMA(NAME, T, LOADV, LOAD, 1)                                                                   \
    DEFINE_COLUMNS_FMA(NAME, T, LOADV, LOAD, 2)                                                                   \
    DEFINE_COLUMNS_FMA(NAME, T, LOADV, LOAD, 3)                                                                   \
    DEFINE_COLUMNS_FMA(NAME, T, LOADV, LOAD, 4)                                                                   \
    static void NAME(const float *x, const T *w, float *sums, int64_t rows, int64_t k, int64_t ld, int64_t n0) {\
        switch (rows) {                                                                                           \
        case 1: NAME##_1(x, w, sums, k, ld, n0); break;                                                               \
        case 2: NAME##_2(x, w, sums, k, ld, n0); break;                                                               \
        case 3: NAME##_3(x, w, sums, k, ld, n0); break;                                                               \
        default: NAME##_4(x, w, sums, k, ld, n0); break;                                                              \
        }                                                                                                         \
    }
#define LOAD_F32(v) (v)
DEFINE_COLUMNS_FMA_ALL(columns_fma_f32, float, VF_LOAD_F32, LOAD_F32)
DEFINE_COLUMNS_FMA_ALL(columns_fma_bf16, uint16_t, VF_LOAD_BF16, bf16_to_f32)
DEFINE_COLUMNS_FMA_ALL(columns_fma_e4m3, uint8_t, vf_load_e4m3, e4m3_to_f32)
#endif

/* One output column for every row of x (x float32, w float32 or bfloat16): tails, and the portable path. */
static void column_plain_f32(const float *x, const float *w, float *sums, int64_t rows, int64_t k, int64_t n) {
    const float *wn = w + n * k;
    for (int r = 0; r < rows; ++r) {
        const float *xr = x + r * k;
        float total = 0.0f;
#pragma omp simd reduction(+ : total)
        for (int64_t i = 0; i < k; ++i) total += xr[i] * wn[i];
        sums[r] = total;
    }
}

static void column_plain_bf16(const float *x, const uint16_t *w, float *sums, int64_t rows, int64_t k,
                              int64_t n) {
    const uint16_t *wn = w + n * k;
    for (int r = 0; r < rows; ++r) {
        const float *xr = x + r * k;
        float total = 0.0f;
#pragma omp simd reduction(+ : total)
        for (int64_t i = 0; i < k; ++i) total += xr[i] * bf16_to_f32(wn[i]);
        sums[r] = total;
    }
}

static void column_plain_e4m3(const float *x, const uint8_t *w, float *sums, int64_t rows, int64_t k, int64_t ld,
                              int64_t n) {
    const uint8_t *wn = w + n * ld;
    for (int r = 0; r < rows; ++r) {
        const float *xr = x + r * ld;
        float total = 0.0f;
        for (int64_t i = 0; i < k; ++i) total += xr[i] * e4m3_to_f32(wn[i]);
        sums[r] = total;
    }
}

/* A bfloat16 x widened to float32 in new memory (the caller frees it); NULL when none could be had. */
static float *widen_bf16(const void *x, int64_t count) {
    float *out = malloc(sizeof(float) * (size_t)count);
    if (out != NULL)
        for (int64_t i = 0; i < count; ++i) out[i] = bf16_to_f32(((const uint16_t *)x)[i]);
    return out;
}

int gemv(const void *x, const void *w, const void *bias, void *out, int64_t rows, int64_t n, int64_t k, int dtype,
         int threads) {
    if (rows < 1 || rows > GEMV_MAX_ROWS) return 1;
    const int bf16 = dtype == 1;
#ifdef GEMV_AVX512_BF16
    if (bf16) {
        gemv_dpbf16(x, w, bias, out, rows, n, k, threads);
        return 0;
    }
#endif
    const int64_t groups = n / GEMV_COLUMNS_PER_ITER + (n % GEMV_COLUMNS_PER_ITER != 0);
    /* The other paths multiply float32 x: widen a bfloat16 x once here (rows * k, a few KB). */
    float *xf = bf16 ? widen_bf16(x, rows * k) : NULL;
    if (bf16 && xf == NULL) return 2;
    const float *x32 = bf16 ? xf : (const float *)x;
#pragma omp parallel num_threads(threads)
    {
        float sums[GEMV_COLUMNS_PER_ITER * GEMV_MAX_ROWS];
#pragma omp for schedule(static)
        for (int64_t g = 0; g < groups; ++g) {
            const int64_t n0 = g * GEMV_COLUMNS_PER_ITER;
            const int64_t count = n - n0 < GEMV_COLUMNS_PER_ITER ? n - n0 : GEMV_COLUMNS_PER_ITER;
#ifdef PAGEDSERVE_SIMD
            if (count == GEMV_COLUMNS_PER_ITER) {
                if (bf16)
                    columns_fma_bf16(x32, w, sums, rows, k, k, n0);
                else
                    columns_fma_f32(x32, w, sums, rows, k, k, n0);
            } else
#endif
            {
                for (int64_t c = 0; c < count; ++c) {
                    if (bf16)
                        column_plain_bf16(x32, w, sums + c * GEMV_MAX_ROWS, rows, k, n0 + c);
                    else
                        column_plain_f32(x32, w, sums + c * GEMV_MAX_ROWS, rows, k, n0 + c);
                }
            }
            for (int64_t c = 0; c < count; ++c)
                for (int64_t r = 0; r < rows; ++r) {
                    const int64_t at = r * n + n0 + c;
                    if (bf16) {
                        const float b = bias != NULL ? bf16_to_f32(((const uint16_t *)bias)[n0 + c]) : 0.0f;
                        ((uint16_t *)out)[at] = f32_to_bf16(sums[c * GEMV_MAX_ROWS + r] + b);
                    } else {
                        const float b = bias != NULL ? ((const float *)bias)[n0 + c] : 0.0f;
                        ((float *)out)[at] = sums[c * GEMV_MAX_ROWS + r] + b;
                    }
                }
        }
    }
    free(xf);
    return 0;
}

/* float32 x, bfloat16 w, any number of rows. Rows of x per tile: 4 columns x ROWS accumulators + ROWS x vectors
 * + 1 weight vector must fit the register file (32 with AVX-512; 16 with AVX2, where 4 rows spilled and ran at half
 * the speed). Past MIXED_PANEL_MIN_ROWS rows AVX2 has its own kernel (panel_gemm.c): on a Zen 3 it was faster
 * from 8 rows up (gate|up at 16 rows 700-900 against 850 us), this tile below (1 row: 92 against 240-350 us, it
 * streams the weights once and widens nothing twice). */
#if defined(__AVX512F__)
#define MIXED_ROWS 4
#else
#define MIXED_ROWS 2
#endif
#define MIXED_PANEL_MIN_ROWS 8
#if defined(PAGEDSERVE_SIMD) && VF_LANES == 8
int mixed_gemm_avx2(const float *x, const uint16_t *w, const float *bias, float *out, int64_t m, int64_t n,
                    int64_t k, int threads); /* panel_gemm.c */
#endif

int gemm_f32_bf16w(const float *x, const uint16_t *w, const float *bias, float *out, int64_t m, int64_t n,
                   int64_t k, int threads) {
#if defined(PAGEDSERVE_SIMD) && VF_LANES == 8
    /* Weights far past the last-level cache (the LM head, 56 MB) stream at half the speed through the panels:
     * there the tile stays faster up to 16 rows (10-15 against 14-16 ms), the panels win at 32 (19-24 against 35). */
    const int64_t min_rows = n * k * 2 > (16 << 20) ? 2 * MIXED_PANEL_MIN_ROWS : MIXED_PANEL_MIN_ROWS;
    if (m > min_rows) return mixed_gemm_avx2(x, w, bias, out, m, n, k, threads);
#endif
    const int64_t groups = n / GEMV_COLUMNS_PER_ITER + (n % GEMV_COLUMNS_PER_ITER != 0);
#pragma omp parallel num_threads(threads)
    {
        float sums[GEMV_COLUMNS_PER_ITER * GEMV_MAX_ROWS];
#pragma omp for schedule(static)
        for (int64_t g = 0; g < groups; ++g) {
            const int64_t n0 = g * GEMV_COLUMNS_PER_ITER;
            const int64_t count = n - n0 < GEMV_COLUMNS_PER_ITER ? n - n0 : GEMV_COLUMNS_PER_ITER;
            for (int64_t r0 = 0; r0 < m; r0 += MIXED_ROWS) {
                const int64_t rows = m - r0 < MIXED_ROWS ? m - r0 : MIXED_ROWS;
                const float *xr = x + r0 * k;
#ifdef PAGEDSERVE_SIMD
                if (count == GEMV_COLUMNS_PER_ITER)
                    columns_fma_bf16(xr, w, sums, rows, k, k, n0);
                else
#endif
                    for (int64_t c = 0; c < count; ++c)
                        column_plain_bf16(xr, w, sums + c * GEMV_MAX_ROWS, rows, k, n0 + c);
                for (int64_t c = 0; c < count; ++c)
                    for (int64_t r = 0; r < rows; ++r)
                        out[(r0 + r) * n + n0 + c] =
                            sums[c * GEMV_MAX_ROWS + r] + (bias != NULL ? bias[n0 + c] : 0.0f);
            }
        }
    }
    return 0;
}

/* float8 e4m3 weights w [n, k] with float32 scales over blocks of block_n rows x block_k columns, w_scale
 * [ceil(n / block_n), ceil(k / block_k)] (one scale a row: block_n 1, block_k k; DeepSeek-style block FP8: 128 x
 * 128): out [m, n] = sum over column blocks of (x . w^T over the block) * its scale (+ float32 bias); x and out each
 * float32 (dtype 0) or bfloat16 (1). Each weight vector is widened as it is read (simd.h's vf_load_e4m3) for
 * MIXED_ROWS rows of x at a time, the same tile as gemm_f32_bf16w: for the few rows of a decode step it streams 1
 * byte a weight, where widening the whole weight to float32 first (layers/ct_quant.py's path past
 * FP8_GEMM_MAX_ROWS) writes and reads 8 more. 0, 1 for bad blocks, or 2 when the scratch for a bfloat16 x could not
 * be had. */
int gemm_e4m3w(const void *x, const uint8_t *w, const float *w_scale, int64_t block_n, int64_t block_k,
               const float *bias, void *out, int64_t m, int64_t n, int64_t k, int x_dtype, int out_dtype, int threads) {
    if (block_n < 1 || block_k < 1) return 1;
    const int bf16 = x_dtype == 1, bf16_out = out_dtype == 1;
    const int64_t k_blocks = (k + block_k - 1) / block_k;
    float *xf = bf16 ? widen_bf16(x, m * k) : NULL;
    if (bf16 && xf == NULL) return 2;
    const float *x32 = bf16 ? xf : (const float *)x;
    const int64_t groups = n / GEMV_COLUMNS_PER_ITER + (n % GEMV_COLUMNS_PER_ITER != 0);
#pragma omp parallel num_threads(threads)
    {
        float sums[GEMV_COLUMNS_PER_ITER * GEMV_MAX_ROWS], part[GEMV_COLUMNS_PER_ITER * GEMV_MAX_ROWS];
#pragma omp for schedule(static)
        for (int64_t g = 0; g < groups; ++g) {
            const int64_t n0 = g * GEMV_COLUMNS_PER_ITER;
            const int64_t count = n - n0 < GEMV_COLUMNS_PER_ITER ? n - n0 : GEMV_COLUMNS_PER_ITER;
            for (int64_t r0 = 0; r0 < m; r0 += MIXED_ROWS) {
                const int64_t rows = m - r0 < MIXED_ROWS ? m - r0 : MIXED_ROWS;
                for (int64_t i = 0; i < GEMV_COLUMNS_PER_ITER * GEMV_MAX_ROWS; ++i) sums[i] = 0.0f;
                for (int64_t kb = 0; kb < k_blocks; ++kb) {
                    const int64_t k0 = kb * block_k, len = k - k0 < block_k ? k - k0 : block_k;
                    const float *xr = x32 + r0 * k + k0;
#ifdef PAGEDSERVE_SIMD
                    if (count == GEMV_COLUMNS_PER_ITER)
                        columns_fma_e4m3(xr, w + k0, part, rows, len, k, n0);
                    else
#endif
                        for (int64_t c = 0; c < count; ++c)
                            column_plain_e4m3(xr, w + k0, part + c * GEMV_MAX_ROWS, rows, len, k, n0 + c);
                    for (int64_t c = 0; c < count; ++c) {
                        const float scale = w_scale[(n0 + c) / block_n * k_blocks + kb];
                        for (int64_t r = 0; r < rows; ++r)
                            sums[c * GEMV_MAX_ROWS + r] += part[c * GEMV_MAX_ROWS + r] * scale;
                    }
                }
                for (int64_t c = 0; c < count; ++c)
                    for (int64_t r = 0; r < rows; ++r) {
                        const float value = sums[c * GEMV_MAX_ROWS + r] + (bias != NULL ? bias[n0 + c] : 0.0f);
                        const int64_t at = (r0 + r) * n + n0 + c;
                        if (bf16_out)
                            ((uint16_t *)out)[at] = f32_to_bf16(value);
                        else
                            ((float *)out)[at] = value;
                    }
            }
        }
    }
    free(xf);
    return 0;
}
