/* out = x @ w^T (+ bias) with float32 x [m, k] and w [n, k] stored narrower — bfloat16, or GGUF blocks (gguf.h)
 * — for more rows of x than a GEMV, on every x86 level (256-bit registers: AVX2 + FMA). gemv.c takes the bfloat16
 * panels at the AVX2 level only (Zen 3, Haswell...; above it bfloat16 is computed in hardware); the GGUF panels run
 * at the AVX-512 levels too (`--quantization gguf` past 8 rows: offline-32x64 116 -> 355-387 tok/s on a Zen 4, against
 * dequantizing each matrix per call).
 *
 * Why its own kernel: on a Zen 3 the dot-product tile of gemv.c (rows x columns of horizontal dot products) ran
 * this at 40-80 GFLOP/s against oneDNN float32's 58-140: every FMA there needs a load of x and of w, and the two
 * 256-bit load ports, not the two FMA pipes, set the pace. Here, as in a BLAS micro-kernel, each thread widens
 * 16 columns of w at a time into a float32 panel laid out k-major ([k][16], exact: a 16-bit shift), then runs every
 * 6-row tile of x over it: per k, two panel loads and six broadcasts of x feed twelve FMAs into 6 x 16
 * accumulators (12 of the 16 registers). The panel (16 x k floats, 36 KB at k 576) is rebuilt once per 16 columns
 * and reused by all m / 6 tiles, so widening costs ~1 / m of the FMAs. At the avx512_bf16 level GGUF rows can take
 * bfloat16 panels instead (the last section: 512-bit registers, vdpbf16ps).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "gguf.h"
#include "simd.h"

#if defined(PAGEDSERVE_PANELS)
#define TILE_ROWS 6
#define PANEL 16

/* r[j] holds 8 consecutive k of column j: stores them transposed, out[i * width + j] = r[j][i]. */
static inline void transpose8_store(const __m256 r[8], float *out, int64_t width) {
    const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    _mm256_storeu_ps(out + 0 * width, _mm256_permute2f128_ps(s0, s4, 0x20));
    _mm256_storeu_ps(out + 1 * width, _mm256_permute2f128_ps(s1, s5, 0x20));
    _mm256_storeu_ps(out + 2 * width, _mm256_permute2f128_ps(s2, s6, 0x20));
    _mm256_storeu_ps(out + 3 * width, _mm256_permute2f128_ps(s3, s7, 0x20));
    _mm256_storeu_ps(out + 4 * width, _mm256_permute2f128_ps(s0, s4, 0x31));
    _mm256_storeu_ps(out + 5 * width, _mm256_permute2f128_ps(s1, s5, 0x31));
    _mm256_storeu_ps(out + 6 * width, _mm256_permute2f128_ps(s2, s6, 0x31));
    _mm256_storeu_ps(out + 7 * width, _mm256_permute2f128_ps(s3, s7, 0x31));
}

/* panel[i * 16 + j] = w[(n0 + j) * k + i] as float32 for j < count; zero for the missing columns of the last panel.
 * Eight columns x eight k at a time: widen eight 8-element rows, transpose 8 x 8 in registers, store. */
static void pack_panel(const uint16_t *w, int64_t n0, int64_t count, int64_t k, float *panel) {
    const int64_t k8 = count == PANEL ? k - k % 8 : 0;
    for (int half = 0; half < 2; ++half) {
        const uint16_t *base = w + (n0 + 8 * half) * k;
        for (int64_t i = 0; i < k8; i += 8) {
            __m256 r[8];
            for (int j = 0; j < 8; ++j) r[j] = load8_bf16(base + j * k + i);
            transpose8_store(r, panel + i * PANEL + 8 * half, PANEL);
        }
    }
    for (int64_t i = k8; i < k; ++i)
        for (int64_t j = 0; j < PANEL; ++j)
            panel[i * PANEL + j] = j < count ? bf16_to_f32(w[(n0 + j) * k + i]) : 0.0f;
}

/* The same panel from GGUF rows (k a multiple of 32), `width` (a multiple of 8) columns wide, for k in [k0, k1)
 * (whole blocks; panel[(i - k0) * width + j]): per block, eight rows dequantized, then transposed. */
