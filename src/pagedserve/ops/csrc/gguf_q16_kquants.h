/* Single-row GEMVs of the K-quants (gguf.h: Q4_K, Q6_K super-blocks of 256 weights) against activations quantized
 * to 16 bits (gguf_q16.h), four weight rows at a time and a super-block at a time: the unit of work of gguf.c's
 * gguf_dot_group for llama.cpp's most used files (Q4_K_M: Q4_K, with Q6_K for the output and about half the
 * ffn_down / attn_v matrices). AVX2 and up; below it gguf_dot_group takes the row path (q16_dot_rows).
 */
#ifndef PAGEDSERVE_GGUF_Q16_KQUANTS_H
#define PAGEDSERVE_GGUF_Q16_KQUANTS_H
#include <stdint.h>
#include <string.h>

#include "gguf.h"
#include "gguf_q16.h"

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
 * to one vector (lane s: sub-block s), times d * sc[s] * d_x[s], less dmin * mn[s] * s_x[s], added to acc. The
 * scales are unpacked with whole-word masks (the layout in gguf.h: sc and mn 0-3 are the low 6 bits of bytes 0-3
 * and 4-7; 4-7 take their low 4 bits from bytes 8-11 and their high 2 from the top of bytes 0-3 / 4-7). */
static inline __attribute__((always_inline)) __m256 q4k_super_dot(const uint8_t *super, const int16_t *xq, __m256 dx,
                                                                  __m256 sx, __m256 acc) {
    uint32_t a, b, c;
    memcpy(&a, super + 4, 4);
    memcpy(&b, super + 8, 4);
    memcpy(&c, super + 12, 4);
    const uint32_t six = 0x3f3f3f3fu, four = 0x0f0f0f0fu, two = 0x03030303u; /* low bits of each byte */
    const uint64_t sc = (a & six) | (uint64_t)((c & four) | ((a >> 6) & two) << 4) << 32;
    const uint64_t mn = (b & six) | (uint64_t)(((c >> 4) & four) | ((b >> 6) & two) << 4) << 32;
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
        uint32_t a, m, c;
        memcpy(&a, super + 4, 4);
        memcpy(&m, super + 8, 4);
        memcpy(&c, super + 12, 4);
        const uint32_t six = 0x3f3f3f3fu, four = 0x0f0f0f0fu, two = 0x03030303u;
        const uint64_t sc = (a & six) | (uint64_t)((c & four) | ((a >> 6) & two) << 4) << 32;
        const uint64_t mn = (m & six) | (uint64_t)(((c >> 4) & four) | ((m >> 6) & two) << 4) << 32;
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
    for (int64_t b = 0; b < supers; ++b) {
        const int16_t *xq = x->q + b * GGUF_SUPER;
        const __m256 dx = _mm256_loadu_ps(x->d + 8 * b), sx = _mm256_loadu_ps(x->s + 8 * b);
        const uint8_t *super = w + b * stride;
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

/* Eight float vectors' lanes summed: one vector of the eight sums. */
static inline __m256 q16_sum8x8_ps(__m256 f0, __m256 f1, __m256 f2, __m256 f3, __m256 f4, __m256 f5, __m256 f6,
                                   __m256 f7) {
    const __m256 g0 = _mm256_hadd_ps(_mm256_hadd_ps(f0, f1), _mm256_hadd_ps(f2, f3));
    const __m256 g1 = _mm256_hadd_ps(_mm256_hadd_ps(f4, f5), _mm256_hadd_ps(f6, f7));
    return _mm256_add_ps(_mm256_permute2f128_ps(g0, g1, 0x20), _mm256_permute2f128_ps(g0, g1, 0x31));
}

/* 16 Q6_K weights as int16 with their 16-weight scale folded in: sc * ((low | high << 4) - 32), |.| <= 4096. */
static inline __m256i q6k_weights(__m256i low, __m256i high, const int8_t *scale) {
    const __m256i q = _mm256_sub_epi16(_mm256_or_si256(low, _mm256_slli_epi16(high, 4)), _mm256_set1_epi16(32));
    return _mm256_mullo_epi16(q, _mm256_set1_epi16(*scale));
}

/* One half (128 weights, sub-blocks 4h..4h + 3) of a Q6_K super-block against its activations: each sub-block's
 * two 16-weight halves dotted and added (int32: 2 x 2 products of <= 4096 x 32767 a lane), as floats. */
static inline __attribute__((always_inline)) void q6k_half_dots(const uint8_t *super, int h, const int16_t *xq,
                                                                __m256 f[4]) {
    const int8_t *sc = (const int8_t *)(super + 192) + 8 * h;
    const uint8_t *ql = super + 64 * h, *qh = super + 128 + 32 * h;
    const __m256i m4 = _mm256_set1_epi16(15), m2 = _mm256_set1_epi16(3);
    __m256i d0 = _mm256_setzero_si256(), d1 = d0, d2 = d0, d3 = d0;
    for (int half = 0; half < 2; ++half) {
        const int at = 16 * half;
        const __m256i a = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(ql + at)));
        const __m256i b = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(ql + 32 + at)));
        const __m256i hi = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(qh + at)));
        const int16_t *x = xq + 128 * h + at;
        d0 = _mm256_add_epi32(d0, _mm256_madd_epi16(q6k_weights(_mm256_and_si256(a, m4), _mm256_and_si256(hi, m2), sc + half),
                                                    _mm256_loadu_si256((const __m256i *)x)));
        d1 = _mm256_add_epi32(d1, _mm256_madd_epi16(q6k_weights(_mm256_and_si256(b, m4),
                                                                _mm256_and_si256(_mm256_srli_epi16(hi, 2), m2), sc + 2 + half),
                                                    _mm256_loadu_si256((const __m256i *)(x + 32))));
        d2 = _mm256_add_epi32(d2, _mm256_madd_epi16(q6k_weights(_mm256_srli_epi16(a, 4),
                                                                _mm256_and_si256(_mm256_srli_epi16(hi, 4), m2), sc + 4 + half),
                                                    _mm256_loadu_si256((const __m256i *)(x + 64))));
        d3 = _mm256_add_epi32(d3, _mm256_madd_epi16(q6k_weights(_mm256_srli_epi16(b, 4), _mm256_srli_epi16(hi, 6), sc + 6 + half),
                                                    _mm256_loadu_si256((const __m256i *)(x + 96))));
    }
    f[0] = _mm256_cvtepi32_ps(d0);
    f[1] = _mm256_cvtepi32_ps(d1);
    f[2] = _mm256_cvtepi32_ps(d2);
    f[3] = _mm256_cvtepi32_ps(d3);
}

