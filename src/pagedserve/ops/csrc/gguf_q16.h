/* Integer dot products of GGUF weight blocks (gguf.h) with activations quantized to 16 bits: each 32-value block of
 * an activation row becomes int16 q[32] and a float32 scale d = max|x| / 32767, with
 * q = round-to-nearest-even(x * (32767 / max|x|)) (a true division: -ffast-math may turn x / 32767 into a
 * multiplication, which flipped roundings against the tests' PyTorch reference; by a variable it stays one).
 *
 * Why 16 bits and not llama.cpp's 8: with 8-bit activations (vpmaddubsw) the bundled model's greedy text equalled
 * its dequantized float32 run on 3 of 8 prompts x 32 tokens (its activations have outliers, and one outlier sets
 * the scale of its whole block); issue 11 asks for >= 6 of 8. At 16 bits the rounding is 1 / 258 of that, below
 * bfloat16's, and the GEMV still replaces the float path's 8 conversions and 8 FMAs a block with two vpmaddwd (or
 * vpdpwssd with AVX512_VNNI) and one float FMA (numbers: BENCHMARKS.md).
 *
 * Weights are first made signed bytes (Q4_0: n - 8, Q4_1 / Q4_K: the nibble n, Q8_0: q, Q6_K: q - 32), widened
 * to int16. A block's dot product, with s = d_x * sum(q_x) kept per activation block for the types with a min:
 *   Q4_0, Q8_0: d_w d_x sum(w q_x)      Q4_1: d_w d_x sum(n q_x) + m_w s      Q4_K: d sc d_x sum(n q_x) - dmin mn s
 *   Q6_K: d d_x sum((sc_h (q - 32)) q_x), sc_h the scale of each 16-weight half folded into the int16 weights
 *   (the AVX2 super-block kernels, gguf_q16_kquants.h, scale each half's exact integer dot as a float instead)
 * Bounds: |w| <= 4096 (Q6_K: 32 x 128), |q_x| <= 32767, so a SIMD lane's 4 products stay below 2^29: int32 is
 * exact (the plain C path sums a block's 32 in int64) and every level computes the same integers. The rounding
 * adds at most d_x / 2 a value, so |error| <= sum over blocks of d_x / 2 * sum |w| (the tests check this bound).
 */
#ifndef PAGEDSERVE_GGUF_Q16_H
#define PAGEDSERVE_GGUF_Q16_H
#include <math.h>
#include <stdint.h>

#include "gguf.h"
#include "simd.h"

#define Q16_MAX 32767
/* Software prefetch distance of the GEMV's weight stream. A 3072 x 576 Q4_1 GEMV streamed from DRAM (40 matrices
 * in turn, AMX host): 200-225 us without, 136-173 us at 16 rows (5.8 KB) ahead; 2 rows ~200, 64 rows ~160. The
 * single-row GEMVs (q16_dot_cols and the K-quants') prefetch a block step's bytes as they go (q16_prefetch_step):
 * a group's lines all at once (72 for a 2048-wide Q4_K group) made them slower than no prefetch at all on a Zen 3
 * (1.1-1.6x streamed, BENCHMARKS.md); the row path keeps the burst a row (Q8_0 streams at ~20 GB/s with it). */
#define GGUF_PREFETCH_BYTES 6144
/* K-quant rows longer than this (weights): the single-row GEMVs prefetch into L2 only, one four-row group ahead, and
 * the loader keeps such matrices in the file's order (gguf_quant.L1_ROW_WEIGHTS, the same number). The int16
 * activations (2 bytes a weight: 16 KB at k 8192, Llama 3.2 1B's ffn_down) are read again for every group, and the
 * weights prefetched into L1 pushed them out in between: streamed on one thread of a Zen 4, Q4_K 2048 x 8192 ran at
 * 12.8 GB/s against 8192 x 2048's 15.7 (the same bytes), and at 15.1 when the kernel read only the first 4096
 * activations again and again. In a Q4_K_M model, 2 threads: ffn_down 23 -> 28.3-28.5 GB/s (Q4_K), 23.5-24 ->
 * 28-29 (Q6_K); rows of 2048 prefetched into L2 were slower (14.4 against 15.7 GB/s), passes over parts of the
 * rows 0.7x (docs/architecture.md, "Long K-quant rows"). */