static void pack_panel_gguf(const uint8_t *w, int qtype, int il, int64_t n0, int64_t count, int64_t k, int64_t k0,
                            int64_t k1, int64_t width, float *panel) {
    const int64_t row_bytes = gguf_row_bytes(qtype, k), stride = gguf_stride(qtype, il);
    float rows[8][GGUF_BLOCK];
    for (int64_t eighth = 0; eighth < width / 8; ++eighth)
        for (int64_t b = k0 / GGUF_BLOCK; b < k1 / GGUF_BLOCK; ++b) {
            for (int j = 0; j < 8; ++j) {
                const int64_t column = 8 * eighth + j;
                if (column < count)
                    gguf_dequantize_block(gguf_row(w, n0 + column, qtype, row_bytes, il), b, stride, qtype, rows[j]);
                else
                    memset(rows[j], 0, sizeof rows[j]);
            }
            for (int s = 0; s < GGUF_BLOCK / 8; ++s) {
                __m256 r[8];
                for (int j = 0; j < 8; ++j) r[j] = _mm256_loadu_ps(rows[j] + 8 * s);
                transpose8_store(r, panel + (b * GGUF_BLOCK - k0 + 8 * s) * width + 8 * eighth, width);
            }
        }
}

/* Terms summed into one accumulator before it is added to the row's total: summing all k (1536 at the down
 * projection) in one register doubled the rounding error of oneDNN's blocked sum; blocks of 64 keep it below. */
#define K_BLOCK 64
/* out rows 0..ROWS-1, columns 0..count of x @ panel. Named accumulators, not an array: gcc kept an array of
 * vectors in memory and stored all twelve every iteration (45 against 75 GFLOP/s). */
#define ROW_VARS(R) __m256 a##R##0 = _mm256_setzero_ps(), a##R##1 = _mm256_setzero_ps();
#define ROW_FMA(R)                                                                                                \
    if (ROWS > R) {                                                                                               \
        const __m256 xv = _mm256_broadcast_ss(x + R * k + i);                                                    \
        a##R##0 = _mm256_fmadd_ps(xv, w0, a##R##0);                                                               \
        a##R##1 = _mm256_fmadd_ps(xv, w1, a##R##1);                                                               \
    }
