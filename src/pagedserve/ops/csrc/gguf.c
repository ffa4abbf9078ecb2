/* Matrix products with GGUF weights kept in their blocks (gguf.h): x float32 [m, k], w [n, k / 32 blocks], rows
 * interleaved by `il` (1: as in the file; 4: gguf.h).
 *
 * Why: single-stream decode only streams the weights, and the bundled model's Q4_1 blocks are 5 bits a weight
 * against bfloat16's 16 (92 against 270 MB a token).
 *   up to gguf_gemv_max_rows rows (decode): the activation rows are quantized to 16 bits a value in 32-value blocks
 *     and multiplied by the weight blocks with integer dot products (gguf_q16.h; 2-32 rows of every type on the
 *     AVX-512 levels: gguf_q16_lanes.h);
 *   more rows, AVX2 and up: the panel kernel (panel_gemm.c) dequantizes 16 weight rows into a float32 panel and
 *     multiplies in float32 (results equal the dequantized float32 model's up to summation order);
 *   more rows, levels below AVX2: returns 3 and the caller dequantizes the matrix (gguf_dequantize) for the GEMM.
 */
#include <stdint.h>
#include <stdlib.h>

#include "gguf.h"
#include "gguf_q16.h"
#include "gguf_q16_kquants.h"
#include "gguf_q16_lanes.h"
#include "simd.h"

#define GGUF_DOT_MAX_ROWS 8
/* Rows every kept type takes the GEMV for on the AVX-512 levels (gguf_q16_lanes.h) before the panels: the
 * bundled Q4_1 model at 12-32 sequences on a Zen 4 decoded 1.1-1.8x faster this way than in bfloat16 panels
 * (avx512_bf16) and 1.5-2.4x than in float32 ones (avx512); a Q4_K GEMV of 16 / 32 rows on a Zen 5 1.7-2.7x /
 * 1.7-2x (BENCHMARKS.md); past 32 (prefills) the panels. */
#define GGUF_LANES_MAX_ROWS 32

/* The most activation rows gguf_gemm multiplies with a GEMV (16-bit activations) for blocks of qtype; past them
 * the panels (or, without them, the caller dequantizes). */
int gguf_gemv_max_rows(int qtype) {
#if defined(PAGEDSERVE_GGUF_LANES)
    if (q16_lanes_type(qtype)) return GGUF_LANES_MAX_ROWS;
#else
    (void)qtype;
#endif
    return GGUF_DOT_MAX_ROWS;
}

#if defined(PAGEDSERVE_PANELS)
int gguf_gemm_panels(const float *x, const uint8_t *w, int qtype, const float *bias, float *out, int64_t m,
                     int64_t n, int64_t k, int il, int64_t ldo, int threads); /* panel_gemm.c */
#endif

/* 1 where gguf_gemm multiplies any number of rows from the blocks (the 256-bit panels, every level with AVX2),
 * 0 where past gguf_gemv_max_rows the caller dequantizes. */
int gguf_has_panels(void) {
#if defined(PAGEDSERVE_PANELS)
    return 1;
#else
    return 0;
#endif
}

#if defined(PAGEDSERVE_PANELS) && defined(__AVX512BF16__)
int gguf_gemm_panels_bf16(const uint16_t *x, const uint8_t *w, int qtype, const float *bias, float *out, int64_t m,
                          int64_t n, int64_t k, int il, int64_t ldo, int threads); /* panel_gemm.c */
#endif

/* 1 where gguf_gemm_bf16 multiplies bfloat16 rows (the avx512_bf16 level), 0 where it returns 3. */
int gguf_has_bf16_panels(void) {
#if defined(PAGEDSERVE_PANELS) && defined(__AVX512BF16__)
    return 1;
#else
    return 0;
#endif
}

/* 1 where the type, k and the interleave `il` do not make a matrix of n rows the kernels read. */
static int gguf_bad_layout(int qtype, int64_t n, int64_t k, int il) {
    return gguf_row_bytes(qtype, k) == 0 || (il != 1 && il != GGUF_COLS) || n % il != 0;
}