#define Q16_L1_ROW_WEIGHTS 4096
/* Weight rows a single-row GEMV takes at a time (q16_dot_cols, AVX2 and up). */
#define GGUF_COLS 4

/* The single-row GEMVs' prefetch, a block step at a time: the GGUF_COLS * block_bytes bytes a step reads, taken as
 * a cursor through the four-row group's bytes (w + b * GGUF_COLS * block_bytes: the group is contiguous, whatever
 * its layout), `ahead` bytes on. Interleaved, that is exactly what the step after GGUF_PREFETCH_BYTES reads. In the
 * file's order a step reads one block from each of four rows a row apart, so a fixed distance per row (what this
 * replaced) prefetched partly the current group and partly rows read at other times; the cursor instead sweeps
 * groups whole groups ahead (at least GGUF_PREFETCH_BYTES), every byte once. Streamed in file order on a Zen 4,
 * 2 threads: Q6_K (k 2048) 18.0-18.5 -> 24.0-25.0 G weights/s, Q4_K 33 -> 51-53, interleaved
 * unchanged (BENCHMARKS.md). Block by block, not as one run of lines: 1.2x for Q6_K in file order (measured).
 * `to_l2`: into L2 only, for the K-quants' rows longer than Q16_L1_ROW_WEIGHTS. */
static inline int64_t q16_prefetch_ahead(int64_t column_bytes, int64_t stride) {
    if (stride == GGUF_COLS * column_bytes) return GGUF_PREFETCH_BYTES; /* interleaved */
    const int64_t group = GGUF_COLS * column_bytes;
    return (GGUF_PREFETCH_BYTES + group - 1) / group * group;
}

static inline __attribute__((always_inline)) void q16_prefetch_step(const uint8_t *w, int64_t b, int64_t block_bytes,
                                                                    int64_t ahead, int to_l2) {
    const uint8_t *at = w + b * GGUF_COLS * block_bytes + ahead;
    if (to_l2) {
        for (int c = 0; c < GGUF_COLS; ++c)
            for (int64_t i = 0; i < block_bytes; i += 64) prefetch_t1(at + c * block_bytes + i);
    } else {
        for (int c = 0; c < GGUF_COLS; ++c)
            for (int64_t i = 0; i < block_bytes; i += 64) prefetch_t0(at + c * block_bytes + i);
    }
}

/* Interleaved K-quant rows (up to Q16_L1_ROW_WEIGHTS weights) prefetch this far ahead, not GGUF_PREFETCH_BYTES: a
 * Q6_K step is 840 bytes of slower arithmetic than Q4_0's, and 6144 bytes ahead (7 steps) the Q6_K output matrix of a
 * Q4_K_M file (49152 x 2048) streamed at 25.4-25.5 GB/s against 28.3-29.7 at 2560-4096 (Zen 4, 2 threads, one
 * process alternating the distances, six rounds); Q4_K 30.3-30.8 against 31.0-31.6 (BENCHMARKS.md). */
#define Q16_KQUANT_PREFETCH_BYTES 3072

/* The K-quant single-row GEMVs' prefetch distance: one four-row group for rows past Q16_L1_ROW_WEIGHTS (prefetched
 * into L2: *to_l2 = 1), Q16_KQUANT_PREFETCH_BYTES interleaved, else q16_prefetch_ahead's. */
static inline int64_t q16_kquant_ahead(int64_t k, int qtype, int64_t column_bytes, int64_t stride, int *to_l2) {
    *to_l2 = k > Q16_L1_ROW_WEIGHTS;
    if (*to_l2) return GGUF_COLS * (k / GGUF_SUPER) * gguf_block_bytes(qtype);
    return stride == GGUF_COLS * column_bytes ? Q16_KQUANT_PREFETCH_BYTES : q16_prefetch_ahead(column_bytes, stride);
}