/* One Q6_K super-block of one weight row against its 256 activations: lane s of the summed dots is sub-block s,
 * times d * d_x[s], added to acc. The lanes are summed as floats: a sub-block's 32 products reach 2^32, past int32
 * (the row path converts each lane too). */
static inline __attribute__((always_inline)) __m256 q6k_super_dot(const uint8_t *super, const int16_t *xq, __m256 dx,
                                                                  __m256 acc) {
    __m256 f[8];
    q6k_half_dots(super, 0, xq, f);
    q6k_half_dots(super, 1, xq, f + 4);
    const __m256 dots = q16_sum8x8_ps(f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7]);
    return _mm256_fmadd_ps(dots, _mm256_mul_ps(_mm256_set1_ps(gguf_half(super + 208)), dx), acc);
}

/* Q6_K, one activation row against GGUF_COLS weight rows, as q16_dot_cols_q4k (the output and half the ffn_down /
 * attn_v matrices of a Q4_K_M file). */
static inline void q16_dot_cols_q6k(const q16_rows *x, const uint8_t *w, int64_t column_bytes, int64_t stride,
                                    float *sums) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    const int64_t supers = x->k / GGUF_SUPER;
    for (int64_t b = 0; b < supers; ++b) {
        const int16_t *xq = x->q + b * GGUF_SUPER;
        const __m256 dx = _mm256_loadu_ps(x->d + 8 * b);
        const uint8_t *super = w + b * stride;
        acc0 = q6k_super_dot(super, xq, dx, acc0);
        acc1 = q6k_super_dot(super + column_bytes, xq, dx, acc1);
        acc2 = q6k_super_dot(super + 2 * column_bytes, xq, dx, acc2);
        acc3 = q6k_super_dot(super + 3 * column_bytes, xq, dx, acc3);
    }
    sums[0] = gguf_sum8(acc0);
    sums[1] = gguf_sum8(acc1);
    sums[2] = gguf_sum8(acc2);
    sums[3] = gguf_sum8(acc3);
}
#endif
#endif