/* out[n, k] float32 = the dequantized matrix, rows in their natural order. */
int gguf_dequantize(const uint8_t *w, int qtype, float *out, int64_t n, int64_t k, int il, int threads) {
    if (gguf_bad_layout(qtype, n, k, il)) return 1;
    const int64_t row_bytes = gguf_row_bytes(qtype, k), stride = gguf_stride(qtype, il);
    const int64_t per_row = k / GGUF_BLOCK, blocks = n * per_row;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t b = 0; b < blocks; ++b)
        gguf_dequantize_block(gguf_row(w, b / per_row, qtype, row_bytes, il), b % per_row, stride, qtype,
                              out + b * GGUF_BLOCK);
    return 0;
}

/* FN(ARGS..., rows, sums) with the row count (1-4) made a constant. */
#define Q16_BY_ROWS(FN, ...)                                                                                          \
    switch (rows) {                                                                                                   \
    case 1: FN(__VA_ARGS__, 1, sums); break;                                                                          \
    case 2: FN(__VA_ARGS__, 2, sums); break;                                                                          \
    case 3: FN(__VA_ARGS__, 3, sums); break;                                                                          \
    default: FN(__VA_ARGS__, 4, sums); break;                                                                         \
    }
#define Q16_DOT(QTYPE) Q16_BY_ROWS(q16_dot_rows, x, row, stride, QTYPE)

/* sums[r] = x_r . row for 1-4 quantized activation rows; type and row count made constants for q16_dot_rows. */
static void q16_dot(const q16_rows *x, const uint8_t *row, int64_t stride, int qtype, int64_t rows, float *sums) {
    switch (qtype) {
    case GGUF_Q4_0: Q16_DOT(GGUF_Q4_0); break;
    case GGUF_Q4_1: Q16_DOT(GGUF_Q4_1); break;
    case GGUF_Q8_0: Q16_DOT(GGUF_Q8_0); break;
#if defined(__AVX2__)
    case GGUF_Q4_K: /* a super-block at a time, its weights widened once for all rows */
        Q16_BY_ROWS(q16_dot_rows_q4k, x, row, stride);
        break;
    case GGUF_Q6_K: /* the same, from the split activations (q16_rows.split; NULL: the row path) */
        if (x->split == NULL) {
            Q16_DOT(GGUF_Q6_K);
        } else {
            Q16_BY_ROWS(q16_dot_rows_q6k, x, row, stride);
        }
        break;
#else
    case GGUF_Q4_K: Q16_DOT(GGUF_Q4_K); break;
#endif
    default: Q16_DOT(GGUF_Q6_K); break;
    }
}

/* sums[c] = x . row 4g + c (c < 4) for one quantized activation row: the single-row GEMV's unit of work, also the
 * experts' (gguf_moe.c). A group's four rows are row_bytes apart with blocks a block apart (il 1), or a block apart
 * with blocks four apart (il 4): the same code, one stream a group either way. Q8_0 (and levels below AVX2) a row
 * at a time. */
void gguf_dot_group(const q16_rows *x, const uint8_t *w, int qtype, int64_t row_bytes, int il, int64_t g,
                    float *sums) {
    const int64_t stride = gguf_stride(qtype, il);
    const uint8_t *rows = w + g * GGUF_COLS * row_bytes;
#if defined(__AVX2__)
    const int64_t column_bytes = il == 1 ? row_bytes : gguf_block_bytes(qtype);
    switch (qtype) { /* each call inlined with its type a constant; each prefetches as it goes */
    case GGUF_Q4_0: q16_dot_cols(x, rows, column_bytes, stride, GGUF_Q4_0, sums); return;
    case GGUF_Q4_1: q16_dot_cols(x, rows, column_bytes, stride, GGUF_Q4_1, sums); return;
    case GGUF_Q4_K: q16_dot_cols_q4k(x, rows, column_bytes, stride, sums); return;
    case GGUF_Q6_K:
        if (x->split == NULL) break; /* the row path below takes natural order */
        q16_dot_cols_q6k(x, rows, column_bytes, stride, sums);
        return;
    default: break;
    }
#endif
    for (int64_t at = 0; at < GGUF_COLS * row_bytes; at += 64) prefetch_t0(rows + GGUF_PREFETCH_BYTES + at);
    for (int c = 0; c < GGUF_COLS; ++c)
        q16_dot(x, gguf_row(w, g * GGUF_COLS + c, qtype, row_bytes, il), stride, qtype, 1, sums + c);
}

