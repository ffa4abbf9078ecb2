/* GGUF (ggml) block formats kept quantized in memory: Q4_0, Q4_1, Q8_0 (32 weights a block) and the K-quants
 * Q4_K, Q6_K (256 weights a super-block), along a row.
 *
 * Byte layout, from ggml's block_q4_0 / block_q4_1 / block_q8_0 / block_q4_K / block_q6_K (and the gguf package's
 * own dequantizers, which the tests compare against):
 *   Q4_0 (type 2), 18 bytes: float16 d, then 16 bytes of nibbles; weight j (j < 16) = d * ((qs[j] & 15) - 8),
 *                            weight j + 16 = d * ((qs[j] >> 4) - 8).
 *   Q4_1 (type 3), 20 bytes: float16 d, float16 m, 16 bytes of nibbles; weight = d * nibble + m (same order).
 *   Q8_0 (type 8), 34 bytes: float16 d, 32 int8 q; weight j = d * q[j].
 *   Q4_K (type 12), 144 bytes: float16 d, float16 dmin, 12 bytes of 6-bit scales sc[8] and mins mn[8], 128 bytes
 *        of nibbles. Sub-block s (32 weights) = d * sc[s] * q - dmin * mn[s]; its nibbles are the low (s even) or
 *        high (s odd) halves of bytes qs[32 (s / 2) ...+32]. sc/mn for s < 4: scales[s] & 63, scales[s + 4] & 63;
 *        for s >= 4: (scales[s + 4] & 15) | (scales[s - 4] >> 6) << 4 and (scales[s + 4] >> 4) | (scales[s] >> 6) << 4.
 *   Q6_K (type 14), 210 bytes: ql[128] (low 4 bits), qh[64] (high 2 bits), int8 scales[16], float16 d. In half
 *        h (128 weights) and quarter g (32 weights): q = ((ql[64 h + 32 (g & 1) + l] >> 4 (g >> 1)) & 15)
 *        | ((qh[32 h + l] >> 2 g) & 3) << 4, weight = d * scales[8 h + 2 g + l / 16] * (q - 32), l < 32.
 * A row of k weights is k / 32 (k / 256) consecutive blocks; a matrix [n, k] is n such rows, as the file stores it
 * (interleave 1). Interleave 4 (gguf_interleave, at load): rows in groups of four, a group's blocks in the order
 * (block 0 of rows 0-3, block 1 of rows 0-3, ...), the same bytes. Why: a GEMV reads four rows at a time, and four
 * streams a thread were more than the hardware prefetcher follows; one stream a thread read a 1536 x 2048 Q4_0 GEMV
 * at 13.3-14.6 GB/s against 10.6-11.0 on 2 threads of a Zen 3 (standalone A/B, docs/architecture.md). The kernels
 * address a row by its first block and the bytes from one block to its next (gguf_row, gguf_stride), and every
 * type by 32-weight sub-blocks (gguf_block_vectors(row, b, stride)), so one loop serves all types and layouts.
 */
#ifndef PAGEDSERVE_GGUF_H
#define PAGEDSERVE_GGUF_H
#include <stdint.h>
#include <string.h>
#if defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif

#define GGUF_Q4_0 2
#define GGUF_Q4_1 3
#define GGUF_Q8_0 8
#define GGUF_Q4_K 12
#define GGUF_Q6_K 14
#define GGUF_BLOCK 32
#define GGUF_SUPER 256

static inline int64_t gguf_block_bytes(int qtype) {
    switch (qtype) {
    case GGUF_Q4_0: return 18;
    case GGUF_Q4_1: return 20;
    case GGUF_Q8_0: return 34;
    case GGUF_Q4_K: return 144;
    case GGUF_Q6_K: return 210;
    default: return 0;
    }
}

/* Weights per (super-)block: 256 for the K-quants, 32 for the others. */
static inline int64_t gguf_block_weights(int qtype) { return qtype == GGUF_Q4_K || qtype == GGUF_Q6_K ? 256 : 32; }