/* A row x [k] -> q [k] int16, d [k / 32] and s [k / 32] float (s = d * sum of the block's q). */
static inline void q16_quantize_row(const float *x, int64_t k, int16_t *q, float *d, float *s) {
    for (int64_t b = 0; b < k / GGUF_BLOCK; ++b) {
        const float *v = x + b * GGUF_BLOCK;
        float amax = 0.0f;
        for (int j = 0; j < GGUF_BLOCK; ++j) amax = fmaxf(amax, fabsf(v[j]));
        const float scale = amax / (float)Q16_MAX, inverse = amax != 0.0f ? (float)Q16_MAX / amax : 0.0f;
        int total = 0;
        for (int j = 0; j < GGUF_BLOCK; ++j) {
            const int value = (int)nearbyintf(v[j] * inverse);
            q[b * GGUF_BLOCK + j] = (int16_t)(value > Q16_MAX ? Q16_MAX : value < -Q16_MAX ? -Q16_MAX : value);
            total += q[b * GGUF_BLOCK + j];
        }
        d[b] = scale;
        s[b] = scale * (float)total;
    }
}

/* Quantized activation rows, as q16_quantize_row writes them, row after row; `split` (or NULL) the same values
 * as q16_split_row orders them, for Q6_K's single-row GEMV (gguf_q16_kquants.h). */
typedef struct {
    const int16_t *q;
    const float *d, *s;
    int64_t k;
    const int16_t *split;
} q16_rows;

/* Whether Q6_K's GEMVs read the split values (q16_rows.split): its AVX2 kernels do, the plain C path does not. */
#if defined(__AVX2__)
#define Q16_SPLIT_Q6K 1
#else
#define Q16_SPLIT_Q6K 0
#endif

/* q [k] -> out [k]: each 32-value block's 16 even-indexed values, then its 16 odd-indexed ones. A 16-bit lane
 * of packed weight bytes holds an even-indexed weight in its low byte and the next in its high byte: two shifts
 * widen each in place, and these orders meet them without a shuffle. */
static inline void q16_split_row(const int16_t *q, int64_t k, int16_t *out) {
    for (int64_t j = 0; j < k; ++j) out[(j & ~(int64_t)31) + (j & 1) * 16 + ((j & 31) >> 1)] = q[j];
}

/* gguf.c: sums[c] = x . row 4g + c of w (n rows of row_bytes, interleaved by il) for one activation row. */
void gguf_dot_group(const q16_rows *x, const uint8_t *w, int qtype, int64_t row_bytes, int il, int64_t g,
                    float *sums);

/* Sub-block b of a row: its 32 weights as signed bytes (order as gguf.h), the scale of its integer dot, the
 * factor of the activation sum s (the min), and Q6_K's two half scales (else 1). Plain C; the AVX2 path below
 * builds the same bytes in registers. */
static inline void q16_block_bytes(const uint8_t *row, int64_t b, int64_t stride, int qtype, int8_t w[GGUF_BLOCK],
                                   float *scale, float *shift, int half_scale[2]) {
    *shift = 0.0f;
    half_scale[0] = half_scale[1] = 1;
    if (qtype == GGUF_Q4_K) {
        float min;
        const uint8_t *qs = gguf_q4k_sub_block(row, b, stride, scale, &min);
        for (int j = 0; j < GGUF_BLOCK; ++j) w[j] = (int8_t)((qs[j] >> (4 * (b & 1))) & 15);
        *shift = -min;
    } else if (qtype == GGUF_Q6_K) {
        const uint8_t *super = row + (b >> 3) * stride;
        const int sub = (int)(b & 7), h = sub >> 2, g = sub & 3;
        const uint8_t *ql = super + 64 * h + 32 * (g & 1), *qh = super + 128 + 32 * h;
        for (int j = 0; j < GGUF_BLOCK; ++j)
            w[j] = (int8_t)((((ql[j] >> (4 * (g >> 1))) & 15) | (((qh[j] >> (2 * g)) & 3) << 4)) - 32);
        const int8_t *sc = (const int8_t *)(super + 192 + 8 * h + 2 * g);
        *scale = gguf_half(super + 208);
        half_scale[0] = sc[0];
        half_scale[1] = sc[1];
    } else {
        const uint8_t *block = row + b * stride;
        *scale = gguf_half(block);
        if (qtype == GGUF_Q8_0) {
            for (int j = 0; j < GGUF_BLOCK; ++j) w[j] = ((const int8_t *)(block + 2))[j];
        } else {
            const int q4_1 = qtype == GGUF_Q4_1;
            const uint8_t *qs = block + (q4_1 ? 4 : 2);
            for (int j = 0; j < GGUF_BLOCK / 2; ++j) {
                w[j] = (int8_t)((qs[j] & 15) - (q4_1 ? 0 : 8));
                w[j + GGUF_BLOCK / 2] = (int8_t)((qs[j] >> 4) - (q4_1 ? 0 : 8));
            }
            if (q4_1) *shift = gguf_half(block + 2);
        }
    }
}