/* Rows longer than GGUF_ROWS_LONG weights, the multi-row GEMV takes GGUF_ROWS_PART of at a time. It reads every
 * activation row (2 bytes a weight) for each weight row: four rows of 8192 are 64 KB, past L1. Four rows, 2 threads,
 * streamed, Zen 4: a 2048 x 8192 Q4_K matrix (file order) 7.4 GB/s whole, 9.3-9.6 in parts of 2048, 10.2 in parts of
 * 1024 (Q6_K 8.7-9.1, 9.6-9.7, 11.7-11.9), where 8192 x 2048 ran at 11.4-12.1 (Q6_K 13.2-14.5) whole and 10.1-10.4
 * (10.3-10.7) in parts of 1024: rows of 2048 stay whole. */
#define GGUF_ROWS_LONG 2048
#define GGUF_ROWS_PART 1024

/* The multi-row GEMV (2-8 activation rows, quantized: q, d, s, split) over parts of GGUF_ROWS_PART weights: the
 * activations repacked part by part, then each thread takes the same columns for every part (a static schedule
 * of the same loop) and adds each part's sums into its outputs. */
static int gguf_rows_in_parts(const int16_t *q, const float *d, const float *s, const int16_t *split,
                              const uint8_t *w, int qtype, const float *bias, float *out, int64_t m, int64_t n,
                              int64_t k, int il, int64_t ldo, int threads) {
    const int64_t blocks = k / GGUF_BLOCK, per = gguf_block_weights(qtype);
    const int64_t parts = (k + GGUF_ROWS_PART - 1) / GGUF_ROWS_PART, values = m * k * (split ? 2 : 1);
    const int64_t row_bytes = gguf_row_bytes(qtype, k), stride = gguf_stride(qtype, il);
    float *packed = malloc(sizeof(float) * (size_t)(2 * m * blocks) + sizeof(int16_t) * (size_t)values);
    if (packed == NULL) return 2;
    float *pd = packed, *ps = packed + m * blocks;
    int16_t *pq = (int16_t *)(packed + 2 * m * blocks), *psplit = split ? pq + m * k : NULL;
    for (int64_t p = 0; p < parts; ++p) { /* part p: weights v0..v1 of every row, rows one after another */
        const int64_t v0 = k / per * p / parts * per, v1 = k / per * (p + 1) / parts * per, len = v1 - v0;
        for (int64_t r = 0; r < m; ++r) {
            memcpy(pq + m * v0 + r * len, q + r * k + v0, sizeof(int16_t) * (size_t)len);
            if (split) memcpy(psplit + m * v0 + r * len, split + r * k + v0, sizeof(int16_t) * (size_t)len);
            const int64_t to = (m * v0 + r * len) / GGUF_BLOCK, from = r * blocks + v0 / GGUF_BLOCK;
            memcpy(pd + to, d + from, sizeof(float) * (size_t)(len / GGUF_BLOCK));
            memcpy(ps + to, s + from, sizeof(float) * (size_t)(len / GGUF_BLOCK));
        }
    }
#pragma omp parallel num_threads(threads)
    for (int64_t p = 0; p < parts; ++p) {
        const int64_t v0 = k / per * p / parts * per, v1 = k / per * (p + 1) / parts * per, len = v1 - v0;
        const int64_t part_bytes = len / per * stride, ahead = (GGUF_PREFETCH_BYTES + part_bytes - 1) / part_bytes;
#pragma omp for schedule(static) nowait
        for (int64_t c = 0; c < n; ++c) {
            float sums[4];
            const uint8_t *row = gguf_row(w, c, qtype, row_bytes, il) + v0 / per * stride;
            if (c + ahead < n) /* this part of a row a few rows on (a prefetch never faults; the bound keeps it in) */
                for (int64_t at = 0; at < part_bytes; at += 64)
                    prefetch_t0(gguf_row(w, c + ahead, qtype, row_bytes, il) + v0 / per * stride + at);
            for (int64_t r0 = 0; r0 < m; r0 += 4) {
                const int64_t rows = m - r0 < 4 ? m - r0 : 4, at = m * v0 + r0 * len;
                const q16_rows part = {pq + at, pd + at / GGUF_BLOCK, ps + at / GGUF_BLOCK, len,
                                       psplit ? psplit + at : NULL};
                q16_dot(&part, row, stride, qtype, rows, sums);
                for (int64_t r = 0; r < rows; ++r) {
                    float *o = out + (r0 + r) * ldo + c;
                    *o = sums[r] + (p > 0 ? *o : bias != NULL ? bias[c] : 0.0f);
                }
            }
        }
    }
    free(packed);
    return 0;
}