/* Bytes of a row of k weights; 0 for an unknown type or a k that is not whole blocks. */
static inline int64_t gguf_row_bytes(int qtype, int64_t k) {
    const int64_t per = gguf_block_weights(qtype);
    return gguf_block_bytes(qtype) == 0 || k % per != 0 ? 0 : k / per * gguf_block_bytes(qtype);
}

/* Row r's first (super-)block in a matrix of rows interleaved by `il` (1 or 4), and the bytes from one of its
 * (super-)blocks to the next. */
static inline const uint8_t *gguf_row(const uint8_t *w, int64_t r, int qtype, int64_t row_bytes, int il) {
    return w + r / il * il * row_bytes + r % il * gguf_block_bytes(qtype);
}
static inline int64_t gguf_stride(int qtype, int il) { return il * gguf_block_bytes(qtype); }

/* Q4_K: scale and min of sub-block s (0-7) from the 12 packed bytes (layout above). */
static inline void gguf_q4k_scale_min(const uint8_t *scales, int s, int *sc, int *mn) {
    if (s < 4) {
        *sc = scales[s] & 63;
        *mn = scales[s + 4] & 63;
    } else {
        *sc = (scales[s + 4] & 15) | ((scales[s - 4] >> 6) << 4);
        *mn = (scales[s + 4] >> 4) | ((scales[s] >> 6) << 4);
    }
}

/* Q4_K: all eight 6-bit scales (byte s of *sc: sub-block s) and mins (*mn) of the super-block at `super`, unpacked
 * with whole-word masks (gguf_q4k_scale_min one at a time: sc and mn 0-3 are the low 6 bits of bytes 0-3 and 4-7;
 * 4-7 take their low 4 bits from bytes 8-11 and their high 2 from the top of bytes 0-3 / 4-7). */
static inline void gguf_q4k_scales_mins(const uint8_t *super, uint64_t *sc, uint64_t *mn) {
    uint32_t a, b, c;
    memcpy(&a, super + 4, 4);
    memcpy(&b, super + 8, 4);
    memcpy(&c, super + 12, 4);
    const uint32_t six = 0x3f3f3f3fu, four = 0x0f0f0f0fu, two = 0x03030303u; /* low bits of each byte */
    *sc = (a & six) | (uint64_t)((c & four) | ((a >> 6) & two) << 4) << 32;
    *mn = (b & six) | (uint64_t)(((c >> 4) & four) | ((b >> 6) & two) << 4) << 32;
}

/* IEEE half to float, exact (subnormals included); read unaligned. */
static inline float gguf_half(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, sizeof h);
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
    uint32_t bits;
    if (exponent == 0) {
        float value = (float)mantissa * 5.9604644775390625e-8f; /* 2^-24 */
        memcpy(&bits, &value, sizeof bits);
        bits |= sign;
    } else if (exponent == 31) {
        bits = sign | 0x7f800000u | (mantissa << 13);
    } else {
        bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
    }
    float out;
    memcpy(&out, &bits, sizeof out);
    return out;
#endif
}

/* Q4_K sub-block b of a row (super-blocks `stride` bytes apart): its scale d * sc and min dmin * mn, and the 32
 * bytes whose low (b even) or high (b odd) nibbles are its weights. */
static inline const uint8_t *gguf_q4k_sub_block(const uint8_t *row, int64_t b, int64_t stride, float *scale,
                                                float *min) {
    const uint8_t *super = row + (b >> 3) * stride;
    int sc, mn;
    gguf_q4k_scale_min(super + 4, (int)(b & 7), &sc, &mn);
    *scale = gguf_half(super) * (float)sc;
    *min = gguf_half(super + 2) * (float)mn;
    return super + 16 + ((b & 7) >> 1) * 32;
}

#if defined(__AVX2__)
/* Horizontal sum of 8 floats. */
static inline float gguf_sum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