#if defined(__AVX2__)
/* 16 int16 weights . 16 int16 activations, twice -> 8 int32 partial sums. */
static inline __m256i q16_pair_dot(__m256i w0, __m256i x0, __m256i w1, __m256i x1) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpwssd_epi32(_mm256_madd_epi16(w0, x0), w1, x1);
#else
    return _mm256_add_epi32(_mm256_madd_epi16(w0, x0), _mm256_madd_epi16(w1, x1));
#endif
}

/* sums[r] = x_r . row for ROWS rows (1-4) of one GGML type, the row's (super-)blocks `stride` bytes apart; type
 * and rows are constants where it is inlined, so each of the 20 variants is one straight loop with its
 * accumulators in registers. */
static inline __attribute__((always_inline)) void q16_dot_rows(const q16_rows *x, const uint8_t *row, int64_t stride,
                                                               int qtype, int rows, float *sums) {
    __m256 acc[4];
    float offset[4];
    for (int r = 0; r < rows; ++r) {
        acc[r] = _mm256_setzero_ps();
        offset[r] = 0.0f;
    }
    const __m128i mask = _mm_set1_epi8(15);
    const int64_t blocks = x->k / GGUF_BLOCK;
    for (int64_t b = 0; b < blocks; ++b) {
        __m128i lo, hi; /* weights 0-15 and 16-31 as signed bytes */
        float scale, shift = 0.0f;
        const int8_t *q6k_scales = NULL; /* Q6_K: the two 16-weight halves' scales */
        if (qtype == GGUF_Q4_K) {
            float min;
            const uint8_t *qs = gguf_q4k_sub_block(row, b, stride, &scale, &min);
            const __m128i shift_bits = _mm_cvtsi32_si128(4 * (int)(b & 1));
            lo = _mm_and_si128(_mm_srl_epi16(_mm_loadu_si128((const __m128i *)qs), shift_bits), mask);
            hi = _mm_and_si128(_mm_srl_epi16(_mm_loadu_si128((const __m128i *)(qs + 16)), shift_bits), mask);
            shift = -min;
        } else if (qtype == GGUF_Q6_K) {
            const uint8_t *super = row + (b >> 3) * stride;
            const int sub = (int)(b & 7), h = sub >> 2, g = sub & 3;
            const __m256i ql = _mm256_loadu_si256((const __m256i *)(super + 64 * h + 32 * (g & 1)));
            const __m256i qh = _mm256_loadu_si256((const __m256i *)(super + 128 + 32 * h));
            const __m256i low =
                _mm256_and_si256(_mm256_srl_epi16(ql, _mm_cvtsi32_si128(4 * (g >> 1))), _mm256_set1_epi8(15));
            const __m256i high =
                _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * g)), _mm256_set1_epi8(3));
            const __m256i q = _mm256_sub_epi8(_mm256_or_si256(low, _mm256_slli_epi16(high, 4)), _mm256_set1_epi8(32));
            lo = _mm256_castsi256_si128(q);
            hi = _mm256_extracti128_si256(q, 1);
            scale = gguf_half(super + 208);
            q6k_scales = (const int8_t *)(super + 192 + 8 * h + 2 * g);
        } else {
            const uint8_t *block = row + b * stride;
            scale = gguf_half(block);
            if (qtype == GGUF_Q8_0) {
                lo = _mm_loadu_si128((const __m128i *)(block + 2));
                hi = _mm_loadu_si128((const __m128i *)(block + 18));
            } else {
                const __m128i packed = _mm_loadu_si128((const __m128i *)(block + (qtype == GGUF_Q4_1 ? 4 : 2)));
                lo = _mm_and_si128(packed, mask);
                hi = _mm_and_si128(_mm_srli_epi16(packed, 4), mask);
                if (qtype == GGUF_Q4_1) {
                    shift = gguf_half(block + 2);
                } else {
                    lo = _mm_sub_epi8(lo, _mm_set1_epi8(8));
                    hi = _mm_sub_epi8(hi, _mm_set1_epi8(8));
                }
            }
        }
        __m256i w0 = _mm256_cvtepi8_epi16(lo), w1 = _mm256_cvtepi8_epi16(hi);
        if (qtype == GGUF_Q6_K) { /* the half scales folded into the weights (|sc (q - 32)| <= 4096) */
            w0 = _mm256_mullo_epi16(w0, _mm256_set1_epi16(q6k_scales[0]));
            w1 = _mm256_mullo_epi16(w1, _mm256_set1_epi16(q6k_scales[1]));
        }
        for (int r = 0; r < rows; ++r) {
            const int64_t at = r * blocks + b;
            const int16_t *xq = x->q + at * GGUF_BLOCK;
            const __m256i dots = q16_pair_dot(w0, _mm256_loadu_si256((const __m256i *)xq), w1,
                                              _mm256_loadu_si256((const __m256i *)(xq + 16)));
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots), _mm256_set1_ps(scale * x->d[at]), acc[r]);
            offset[r] += shift * x->s[at];
        }
    }
    for (int r = 0; r < rows; ++r) sums[r] = gguf_sum8(acc[r]) + offset[r];
}