#if defined(PAGEDSERVE_GGUF_LANES)
#define LANES_BY_ROWS(QTYPE)                                                                                          \
    switch (rows) {                                                                                                   \
    case 1: q16_lanes_rows(&part, cols, stride, QTYPE, b0, b1, 1, w_group, ahead, sums); break;                       \
    case 2: q16_lanes_rows(&part, cols, stride, QTYPE, b0, b1, 2, w_group, ahead, sums); break;                       \
    case 3: q16_lanes_rows(&part, cols, stride, QTYPE, b0, b1, 3, w_group, ahead, sums); break;                       \
    case 4: q16_lanes_rows(&part, cols, stride, QTYPE, b0, b1, 4, w_group, ahead, sums); break;                       \
    case 5: q16_lanes_rows(&part, cols, stride, QTYPE, b0, b1, 5, w_group, ahead, sums); break;                       \
    case 6: q16_lanes_rows(&part, cols, stride, QTYPE, b0, b1, 6, w_group, ahead, sums); break;                       \
    case 7: q16_lanes_rows(&part, cols, stride, QTYPE, b0, b1, 7, w_group, ahead, sums); break;                       \
    default: q16_lanes_rows(&part, cols, stride, QTYPE, b0, b1, LANE_ROWS, w_group, ahead, sums); break;              \
    }

/* Activation values (rows x weights) up to which gguf_lanes_gemm keeps rows past GGUF_ROWS_LONG whole (the
 * activations read from L2 then, the weights prefetched as they stream): Q4_K / Q6_K GEMVs, 2 threads on a Zen 5,
 * whole against parts of 1024: 2 rows of 4096 / 8192 1.1-2.1x / 1.3-1.6x, 3-4 of 4096 1.4-2.3x, 4 of 8192 (64 KB,
 * past L1) 1.5-1.9x, 8 of 8192 1.0-1.2x (BENCHMARKS.md); more rows in parts. */
#define GGUF_LANES_WHOLE 65536

/* out = x @ w^T (+ bias) for the columns of whole four-row groups (n - n % 4), m activation rows, every kept type
 * (q16_lanes_rows). Rows past GGUF_ROWS_LONG weights, more than GGUF_LANES_WHOLE activation values, go in parts of
 * GGUF_ROWS_PART, as gguf_rows_in_parts does, so that a pass's int16 activation rows stay near while the weights
 * stream past. */
