/* Single-row GEMVs of the K-quants (gguf.h: Q4_K, Q6_K super-blocks of 256 weights) against activations quantized
 * to 16 bits (gguf_q16.h), four weight rows at a time and a super-block at a time: the unit of work of gguf.c's
 * gguf_dot_group for llama.cpp's most used files (Q4_K_M: Q4_K, with Q6_K for the output and about half the
 * ffn_down / attn_v matrices), and their multi-row GEMVs (decode batches of 2-8 sequences below AVX-512; on its
 * levels: gguf_q16_lanes.h). AVX2 and up; below it the row path (q16_dot_rows).
 */
#ifndef PAGEDSERVE_GGUF_Q16_KQUANTS_H
#define PAGEDSERVE_GGUF_Q16_KQUANTS_H
#include <stdint.h>
#include <string.h>

#include "gguf.h"
#include "gguf_q16.h"
#include "simd.h"

#if defined(__AVX2__)
/* The 8 int32 lanes of each of d0..d7 summed: one vector of the eight sums (a tree of horizontal adds). */
static inline __m256i q16_sum8x8(__m256i d0, __m256i d1, __m256i d2, __m256i d3, __m256i d4, __m256i d5, __m256i d6,
                                 __m256i d7) {
    const __m256i g0 = _mm256_hadd_epi32(_mm256_hadd_epi32(d0, d1), _mm256_hadd_epi32(d2, d3));
    const __m256i g1 = _mm256_hadd_epi32(_mm256_hadd_epi32(d4, d5), _mm256_hadd_epi32(d6, d7));
    return _mm256_add_epi32(_mm256_permute2x128_si256(g0, g1, 0x20), _mm256_permute2x128_si256(g0, g1, 0x31));
}

/* Sub-blocks 2p and 2p + 1 of a Q4_K super-block (their 32 bytes: low nibbles 2p, high 2p + 1) dotted with their
 * int16 activations xa (block 2p) and xb (2p + 1): 8 int32 each. */
#define Q4K_PAIR(P, DA, DB)                                                                                            \
    do {                                                                                                               \
        const __m256i lo = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(qs + 32 * (P))));                  \
        const __m256i hi = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(qs + 32 * (P) + 16)));             \
        const int16_t *xa = xq + 64 * (P);                                                                             \
        DA = q16_pair_dot(_mm256_and_si256(lo, nibble), _mm256_loadu_si256((const __m256i *)xa),                        \
                          _mm256_and_si256(hi, nibble), _mm256_loadu_si256((const __m256i *)(xa + 16)));              \
        DB = q16_pair_dot(_mm256_srli_epi16(lo, 4), _mm256_loadu_si256((const __m256i *)(xa + 32)),                   \
                          _mm256_srli_epi16(hi, 4), _mm256_loadu_si256((const __m256i *)(xa + 48)));                  \
    } while (0)

/* One Q4_K super-block of one weight row against its 256 activations: the eight sub-blocks' integer dots summed
 * to one vector (lane s: sub-block s), times d * sc[s] * d_x[s], less dmin * mn[s] * s_x[s], added to acc (the
 * scales and mins unpacked all at once: gguf_q4k_scales_mins). */
static inline __attribute__((always_inline)) __m256 q4k_super_dot(const uint8_t *super, const int16_t *xq, __m256 dx,
                                                                  __m256 sx, __m256 acc) {
    uint64_t sc, mn;
    gguf_q4k_scales_mins(super, &sc, &mn);
    const __m256 scf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)sc)));
    const __m256 mnf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)mn)));
    const __m256i nibble = _mm256_set1_epi16(15);
    const uint8_t *qs = super + 16;
    __m256i d0, d1, d2, d3, d4, d5, d6, d7;
    Q4K_PAIR(0, d0, d1);
    Q4K_PAIR(1, d2, d3);
    Q4K_PAIR(2, d4, d5);
    Q4K_PAIR(3, d6, d7);
    const __m256i dots = q16_sum8x8(d0, d1, d2, d3, d4, d5, d6, d7);
    /* d * sc and dmin * mn are exact in float32 (11 + 6 bits); each product below rounds once, as the row path's */
    const __m256 scale = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(gguf_half(super)), scf), dx);
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots), scale, acc);
    return _mm256_fnmadd_ps(_mm256_mul_ps(_mm256_set1_ps(gguf_half(super + 2)), mnf), sx, acc);
}
#undef Q4K_PAIR

/* Q4_K, ROWS (1-4) activation rows against one weight row (super-blocks `stride` apart): the multi-row GEMV of a
 * decode batch. Per super-block the scales are unpacked and the 256 weights widened to int16 once, then each row
 * takes its integer dots from them (the row path, q16_dot_rows, decoded each sub-block's scale and min in scalar
 * code, for every row). */