/* One activation row against GGUF_COLS consecutive weight rows of a 4-bit simple type (Q4_0, Q4_1): the
 * single-stream decode case. Each weight row has its own accumulator, so four independent FMA chains run side by
 * side and each activation block is loaded once for all of them. Against one weight row at a time (q16_dot_rows: one accumulator chain, a call a row), a
 * 3072 x 576 Q4_1 GEMV: 104-110 against 158-166 us (A/B in one process, AVX-512 BF16 and AVX2 levels; 512-bit
 * registers were no faster), BENCHMARKS.md. */

/* The 32 weights of a Q4_0 / Q4_1 block as int16 (two halves of 16) dotted with 32 int16 activations: 8 int32. */
static inline __m256i q16_block_dot(const uint8_t *block, int qtype, __m256i x0, __m256i x1) {
    /* The 16 packed bytes widened once: lane j holds weight j in its low nibble and weight j + 16 in its high one. */
    const __m256i packed = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(block + (qtype == GGUF_Q4_1 ? 4 : 2))));
    __m256i lo = _mm256_and_si256(packed, _mm256_set1_epi16(15)), hi = _mm256_srli_epi16(packed, 4);
    if (qtype == GGUF_Q4_0) {
        lo = _mm256_sub_epi16(lo, _mm256_set1_epi16(8));
        hi = _mm256_sub_epi16(hi, _mm256_set1_epi16(8));
    }
    return q16_pair_dot(lo, x0, hi, x1);
}

/* sums[c] = x . row c for the four weight rows at w, w + column_bytes, ... (their blocks `stride` bytes apart: the
 * plain layout's row_bytes and block bytes, interleave 4's block bytes and 4 x block bytes); x is one activation
 * row. Named
 * accumulators and a constant qtype where it is inlined: with arrays gcc kept the accumulators in memory and ran
 * 3.7x slower (measured). The four columns' (d, m) float16 pairs of a block are converted together (one vcvtph2ps
 * for 8 halves, one multiply by (d_x, s)), not one column at a time: 1.1-1.2x on a streamed 6912 x 1152 Q4_0 GEMV
 * (BENCHMARKS.md, "Gemma 3"). Lanes 2c hold column c's scale of the integer dot, lanes 2c + 1 its min times s
 * (Q4_1; Q4_0's are 0), summed in `offsets`. */