static void gguf_lanes_gemm(const q16_rows *x, const uint8_t *w, int qtype, const float *bias, float *out, int64_t m,
                            int64_t n, int il, int64_t ldo, int threads) {
    const int64_t k = x->k, blocks = k / GGUF_BLOCK, row_bytes = gguf_row_bytes(qtype, k);
    const int64_t units = k / gguf_block_weights(qtype); /* (super-)blocks a row */
    const int64_t stride = gguf_stride(qtype, il), groups = n / GGUF_COLS;
    const int64_t ahead = q16_prefetch_ahead(il == 1 ? row_bytes : gguf_block_bytes(qtype), stride);
    const int64_t parts = k > GGUF_ROWS_LONG && m * k > GGUF_LANES_WHOLE ? (k + GGUF_ROWS_PART - 1) / GGUF_ROWS_PART : 1;
#pragma omp parallel num_threads(threads)
    for (int64_t p = 0; p < parts; ++p) { /* a static schedule gives each thread the same groups in every part */
        const int64_t b0 = units * p / parts, b1 = units * (p + 1) / parts;
        const int64_t part_bytes = GGUF_COLS * (b1 - b0) * gguf_block_bytes(qtype);
        const int64_t groups_ahead = (GGUF_PREFETCH_BYTES + part_bytes - 1) / part_bytes;
#pragma omp for schedule(static) nowait
        for (int64_t g = 0; g < groups; ++g) {
            for (int64_t r0 = 0; r0 < m; r0 += LANE_ROWS) {
                const int64_t rows = m - r0 < LANE_ROWS ? m - r0 : LANE_ROWS;
                const q16_rows part = {x->q + r0 * k, x->d + r0 * blocks, x->s + r0 * blocks, k, NULL};
                /* prefetched once: whole rows as the kernel goes (the group's bytes are contiguous); in parts, the
                 * same part of a group a few on, all at once (its bytes are four runs, one a row, il 1) */
                const uint8_t *w_group = r0 == 0 && parts == 1 ? w + g * GGUF_COLS * row_bytes : NULL;
                if (r0 == 0 && parts > 1 && g + groups_ahead < groups)
                    for (int c = 0; c < (il == 1 ? GGUF_COLS : 1); ++c) {
                        const uint8_t *at = gguf_row(w, (g + groups_ahead) * GGUF_COLS + c, qtype, row_bytes, il);
                        for (int64_t i = b0 * stride; i < b1 * stride; i += 64) prefetch_t0(at + i);
                    }
                const uint8_t *cols[LANE_COLS];
                for (int c = 0; c < LANE_COLS; ++c) cols[c] = gguf_row(w, g * GGUF_COLS + c, qtype, row_bytes, il);
                float sums[LANE_ROWS * LANE_COLS];
                switch (qtype) {
                case GGUF_Q4_0: LANES_BY_ROWS(GGUF_Q4_0); break;
                case GGUF_Q4_1: LANES_BY_ROWS(GGUF_Q4_1); break;
                case GGUF_Q8_0: LANES_BY_ROWS(GGUF_Q8_0); break;
                case GGUF_Q4_K: LANES_BY_ROWS(GGUF_Q4_K); break;
                default: LANES_BY_ROWS(GGUF_Q6_K); break;
                }
                for (int64_t r = 0; r < rows; ++r)
                    for (int c = 0; c < LANE_COLS; ++c) {
                        float *o = out + (r0 + r) * ldo + g * GGUF_COLS + c;
                        *o = sums[r * LANE_COLS + c] + (p > 0 ? *o : bias != NULL ? bias[g * GGUF_COLS + c] : 0.0f);
                    }
            }
        }
    }
}
#endif