static inline __attribute__((always_inline)) void q16_dot_rows_q4k(const q16_rows *x, const uint8_t *row,
                                                                   int64_t stride, int rows, float *sums) {
    __m256 acc[4];
    for (int r = 0; r < rows; ++r) acc[r] = _mm256_setzero_ps();
    const int64_t supers = x->k / GGUF_SUPER, blocks = x->k / GGUF_BLOCK;
    const __m256i nibble = _mm256_set1_epi16(15);
    for (int64_t b = 0; b < supers; ++b) {
        const uint8_t *super = row + b * stride;
        uint64_t sc, mn;
        gguf_q4k_scales_mins(super, &sc, &mn);
        const __m256 scale = _mm256_mul_ps(_mm256_set1_ps(gguf_half(super)),
                                           _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)sc))));
        const __m256 mins = _mm256_mul_ps(_mm256_set1_ps(gguf_half(super + 2)),
                                          _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)mn))));
        __m256i w[16]; /* sub-block s: w[2s] weights 0-15, w[2s + 1] 16-31 */
        for (int p = 0; p < 4; ++p) {
            const __m256i lo = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(super + 16 + 32 * p)));
            const __m256i hi = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(super + 32 + 32 * p)));
            w[4 * p] = _mm256_and_si256(lo, nibble);
            w[4 * p + 1] = _mm256_and_si256(hi, nibble);
            w[4 * p + 2] = _mm256_srli_epi16(lo, 4);
            w[4 * p + 3] = _mm256_srli_epi16(hi, 4);
        }
        for (int r = 0; r < rows; ++r) {
            const int16_t *xq = x->q + r * x->k + b * GGUF_SUPER;
            __m256i d[8];
            for (int s = 0; s < 8; ++s)
                d[s] = q16_pair_dot(w[2 * s], _mm256_loadu_si256((const __m256i *)(xq + 32 * s)), w[2 * s + 1],
                                    _mm256_loadu_si256((const __m256i *)(xq + 32 * s + 16)));
            const __m256i dots = q16_sum8x8(d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]);
            const float *dx = x->d + r * blocks + 8 * b, *sx = x->s + r * blocks + 8 * b;
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots), _mm256_mul_ps(scale, _mm256_loadu_ps(dx)), acc[r]);
            acc[r] = _mm256_fnmadd_ps(mins, _mm256_loadu_ps(sx), acc[r]);
        }
    }
    for (int r = 0; r < rows; ++r) sums[r] = gguf_sum8(acc[r]);
}

/* Q4_K, one activation row against GGUF_COLS weight rows (column_bytes apart, super-blocks `stride` apart): the
 * single-stream GEMV of llama.cpp's most used files (Q4_K_M). A super-block at a time per row, its eight sub-blocks'
 * scales unpacked once as vectors: the sub-block loop (q16_dot_rows: the scales decoded one sub-block at a time in
 * scalar code) ran at 5.8 G weights/s in cache on a Zen 3, one thread (BENCHMARKS.md). */
static inline void q16_dot_cols_q4k(const q16_rows *x, const uint8_t *w, int64_t column_bytes, int64_t stride,
                                    float *sums) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    const int64_t supers = x->k / GGUF_SUPER;
    int to_l2;
    const int64_t ahead = q16_kquant_ahead(x->k, GGUF_Q4_K, column_bytes, stride, &to_l2);
    for (int64_t b = 0; b < supers; ++b) {
        const int16_t *xq = x->q + b * GGUF_SUPER;
        const __m256 dx = _mm256_loadu_ps(x->d + 8 * b), sx = _mm256_loadu_ps(x->s + 8 * b);
        const uint8_t *super = w + b * stride;
        q16_prefetch_step(w, b, gguf_block_bytes(GGUF_Q4_K), ahead, to_l2); /* gguf_q16.h: why */
        acc0 = q4k_super_dot(super, xq, dx, sx, acc0);
        acc1 = q4k_super_dot(super + column_bytes, xq, dx, sx, acc1);
        acc2 = q4k_super_dot(super + 2 * column_bytes, xq, dx, sx, acc2);
        acc3 = q4k_super_dot(super + 3 * column_bytes, xq, dx, sx, acc3);
    }
    sums[0] = gguf_sum8(acc0);
    sums[1] = gguf_sum8(acc1);
    sums[2] = gguf_sum8(acc2);
    sums[3] = gguf_sum8(acc3);
}

/* Half h (128 weights, sub-blocks 4h..4h + 3) of a Q6_K super-block as signed bytes q - 32, 32 a register (block
 * j of the half in q[j]), assembled in the byte domain: 16-bit shifts, with masks that drop the bits crossing
 * bytes. Block 0: low nibbles of ql[0..31], qh bits 0-1; 1: ql[32..63], bits 2-3; 2: high nibbles of ql[0..31],
 * bits 4-5; 3: ql[32..63], bits 6-7 (gguf.h). q6k_bytes: block j's bytes from the same positions of a (ql[0..31]),
 * b (ql[32..63]) and hi (qh[0..31]), which may also be gathered from several rows (gguf_q16_lanes.h). */
