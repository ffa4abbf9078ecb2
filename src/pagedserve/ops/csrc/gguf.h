/* GGUF (ggml) block formats kept quantized in memory: Q4_0, Q4_1 and Q8_0, 32 weights per block along a row.
 *
 * Byte layout, from ggml's block_q4_0 / block_q4_1 / block_q8_0 (and the gguf package's own dequantizers, which the
 * tests compare against):
 *   Q4_0 (type 2), 18 bytes: float16 d, then 16 bytes of nibbles; weight j (j < 16) = d * ((qs[j] & 15) - 8),
 *                            weight j + 16 = d * ((qs[j] >> 4) - 8).
 *   Q4_1 (type 3), 20 bytes: float16 d, float16 m, 16 bytes of nibbles; weight = d * nibble + m (same order).
 *   Q8_0 (type 8), 34 bytes: float16 d, 32 int8 q; weight j = d * q[j].
 * A row of k weights is k / 32 consecutive blocks; a matrix [n, k] is n such rows.
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
#define GGUF_BLOCK 32

static inline int64_t gguf_block_bytes(int qtype) {
    switch (qtype) {
    case GGUF_Q4_0: return 18;
    case GGUF_Q4_1: return 20;
    case GGUF_Q8_0: return 34;
    default: return 0;
    }
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

#if defined(__AVX2__)
/* The 32 weights of one block as four float32 vectors, exactly (d * q has at most 19 significant bits, so d * q + m
 * rounds once, fused or not): nibbles split with a mask and a shift, widened 8 at a time. A plain C loop instead
 * ran a 3072 x 576 Q4_1 GEMV ~7x slower on a Zen 3 (738 us against ~100 for bfloat16): gcc did not vectorise it. */
static inline void gguf_block_vectors(const uint8_t *block, int qtype, __m256 w[4]) {
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
    const __m128i mask = _mm_set1_epi8(15);
    const __m128i lo = _mm_and_si128(raw, mask), hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
    /* Q4_1: d * q + m; Q4_0: d * q - 8 d */
    const __m256 offset = q4_1 ? _mm256_set1_ps(gguf_half(block + 2)) : _mm256_mul_ps(vd, _mm256_set1_ps(-8.0f));
    w[0] = _mm256_fmadd_ps(vd, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)), offset);
    w[1] = _mm256_fmadd_ps(vd, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))), offset);
    w[2] = _mm256_fmadd_ps(vd, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)), offset);
    w[3] = _mm256_fmadd_ps(vd, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))), offset);
}
#endif

/* The 32 weights of one block as float32 (AVX2: gguf_block_vectors; else plain loops). */
static inline void gguf_dequantize_block(const uint8_t *block, int qtype, float *out) {
#if defined(__AVX2__)
    __m256 w[4];
    gguf_block_vectors(block, qtype, w);
    for (int p = 0; p < 4; ++p) _mm256_storeu_ps(out + 8 * p, w[p]);
#else
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