/* 0 done; 1 bad type or k; 2 out of memory; 3 too many rows for this level (dequantize and use the GEMM). */
/* out's rows are ldo floats apart (n for a whole matrix; more for one part of a merged layer's output). */
int gguf_gemm(const float *x, const uint8_t *w, int qtype, const float *bias, float *out, int64_t m, int64_t n,
              int64_t k, int il, int64_t ldo, int threads) {
    if (gguf_bad_layout(qtype, n, k, il) || ldo < n) return 1;
    const int64_t row_bytes = gguf_row_bytes(qtype, k), stride = gguf_stride(qtype, il);
    if (m > gguf_gemv_max_rows(qtype)) {
#if defined(PAGEDSERVE_PANELS)
        return gguf_gemm_panels(x, w, qtype, bias, out, m, n, k, il, ldo, threads);
#else
        return 3;
#endif
    }
#if defined(PAGEDSERVE_GGUF_LANES)
    const int lanes = m > 1 && q16_lanes_type(qtype); /* four-row groups in gguf_lanes_gemm */
#else
    const int lanes = 0;
#endif
    /* one allocation: scales d and sums s (float, 2 a block), then the int16 values (and Q6_K's split ones, unless
     * the lanes take every row: they read the values as they are) */
    const int64_t blocks = k / GGUF_BLOCK;
    const int64_t split = Q16_SPLIT_Q6K && qtype == GGUF_Q6_K && !(lanes && n % GGUF_COLS == 0) ? m * k : 0;
    float *scales = malloc(sizeof(float) * (size_t)(2 * m * blocks) + sizeof(int16_t) * (size_t)(m * k + split));
    if (scales == NULL) return 2;
    float *d = scales, *s = scales + m * blocks;
    int16_t *q = (int16_t *)(scales + 2 * m * blocks);
    for (int64_t r = 0; r < m; ++r) q16_quantize_row(x + r * k, k, q + r * k, d + r * blocks, s + r * blocks);
    int16_t *q_split = split ? q + m * k : NULL;
    for (int64_t r = 0; split && r < m; ++r) q16_split_row(q + r * k, k, q_split + r * k);
    int64_t first = 0; /* columns before this are done */
#if defined(__AVX2__)
    const q16_rows all = {q, d, s, k, q_split};
    /* Q8_0 stays on the per-row path: 4 columns at a time measured 0.93-0.97x there (its 34-byte blocks stream at
     * the memory's pace either way), 1.2-1.4x on the 4-bit types (A/B in one process, both levels). */
    if (m == 1 && qtype != GGUF_Q8_0) {
        const int64_t groups = n / GGUF_COLS;
#pragma omp parallel for schedule(static) num_threads(threads)
        for (int64_t g = 0; g < groups; ++g) {
            float sums[GGUF_COLS];
            gguf_dot_group(&all, w, qtype, row_bytes, il, g, sums);
            for (int c = 0; c < GGUF_COLS; ++c)
                out[g * GGUF_COLS + c] = sums[c] + (bias != NULL ? bias[g * GGUF_COLS + c] : 0.0f);
        }
        first = groups * GGUF_COLS;
    }
#endif
#if defined(PAGEDSERVE_GGUF_LANES)
    if (lanes) {
        gguf_lanes_gemm(&all, w, qtype, bias, out, m, n, il, ldo, threads);
        first = n / GGUF_COLS * GGUF_COLS; /* the rest (n % 4 rows in the file's order) below */
    }
#endif
    if (m > 1 && k > GGUF_ROWS_LONG && first == 0) {
        const int failed = gguf_rows_in_parts(q, d, s, q_split, w, qtype, bias, out, m, n, k, il, ldo, threads);
        free(scales);
        return failed;
    }
    /* after the 4-row groups at most 3 rows are left: not worth a parallel region (a fork and join per call) */
#pragma omp parallel for schedule(static) num_threads(threads) if (n - first > GGUF_COLS)
    for (int64_t c = first; c < n; ++c) {
        float sums[4];
        const uint8_t *row = gguf_row(w, c, qtype, row_bytes, il);
        /* the weights GGUF_PREFETCH_BYTES ahead (the matrix is contiguous), past the end too: prefetches never fault
         * (interleaved, a group's four columns prefetch the same bytes again: from cache, measured no slower) */
        for (int64_t at = 0; at < row_bytes; at += 64) prefetch_t0(w + c * row_bytes + GGUF_PREFETCH_BYTES + at);
        /* at most 4 rows a pass (more spill the AVX2 registers); a second pass re-reads the row from cache */
        for (int64_t r0 = 0; r0 < m; r0 += 4) {
            const int64_t rows = m - r0 < 4 ? m - r0 : 4;
            const q16_rows part = {q + r0 * k, d + r0 * blocks, s + r0 * blocks, k, split ? q_split + r0 * k : NULL};
            q16_dot(&part, row, stride, qtype, rows, sums);
            for (int64_t r = 0; r < rows; ++r) out[(r0 + r) * ldo + c] = sums[r] + (bias != NULL ? bias[c] : 0.0f);
        }
    }
    free(scales);
    return 0;
}

/* gguf_gemm for bfloat16 rows x [m, k] (m > gguf_gemv_max_rows: a prefill): bfloat16 panels, float32 out (rows ldo
 * apart). 0 done; 1 bad type or k; 2 out of memory; 3 not this level (gguf_has_bf16_panels) or too few rows. */
int gguf_gemm_bf16(const uint16_t *x, const uint8_t *w, int qtype, const float *bias, float *out, int64_t m,
                   int64_t n, int64_t k, int il, int64_t ldo, int threads) {
    if (gguf_bad_layout(qtype, n, k, il) || ldo < n) return 1;
#if defined(PAGEDSERVE_PANELS) && defined(__AVX512BF16__)
    if (m > gguf_gemv_max_rows(qtype)) return gguf_gemm_panels_bf16(x, w, qtype, bias, out, m, n, k, il, ldo, threads);
#else
    (void)x, (void)w, (void)bias, (void)out, (void)m, (void)threads;
#endif
    return 3;
}