/* Four vectors of 8 bytes each (16 bytes in q0, 16 in q1) widened to float32, times vd, plus offset. */
static inline void gguf_widen_u8(__m128i q0, __m128i q1, __m256 vd, __m256 offset, __m256 w[4]) {
    w[0] = _mm256_fmadd_ps(vd, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q0)), offset);
    w[1] = _mm256_fmadd_ps(vd, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(q0, 8))), offset);
    w[2] = _mm256_fmadd_ps(vd, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q1)), offset);
    w[3] = _mm256_fmadd_ps(vd, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(q1, 8))), offset);
}

/* The 32 weights of sub-block b of a row as four float32 vectors, exactly as ggml computes them (d * q has at most
 * 19 significant bits for Q4_0/Q4_1 and d * sc * q at most 21 for Q4_K, so scale-and-offset rounds once, fused or
 * not; Q6_K's d * sc is exact and times q rounds once, as in ggml): nibbles split with a mask and a shift, widened 8
 * at a time. A plain C loop instead ran a 3072 x 576 Q4_1 GEMV ~7x slower on a Zen 3 (738 us against ~100 for
 * bfloat16): gcc did not vectorise it. */
static inline void gguf_block_vectors(const uint8_t *row, int64_t b, int64_t stride, int qtype, __m256 w[4]) {
    const __m128i mask = _mm_set1_epi8(15);
    if (qtype == GGUF_Q4_K) {
        float scale, min;
        const uint8_t *qs = gguf_q4k_sub_block(row, b, stride, &scale, &min);
        __m128i q0 = _mm_loadu_si128((const __m128i *)qs), q1 = _mm_loadu_si128((const __m128i *)(qs + 16));
        if (b & 1) {
            q0 = _mm_srli_epi16(q0, 4);
            q1 = _mm_srli_epi16(q1, 4);
        }
        gguf_widen_u8(_mm_and_si128(q0, mask), _mm_and_si128(q1, mask), _mm256_set1_ps(scale), _mm256_set1_ps(-min),
                      w);
        return;
    }
    if (qtype == GGUF_Q6_K) {
        const uint8_t *super = row + (b >> 3) * stride;
        const int s = (int)(b & 7), h = s >> 2, g = s & 3;
        const uint8_t *ql = super + 64 * h + 32 * (g & 1), *qh = super + 128 + 32 * h;
        const int8_t *scales = (const int8_t *)(super + 192 + 8 * h + 2 * g);
        __m128i l0 = _mm_loadu_si128((const __m128i *)ql), l1 = _mm_loadu_si128((const __m128i *)(ql + 16));
        __m128i h0 = _mm_loadu_si128((const __m128i *)qh), h1 = _mm_loadu_si128((const __m128i *)(qh + 16));
        const __m128i shift_low = _mm_cvtsi32_si128(4 * (g >> 1)), shift_high = _mm_cvtsi32_si128(2 * g);
        const __m128i three = _mm_set1_epi8(3);
        l0 = _mm_and_si128(_mm_srl_epi16(l0, shift_low), mask);
        l1 = _mm_and_si128(_mm_srl_epi16(l1, shift_low), mask);
        h0 = _mm_slli_epi16(_mm_and_si128(_mm_srl_epi16(h0, shift_high), three), 4);
        h1 = _mm_slli_epi16(_mm_and_si128(_mm_srl_epi16(h1, shift_high), three), 4);
        const __m128i q0 = _mm_or_si128(l0, h0), q1 = _mm_or_si128(l1, h1);
        const float d = gguf_half(super + 208);
        const __m256 d0 = _mm256_set1_ps(d * (float)scales[0]), d1 = _mm256_set1_ps(d * (float)scales[1]);
        const __m256i bias = _mm256_set1_epi32(32);
#define Q6K_VECTOR(Q) _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_cvtepu8_epi32(Q), bias))
        w[0] = _mm256_mul_ps(d0, Q6K_VECTOR(q0));
        w[1] = _mm256_mul_ps(d0, Q6K_VECTOR(_mm_srli_si128(q0, 8)));
        w[2] = _mm256_mul_ps(d1, Q6K_VECTOR(q1));
        w[3] = _mm256_mul_ps(d1, Q6K_VECTOR(_mm_srli_si128(q1, 8)));
#undef Q6K_VECTOR
        return;
    }
    const uint8_t *block = row + b * stride;
    const __m256 vd = _mm256_set1_ps(gguf_half(block));
    if (qtype == GGUF_Q8_0) {
        const __m128i q0 = _mm_loadu_si128((const __m128i *)(block + 2));
        const __m128i q1 = _mm_loadu_si128((const __m128i *)(block + 18));
        w[0] = _mm256_mul_ps(vd, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q0)));
        w[1] = _mm256_mul_ps(vd, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q0, 8))));
        w[2] = _mm256_mul_ps(vd, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q1)));
        w[3] = _mm256_mul_ps(vd, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q1, 8))));
        return;
    }
    const int q4_1 = qtype == GGUF_Q4_1;
    const __m128i raw = _mm_loadu_si128((const __m128i *)(block + (q4_1 ? 4 : 2)));
    const __m128i lo = _mm_and_si128(raw, mask), hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
    /* Q4_1: d * q + m; Q4_0: d * q - 8 d */
    const __m256 offset = q4_1 ? _mm256_set1_ps(gguf_half(block + 2)) : _mm256_mul_ps(vd, _mm256_set1_ps(-8.0f));
    gguf_widen_u8(lo, hi, vd, offset, w);
}
#endif