#define ROW_FLUSH(R)                                                                                              \
    if (ROWS > R) {                                                                                               \
        _mm256_storeu_ps(total + R * PANEL, _mm256_add_ps(_mm256_loadu_ps(total + R * PANEL), a##R##0));         \
        _mm256_storeu_ps(total + R * PANEL + 8, _mm256_add_ps(_mm256_loadu_ps(total + R * PANEL + 8), a##R##1)); \
        a##R##0 = a##R##1 = _mm256_setzero_ps();                                                                  \
    }
#define DEFINE_TILE(NR)                                                                                           \
    static void tile_##NR(const float *x, const float *panel, int64_t k, const float *bias, float *out,         \
                          int64_t n, int64_t count) {                                                             \
        enum { ROWS = NR };                                                                                       \
        float total[ROWS * PANEL];                                                                                \
        memset(total, 0, sizeof(total));                                                                          \
        ROW_VARS(0) ROW_VARS(1) ROW_VARS(2) ROW_VARS(3) ROW_VARS(4) ROW_VARS(5)                                   \
        for (int64_t i0 = 0; i0 < k; i0 += K_BLOCK) {                                                             \
            const int64_t i1 = i0 + K_BLOCK < k ? i0 + K_BLOCK : k;                                               \
            for (int64_t i = i0; i < i1; ++i) {                                                                   \
                const __m256 w0 = _mm256_loadu_ps(panel + i * PANEL);                                             \
                const __m256 w1 = _mm256_loadu_ps(panel + i * PANEL + 8);                                         \
                ROW_FMA(0) ROW_FMA(1) ROW_FMA(2) ROW_FMA(3) ROW_FMA(4) ROW_FMA(5)                                 \
            }                                                                                                     \
            ROW_FLUSH(0) ROW_FLUSH(1) ROW_FLUSH(2) ROW_FLUSH(3) ROW_FLUSH(4) ROW_FLUSH(5)                          \
        }                                                                                                         \
        for (int r = 0; r < ROWS; ++r)                                                                            \
            for (int64_t j = 0; j < count; ++j)                                                                   \
                out[r * n + j] = total[r * PANEL + j] + (bias != NULL ? bias[j] : 0.0f);                          \
    }
DEFINE_TILE(1)
DEFINE_TILE(2)
DEFINE_TILE(3)
DEFINE_TILE(4)
DEFINE_TILE(5)
DEFINE_TILE(6)

static void tile(const float *x, const float *panel, int64_t k, const float *bias, float *out, int64_t n,
                 int64_t count, int64_t rows) {
    switch (rows) {
    case 1: tile_1(x, panel, k, bias, out, n, count); break;
    case 2: tile_2(x, panel, k, bias, out, n, count); break;
    case 3: tile_3(x, panel, k, bias, out, n, count); break;
    case 4: tile_4(x, panel, k, bias, out, n, count); break;
    case 5: tile_5(x, panel, k, bias, out, n, count); break;
    default: tile_6(x, panel, k, bias, out, n, count); break;
    }
}

/* The rows of this thread's next panel (static schedule: the one after n0, `width` rows wide) toward L2 while this one
 * is multiplied: sixteen short rows are too many streams for the hardware prefetcher once the weights come from
 * memory. The LM head (49152 x 576) at 32 rows of x, Zen 3, one process alternating builds: Q8_0 25.5-29.5 ms without,
 * 22.2-26.3 with; bfloat16 32.0-34.0 against 24.7-30.9; gate|up (in cache) unchanged. */
static inline void prefetch_next_panel(const void *w, int64_t n0, int64_t width, int64_t n, int64_t row_bytes) {
    const int64_t left = n - n0 - width;
    if (left <= 0) return;
    const char *next = (const char *)w + (n0 + width) * row_bytes;
    const int64_t bytes = (left < width ? left : width) * row_bytes;
    for (int64_t i = 0; i < bytes; i += 64) prefetch_t1(next + i);
}

/* qtype 0: w is bfloat16; else a GGUF block type, rows interleaved by il (gguf.h). Panels are 16 rows, a whole
 * number of interleaved groups: a panel's bytes are the same range in either layout. */
static int panel_gemm(const float *x, const void *w, int qtype, int il, const float *bias, float *out, int64_t m,
                      int64_t n, int64_t k, int64_t ldo, int threads) {
    const int64_t panels = n / PANEL + (n % PANEL != 0);
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        float *panel = malloc(sizeof(float) * PANEL * (size_t)(k > 0 ? k : 1));
        if (panel == NULL) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t p = 0; p < panels; ++p) {
            if (panel == NULL) continue;
            const int64_t n0 = p * PANEL;
            const int64_t count = n - n0 < PANEL ? n - n0 : PANEL;
            if (qtype == 0)
                pack_panel(w, n0, count, k, panel);
            else
                pack_panel_gguf(w, qtype, il, n0, count, k, 0, k, PANEL, panel);
            prefetch_next_panel(w, n0, PANEL, n, qtype == 0 ? 2 * k : gguf_row_bytes(qtype, k));
            /* m split into tiles of near-equal rows (32: 5,5,5,5,6,6, not 6 x 5 + 2): a tile of one or two rows
             * has too few accumulators to hide the FMA latency. */
            const int64_t tiles = m / TILE_ROWS + (m % TILE_ROWS != 0);
            for (int64_t t = 0, r0 = 0; t < tiles; ++t) {
                const int64_t rows = (m - r0) / (tiles - t);
                tile(x + r0 * k, panel, k, bias != NULL ? bias + n0 : NULL, out + r0 * ldo + n0, ldo, count, rows);
                r0 += rows;
            }
        }
        free(panel);
    }
    return failed ? 2 : 0;
}

int mixed_gemm_avx2(const float *x, const uint16_t *w, const float *bias, float *out, int64_t m, int64_t n,
                    int64_t k, int threads) {
    return panel_gemm(x, w, 0, 1, bias, out, m, n, k, n, threads);
}

int gguf_gemm_panels(const float *x, const uint8_t *w, int qtype, const float *bias, float *out, int64_t m,
                     int64_t n, int64_t k, int il, int64_t ldo, int threads) {
    return panel_gemm(x, w, qtype, il, bias, out, m, n, k, ldo, threads);
}
#if defined(__AVX512BF16__)
/* bfloat16 panels (the avx512_bf16 level: Zen 4, Cooper Lake, Sapphire Rapids and later). Where the model's
 * matrices are bfloat16 (layers/gguf_quant.py decides and rounds the rows), GGUF rows past the GEMV's are multiplied
 * with vdpbf16ps: two bfloat16 products a float32 lane, twice the float32 FMA's work an instruction. The weights are
 * dequantized and rounded to bfloat16 (as vLLM's GGUF path dequantizes to the model's dtype); sums stay float32.
 * The float32 panels above ran at ~90 % of this Zen 4's float32 FMA peak (tile_6: 82 % of a 512-token prefill's
 * samples).
 * Layout: 32 columns a panel, k in pairs: panel[p * 32 + j] = column j's weights 2p (low half) and 2p + 1. */
#define BF16_PANEL 32
#define BF16_TILE_ROWS 8

/* One GGUF block's 32 k of the panel: a float32 [32 k][32 columns] scratch (pack_panel_gguf), then each pair of
 * its rows rounded to bfloat16 (to nearest even; the weights are finite) and packed into 32-bit lanes. */
static void pack_panel_bf16(const uint8_t *w, int qtype, int il, int64_t n0, int64_t count, int64_t k,
                            uint32_t *panel, float *scratch) {
    const __m512i round = _mm512_set1_epi32(0x7fff), one = _mm512_set1_epi32(1);
    const __m512i high = _mm512_set1_epi32((int)0xffff0000u);
    for (int64_t k0 = 0; k0 < k; k0 += GGUF_BLOCK) {
        pack_panel_gguf(w, qtype, il, n0, count, k, k0, k0 + GGUF_BLOCK, BF16_PANEL, scratch);
        for (int64_t p = 0; p < GGUF_BLOCK / 2; ++p)
            for (int half = 0; half < 2; ++half) {
                const __m512i even = _mm512_loadu_si512(scratch + 2 * p * BF16_PANEL + 16 * half);
                const __m512i odd = _mm512_loadu_si512(scratch + (2 * p + 1) * BF16_PANEL + 16 * half);
                const __m512i e = _mm512_add_epi32(
                    _mm512_add_epi32(even, round), _mm512_and_si512(_mm512_srli_epi32(even, 16), one));
                const __m512i o = _mm512_add_epi32(
                    _mm512_add_epi32(odd, round), _mm512_and_si512(_mm512_srli_epi32(odd, 16), one));
                _mm512_storeu_si512(panel + (k0 / 2 + p) * BF16_PANEL + 16 * half,
                                    _mm512_or_si512(_mm512_and_si512(o, high), _mm512_srli_epi32(e, 16)));
            }
    }
}

#define BF_ROW_VARS(R) __m512 b##R##0 = _mm512_setzero_ps(), b##R##1 = _mm512_setzero_ps();
#define BF_ROW_DOT(R)                                                                                             \
    if (ROWS > R) {                                                                                               \
        const __m512bh xv = (__m512bh)_mm512_set1_epi32(x[R * pairs + i]);                                        \
        b##R##0 = _mm512_dpbf16_ps(b##R##0, xv, w0);                                                              \
        b##R##1 = _mm512_dpbf16_ps(b##R##1, xv, w1);                                                              \
    }
#define BF_ROW_FLUSH(R)                                                                                           \
    if (ROWS > R) {                                                                                               \
        _mm512_storeu_ps(total + R * BF16_PANEL, _mm512_add_ps(_mm512_loadu_ps(total + R * BF16_PANEL), b##R##0)); \
        _mm512_storeu_ps(total + R * BF16_PANEL + 16,                                                             \
                         _mm512_add_ps(_mm512_loadu_ps(total + R * BF16_PANEL + 16), b##R##1));                    \
        b##R##0 = b##R##1 = _mm512_setzero_ps();                                                                  \
    }
/* x: ROWS rows of k / 2 bfloat16 pairs (as int32); the same K_BLOCK partial sums as the float32 tiles. */
#define DEFINE_BF16_TILE(NR)                                                                                      \
    static void bf16_tile_##NR(const int32_t *x, const uint32_t *panel, int64_t pairs, const float *bias,        \
                               float *out, int64_t n, int64_t count) {                                            \
        enum { ROWS = NR };                                                                                       \
        float total[ROWS * BF16_PANEL];                                                                           \
        memset(total, 0, sizeof(total));                                                                          \
        BF_ROW_VARS(0) BF_ROW_VARS(1) BF_ROW_VARS(2) BF_ROW_VARS(3)                                               \
        BF_ROW_VARS(4) BF_ROW_VARS(5) BF_ROW_VARS(6) BF_ROW_VARS(7)                                               \
        for (int64_t i0 = 0; i0 < pairs; i0 += K_BLOCK / 2) {                                                     \
            const int64_t i1 = i0 + K_BLOCK / 2 < pairs ? i0 + K_BLOCK / 2 : pairs;                               \
            for (int64_t i = i0; i < i1; ++i) {                                                                   \
                const __m512bh w0 = (__m512bh)_mm512_loadu_si512(panel + i * BF16_PANEL);                         \
                const __m512bh w1 = (__m512bh)_mm512_loadu_si512(panel + i * BF16_PANEL + 16);                    \
                BF_ROW_DOT(0) BF_ROW_DOT(1) BF_ROW_DOT(2) BF_ROW_DOT(3)                                           \
                BF_ROW_DOT(4) BF_ROW_DOT(5) BF_ROW_DOT(6) BF_ROW_DOT(7)                                           \
            }                                                                                                     \
            BF_ROW_FLUSH(0) BF_ROW_FLUSH(1) BF_ROW_FLUSH(2) BF_ROW_FLUSH(3)                                       \
            BF_ROW_FLUSH(4) BF_ROW_FLUSH(5) BF_ROW_FLUSH(6) BF_ROW_FLUSH(7)                                       \
        }                                                                                                         \
        for (int r = 0; r < ROWS; ++r)                                                                            \
            for (int64_t j = 0; j < count; ++j)                                                                   \
                out[r * n + j] = total[r * BF16_PANEL + j] + (bias != NULL ? bias[j] : 0.0f);                     \
    }
DEFINE_BF16_TILE(1)
DEFINE_BF16_TILE(2)
DEFINE_BF16_TILE(3)
DEFINE_BF16_TILE(4)
DEFINE_BF16_TILE(5)
DEFINE_BF16_TILE(6)
DEFINE_BF16_TILE(7)
DEFINE_BF16_TILE(8)

static void bf16_tile(const int32_t *x, const uint32_t *panel, int64_t pairs, const float *bias, float *out,
                      int64_t n, int64_t count, int64_t rows) {
    switch (rows) {
    case 1: bf16_tile_1(x, panel, pairs, bias, out, n, count); break;
    case 2: bf16_tile_2(x, panel, pairs, bias, out, n, count); break;
    case 3: bf16_tile_3(x, panel, pairs, bias, out, n, count); break;
    case 4: bf16_tile_4(x, panel, pairs, bias, out, n, count); break;
    case 5: bf16_tile_5(x, panel, pairs, bias, out, n, count); break;
    case 6: bf16_tile_6(x, panel, pairs, bias, out, n, count); break;
    case 7: bf16_tile_7(x, panel, pairs, bias, out, n, count); break;
    default: bf16_tile_8(x, panel, pairs, bias, out, n, count); break;
    }
}

/* x bfloat16 [m, k]; otherwise as gguf_gemm_panels. */
int gguf_gemm_panels_bf16(const uint16_t *x, const uint8_t *w, int qtype, const float *bias, float *out, int64_t m,
                          int64_t n, int64_t k, int il, int64_t ldo, int threads) {
    const int64_t panels = n / BF16_PANEL + (n % BF16_PANEL != 0), pairs = k / 2;
    const int64_t row_bytes = gguf_row_bytes(qtype, k);
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        uint32_t *panel = malloc(sizeof(uint32_t) * BF16_PANEL * (size_t)(pairs > 0 ? pairs : 1));
        float *scratch = malloc(sizeof(float) * BF16_PANEL * GGUF_BLOCK);
        if (panel == NULL || scratch == NULL) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t p = 0; p < panels; ++p) {
            if (panel == NULL || scratch == NULL) continue;
            const int64_t n0 = p * BF16_PANEL;
            const int64_t count = n - n0 < BF16_PANEL ? n - n0 : BF16_PANEL;
            pack_panel_bf16(w, qtype, il, n0, count, k, panel, scratch);
            prefetch_next_panel(w, n0, BF16_PANEL, n, row_bytes);
            const int64_t tiles = m / BF16_TILE_ROWS + (m % BF16_TILE_ROWS != 0);
            for (int64_t t = 0, r0 = 0; t < tiles; ++t) {
                const int64_t rows = (m - r0) / (tiles - t);
                bf16_tile((const int32_t *)(x + r0 * k), panel, pairs, bias != NULL ? bias + n0 : NULL,
                          out + r0 * ldo + n0, ldo, count, rows);
                r0 += rows;
            }
        }
        free(panel);
        free(scratch);
    }
    return failed ? 2 : 0;
}
#endif
#endif