static inline __attribute__((always_inline)) void q16_dot_cols(const q16_rows *x, const uint8_t *w,
                                                               int64_t column_bytes, int64_t stride, int qtype,
                                                               float *sums) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0, offsets = acc0;
    /* Q4_0: d alone (the 2 bytes after it are weights) */
    const __m128i halves_mask = _mm_set1_epi32(qtype == GGUF_Q4_0 ? 0xffff : -1);
    const int64_t blocks = x->k / GGUF_BLOCK, ahead = q16_prefetch_ahead(column_bytes, stride);
    float scales[8];
    for (int64_t b = 0; b < blocks; ++b) {
        const int16_t *xq = x->q + b * GGUF_BLOCK;
        const __m256i x0 = _mm256_loadu_si256((const __m256i *)xq), x1 = _mm256_loadu_si256((const __m256i *)(xq + 16));
        const uint8_t *block = w + b * stride;
        q16_prefetch_step(w, b, gguf_block_bytes(qtype), ahead, 0); /* 72-80 B a step */
        int32_t h0, h1, h2, h3;
        memcpy(&h0, block, 4);
        memcpy(&h1, block + column_bytes, 4);
        memcpy(&h2, block + 2 * column_bytes, 4);
        memcpy(&h3, block + 3 * column_bytes, 4);
        const __m128i halves = _mm_and_si128(_mm_setr_epi32(h0, h1, h2, h3), halves_mask);
        const __m256 xds = _mm256_setr_ps(x->d[b], x->s[b], x->d[b], x->s[b], x->d[b], x->s[b], x->d[b], x->s[b]);
        const __m256 products = _mm256_mul_ps(_mm256_cvtph_ps(halves), xds);
        offsets = _mm256_add_ps(offsets, products);
        _mm256_storeu_ps(scales, products);
        acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q16_block_dot(block, qtype, x0, x1)), _mm256_broadcast_ss(scales), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q16_block_dot(block + column_bytes, qtype, x0, x1)),
                               _mm256_broadcast_ss(scales + 2), acc1);
        acc2 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q16_block_dot(block + 2 * column_bytes, qtype, x0, x1)),
                               _mm256_broadcast_ss(scales + 4), acc2);
        acc3 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q16_block_dot(block + 3 * column_bytes, qtype, x0, x1)),
                               _mm256_broadcast_ss(scales + 6), acc3);
    }
    float offset[8];
    _mm256_storeu_ps(offset, offsets);
    const int q4_1 = qtype == GGUF_Q4_1; /* Q4_0's odd lanes hold 0 * s: no min */
    sums[0] = gguf_sum8(acc0) + (q4_1 ? offset[1] : 0.0f);
    sums[1] = gguf_sum8(acc1) + (q4_1 ? offset[3] : 0.0f);
    sums[2] = gguf_sum8(acc2) + (q4_1 ? offset[5] : 0.0f);
    sums[3] = gguf_sum8(acc3) + (q4_1 ? offset[7] : 0.0f);
}

#else
/* Plain C, the same integers (the compiler vectorises the 32-value loops for the baseline ISA). */
static inline void q16_dot_rows(const q16_rows *x, const uint8_t *row, int64_t stride, int qtype, int rows,
                                float *sums) {
    const int64_t blocks = x->k / GGUF_BLOCK;
    for (int r = 0; r < rows; ++r) sums[r] = 0.0f;
    for (int64_t b = 0; b < blocks; ++b) {
        int8_t w[GGUF_BLOCK];
        float scale, shift;
        int half_scale[2];
        q16_block_bytes(row, b, stride, qtype, w, &scale, &shift, half_scale);
        for (int r = 0; r < rows; ++r) {
            const int64_t at = r * blocks + b;
            const int16_t *xq = x->q + at * GGUF_BLOCK;
            int64_t total = 0; /* 32 products of up to 4096 x 32767 overflow int32 (the SIMD lanes sum 4) */
            for (int j = 0; j < GGUF_BLOCK; ++j) total += (int32_t)(w[j] * half_scale[j / 16]) * xq[j];
            sums[r] += (float)total * (scale * x->d[at]) + shift * x->s[at];
        }
    }
}
#endif
#endif