/* The 32 weights of sub-block b of a row as float32 (AVX2: gguf_block_vectors; else plain loops, same
 * arithmetic). */
static inline void gguf_dequantize_block(const uint8_t *row, int64_t b, int64_t stride, int qtype, float *out) {
#if defined(__AVX2__)
    __m256 w[4];
    gguf_block_vectors(row, b, stride, qtype, w);
    for (int p = 0; p < 4; ++p) _mm256_storeu_ps(out + 8 * p, w[p]);
#else
    if (qtype == GGUF_Q4_K) {
        float d, m;
        const uint8_t *qs = gguf_q4k_sub_block(row, b, stride, &d, &m);
        for (int j = 0; j < GGUF_BLOCK; ++j) out[j] = d * (float)((qs[j] >> (4 * (b & 1))) & 15) - m;
        return;
    }
    if (qtype == GGUF_Q6_K) {
        const uint8_t *super = row + (b >> 3) * stride;
        const int s = (int)(b & 7), h = s >> 2, g = s & 3;
        const uint8_t *ql = super + 64 * h + 32 * (g & 1), *qh = super + 128 + 32 * h;
        const int8_t *scales = (const int8_t *)(super + 192 + 8 * h + 2 * g);
        const float d = gguf_half(super + 208);
        for (int j = 0; j < GGUF_BLOCK; ++j) {
            const int q = ((ql[j] >> (4 * (g >> 1))) & 15) | (((qh[j] >> (2 * g)) & 3) << 4);
            out[j] = d * (float)scales[j / 16] * (float)(q - 32);
        }
        return;
    }
    const uint8_t *block = row + b * stride;
    const float d = gguf_half(block);
    if (qtype == GGUF_Q8_0) {
        const int8_t *q = (const int8_t *)(block + 2);
        for (int j = 0; j < GGUF_BLOCK; ++j) out[j] = d * (float)q[j];
    } else if (qtype == GGUF_Q4_1) {
        const float m = gguf_half(block + 2);
        const uint8_t *q = block + 4;
        for (int j = 0; j < GGUF_BLOCK / 2; ++j) {
            out[j] = d * (float)(q[j] & 15) + m;
            out[j + GGUF_BLOCK / 2] = d * (float)(q[j] >> 4) + m;
        }
    } else {
        const uint8_t *q = block + 2;
        for (int j = 0; j < GGUF_BLOCK / 2; ++j) {
            out[j] = d * (float)((int)(q[j] & 15) - 8);
            out[j + GGUF_BLOCK / 2] = d * (float)((int)(q[j] >> 4) - 8);
        }
    }
#endif
}
#endif