static inline __attribute__((always_inline)) __m256i q6k_bytes(__m256i a, __m256i b, __m256i hi, int j) {
    const __m256i low = j == 0 ? a : j == 1 ? b : _mm256_srli_epi16(j == 2 ? a : b, 4);
    const __m256i high = j == 0 ? _mm256_slli_epi16(hi, 4) : j == 1 ? _mm256_slli_epi16(hi, 2)
                       : j == 2 ? hi : _mm256_srli_epi16(hi, 2);
    return _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(low, _mm256_set1_epi8(0x0f)),
                                           _mm256_and_si256(high, _mm256_set1_epi8(0x30))),
                           _mm256_set1_epi8(32));
}
static inline __attribute__((always_inline)) void q6k_half_bytes(const uint8_t *super, int h, __m256i q[4]) {
    const uint8_t *ql = super + 64 * h, *qh = super + 128 + 32 * h;
    const __m256i a = _mm256_loadu_si256((const __m256i *)ql), b = _mm256_loadu_si256((const __m256i *)(ql + 32));
    const __m256i hi = _mm256_loadu_si256((const __m256i *)qh);
    for (int j = 0; j < 4; ++j) q[j] = q6k_bytes(a, b, hi, j);
}

/* The bytes of one block (q6k_half_bytes) widened in their 16-bit lanes by shifts: the even-indexed weights and
 * the odd-indexed ones (vpmovsxbw, a shuffle, as the vextracti128 before it, measured 0.8x of this). */
static inline __m256i q6k_even(__m256i q) { return _mm256_srai_epi16(_mm256_slli_epi16(q, 8), 8); }
static inline __m256i q6k_odd(__m256i q) { return _mm256_srai_epi16(q, 8); }

/* One block's widened weights dotted with its split activations (q16_split_row: 16 even-indexed values, then 16
 * odd): int32 lanes 0-3 hold the products of the block's weights 0-15 (one Q6_K scale), lanes 4-7 of 16-31. */
static inline __m256i q6k_block_dot(__m256i even, __m256i odd, const int16_t *x) {
    return q16_pair_dot(even, _mm256_loadu_si256((const __m256i *)x), odd, _mm256_loadu_si256((const __m256i *)(x + 16)));
}

/* Four blocks' dots (q6k_block_dot) -> the eight 16-weight groups' sums, lanes [g0 g2 g4 g6 g1 g3 g5 g7]. Each
 * is exact: |.| <= 16 x 32 x 32767 < 2^24, exact as a float too. */
static inline __m256i q6k_group_sums(__m256i d0, __m256i d1, __m256i d2, __m256i d3) {
    return _mm256_hadd_epi32(_mm256_hadd_epi32(d0, d1), _mm256_hadd_epi32(d2, d3));
}

/* A super-block's int8 group scales times d, as floats in q6k_group_sums' lane order: lo for half 0, hi for 1
 * (exact: 8 + 11 bits). */
static inline __attribute__((always_inline)) void q6k_scales(const uint8_t *super, __m256 *lo, __m256 *hi) {
    const __m128i sc = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(super + 192)),
                                        _mm_setr_epi8(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15));
    const __m256 d = _mm256_set1_ps(gguf_half(super + 208));
    *lo = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc)), d);
    *hi = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(sc, 8))), d);
}

/* d_x of a super-block's eight 32-value blocks (dx) in q6k_group_sums' lane order: blocks 0-3 twice for half 0
 * (*lo), 4-7 for half 1 (*hi). */
static inline void q6k_block_scales(__m256 dx, __m256 *lo, __m256 *hi) {
    *lo = _mm256_permutevar8x32_ps(dx, _mm256_setr_epi32(0, 1, 2, 3, 0, 1, 2, 3));
    *hi = _mm256_permutevar8x32_ps(dx, _mm256_setr_epi32(4, 5, 6, 7, 4, 5, 6, 7));
}

/* One Q6_K super-block of one weight row against its 256 split activations, added to acc: each group's integer dot
 * times its scale and d (q6k_scales) and d_x of its block (dx_lo / dx_hi: q6k_block_scales). In the int16 domain,
 * each group's scale folded in by a vpmullw and the lanes summed by a tree of 6 horizontal adds per 128 weights,
 * this ran at half Q4_K's rate; now at 0.8x (BENCHMARKS.md). */
