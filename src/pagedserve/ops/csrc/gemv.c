/* out = x @ w^T (+ bias) in bfloat16 for a few rows of x: the matrix products of small-batch decode.
 *
 * Why: at 1 to 4 rows a decode step only streams the weights from memory (270 MB per token for the bundled
 * model), and the general-purpose GEMM reaches ~24 GB/s of the ~45 GB/s two cores can read. This loop reads each
 * weight row once for all rows of x, four weight rows at a time (independent streams for the prefetchers), and
 * splits the output columns statically across the threads. With AVX-512 BF16 the dot products are vdpbf16ps
 * (32 pairs per instruction, float32 accumulation); elsewhere a plain loop the compiler vectorises.
 *
 * x [rows, k], w [n, k], bias [n] or NULL, out [rows, n]; rows <= GEMV_MAX_ROWS; all contiguous bfloat16.
 */
#include <stdint.h>
#include <string.h>

#include "bf16.h"

#if defined(__AVX512BF16__) && defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define GEMV_AVX512_BF16 1
#endif

#define GEMV_MAX_ROWS 4
#define GEMV_COLUMNS_PER_ITER 4

#ifdef GEMV_AVX512_BF16
/* Four output columns n0..n0+3 for every row of x; ROWS is a constant so the 4 x ROWS accumulators stay in
 * registers. */
#define DEFINE_COLUMNS(ROWS)                                                                                      \
    static void columns_avx512_##ROWS(const uint16_t *x, const uint16_t *w, float *sums, int64_t k, int64_t n0) { \
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
                _mm_prefetch((const char *)(w + (n0 + GEMV_COLUMNS_PER_ITER + c) * k + i), _MM_HINT_T0);          \
                for (int r = 0; r < ROWS; ++r)                                                                    \
                    acc[c][r] = _mm512_dpbf16_ps(acc[c][r], (__m512bh)xs[r], (__m512bh)wv);                       \
            }                                                                                                     \
        }                                                                                                         \
        for (int c = 0; c < GEMV_COLUMNS_PER_ITER; ++c)                                                           \
            for (int r = 0; r < ROWS; ++r) sums[c * GEMV_MAX_ROWS + r] = _mm512_reduce_add_ps(acc[c][r]);         \
    }
DEFINE_COLUMNS(1)
DEFINE_COLUMNS(2)
DEFINE_COLUMNS(3)
DEFINE_COLUMNS(4)

static void columns_avx512(const uint16_t *x, const uint16_t *w, float *sums, int64_t rows, int64_t k,
                           int64_t n0) {
    switch (rows) {
    case 1: columns_avx512_1(x, w, sums, k, n0); break;
    case 2: columns_avx512_2(x, w, sums, k, n0); break;
    case 3: columns_avx512_3(x, w, sums, k, n0); break;
    default: columns_avx512_4(x, w, sums, k, n0); break;
    }
}
#endif

/* One output column for every row of x (tails, and CPUs without AVX-512 BF16). */
static void column_plain(const uint16_t *x, const uint16_t *w, float *sums, int64_t rows, int64_t k, int64_t n) {
    const uint16_t *wn = w + n * k;
    for (int r = 0; r < rows; ++r) {
        const uint16_t *xr = x + r * k;
        float total = 0.0f;
#pragma omp simd reduction(+ : total)
        for (int64_t i = 0; i < k; ++i) total += bf16_to_f32(xr[i]) * bf16_to_f32(wn[i]);
        sums[r] = total;
    }
}

int gemv_bf16(const uint16_t *x, const uint16_t *w, const uint16_t *bias, uint16_t *out, int64_t rows, int64_t n,
              int64_t k, int threads) {
    if (rows < 1 || rows > GEMV_MAX_ROWS) return 1;
    const int64_t groups = n / GEMV_COLUMNS_PER_ITER;
#pragma omp parallel num_threads(threads)
    {
        float sums[GEMV_COLUMNS_PER_ITER * GEMV_MAX_ROWS];
#pragma omp for schedule(static)
        for (int64_t g = 0; g < groups + (n % GEMV_COLUMNS_PER_ITER != 0); ++g) {
            const int64_t n0 = g * GEMV_COLUMNS_PER_ITER;
            const int64_t count = n - n0 < GEMV_COLUMNS_PER_ITER ? n - n0 : GEMV_COLUMNS_PER_ITER;
#ifdef GEMV_AVX512_BF16
            if (count == GEMV_COLUMNS_PER_ITER) {
                columns_avx512(x, w, sums, rows, k, n0);
            } else
#endif
            {
                for (int64_t c = 0; c < count; ++c) column_plain(x, w, sums + c * GEMV_MAX_ROWS, rows, k, n0 + c);
            }
            for (int64_t c = 0; c < count; ++c)
                for (int64_t r = 0; r < rows; ++r) {
                    const float b = bias != NULL ? bf16_to_f32(bias[n0 + c]) : 0.0f;
                    out[r * n + n0 + c] = f32_to_bf16(sums[c * GEMV_MAX_ROWS + r] + b);
                }
        }
    }
    return 0;
}