static inline __attribute__((always_inline)) __m256 q6k_super_dot(const uint8_t *super, const int16_t *x,
                                                                  __m256 dx_lo, __m256 dx_hi, __m256 acc) {
    __m256 scale_lo, scale_hi;
    q6k_scales(super, &scale_lo, &scale_hi);
    __m256i q[4], d[4];
    q6k_half_bytes(super, 0, q);
    for (int j = 0; j < 4; ++j) d[j] = q6k_block_dot(q6k_even(q[j]), q6k_odd(q[j]), x + 32 * j);
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q6k_group_sums(d[0], d[1], d[2], d[3])), _mm256_mul_ps(scale_lo, dx_lo),
                          acc);
    q6k_half_bytes(super, 1, q);
    for (int j = 0; j < 4; ++j) d[j] = q6k_block_dot(q6k_even(q[j]), q6k_odd(q[j]), x + 128 + 32 * j);
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(q6k_group_sums(d[0], d[1], d[2], d[3])), _mm256_mul_ps(scale_hi, dx_hi),
                           acc);
}

/* Q6_K, ROWS (1-4) split activation rows (x->split) against one weight row: the multi-row GEMV of a decode batch.
 * Per super-block the weights are assembled and widened once, then each row takes its dots from them (the row
 * path, q16_dot_rows, rebuilt and rescaled them for every row). */
static inline __attribute__((always_inline)) void q16_dot_rows_q6k(const q16_rows *x, const uint8_t *row,
                                                                   int64_t stride, int rows, float *sums) {
    __m256 acc[4];
    for (int r = 0; r < rows; ++r) acc[r] = _mm256_setzero_ps();
    const int64_t supers = x->k / GGUF_SUPER, blocks = x->k / GGUF_BLOCK;
    for (int64_t b = 0; b < supers; ++b) {
        const uint8_t *super = row + b * stride;
        __m256 scale_lo, scale_hi;
        q6k_scales(super, &scale_lo, &scale_hi);
        __m256i w[16]; /* block j of the super-block: w[2j] its even-indexed weights, w[2j + 1] the odd */
        for (int h = 0; h < 2; ++h) {
            __m256i q[4];
            q6k_half_bytes(super, h, q);
            for (int j = 0; j < 4; ++j) {
                w[8 * h + 2 * j] = q6k_even(q[j]);
                w[8 * h + 2 * j + 1] = q6k_odd(q[j]);
            }
        }
        for (int r = 0; r < rows; ++r) {
            const int16_t *xs = x->split + r * x->k + b * GGUF_SUPER;
            __m256 dx_lo, dx_hi;
            q6k_block_scales(_mm256_loadu_ps(x->d + r * blocks + 8 * b), &dx_lo, &dx_hi);
            __m256i d[8];
            for (int j = 0; j < 8; ++j) d[j] = q6k_block_dot(w[2 * j], w[2 * j + 1], xs + 32 * j);
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q6k_group_sums(d[0], d[1], d[2], d[3])),
                                     _mm256_mul_ps(scale_lo, dx_lo), acc[r]);
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q6k_group_sums(d[4], d[5], d[6], d[7])),
                                     _mm256_mul_ps(scale_hi, dx_hi), acc[r]);
        }
    }
    for (int r = 0; r < rows; ++r) sums[r] = gguf_sum8(acc[r]);
}

/* Q6_K, one activation row (its split values: x->split) against GGUF_COLS weight rows, as q16_dot_cols_q4k (the
 * output and half the ffn_down / attn_v matrices of a Q4_K_M file). */
static inline void q16_dot_cols_q6k(const q16_rows *x, const uint8_t *w, int64_t column_bytes, int64_t stride,
                                    float *sums) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    const int64_t supers = x->k / GGUF_SUPER;
    int to_l2;
    const int64_t ahead = q16_kquant_ahead(x->k, GGUF_Q6_K, column_bytes, stride, &to_l2);
    for (int64_t b = 0; b < supers; ++b) {
        const int16_t *xq = x->split + b * GGUF_SUPER;
        __m256 lo, hi;
        q6k_block_scales(_mm256_loadu_ps(x->d + 8 * b), &lo, &hi);
        const uint8_t *super = w + b * stride;
        q16_prefetch_step(w, b, gguf_block_bytes(GGUF_Q6_K), ahead, to_l2);
        acc0 = q6k_super_dot(super, xq, lo, hi, acc0);
        acc1 = q6k_super_dot(super + column_bytes, xq, lo, hi, acc1);
        acc2 = q6k_super_dot(super + 2 * column_bytes, xq, lo, hi, acc2);
        acc3 = q6k_super_dot(super + 3 * column_bytes, xq, lo, hi, acc3);
    }
    sums[0] = gguf_sum8(acc0);
    sums[1] = gguf_sum8(acc1);
    sums[2] = gguf_sum8(acc2);
    sums[3] = gguf_sum8(acc3);
}
#endif
#endif
