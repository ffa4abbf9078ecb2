/* The multi-row GEMV of Q4_0, Q4_1 and Q8_0 blocks (2 to GGUF_LANES_MAX_ROWS activation rows: a decode batch), with
 * a weight row in each 128-bit lane (the AVX-512 levels): lanes (c, u) hold weight row c's pairs 4t + u (u < 4) of
 * a block's 16 pairs of weights, widened to int16, and one activation row's same four pairs are broadcast to every
 * lane. A vpmaddwd (vpdpwssd with AVX512_VNNI) adds 8 products into each lane and four of them (t = 0..3) cover
 * the block, so its integer dot product for four weight rows ends in one register, converted and scaled by one
 * FMA. q16_dot_rows (gguf_q16.h) ends each activation row x block x weight row in its own register, with a
 * conversion, a scale and an FMA each: a Q4_1 1536 x 576 GEMV of 4 / 8 rows on a Zen 4 took 106-120 / 207-216 us
 * there, 61-67 / 88-119 here (one thread, standalone). It also beats the bfloat16 panels up to GGUF_LANES_MAX_ROWS
 * (gguf.c). A 256-bit version (two weight rows a register, 4 activation rows a pass, vpmaddwd) was no faster than
 * q16_dot_rows at the avx2 level: the AVX2 levels keep that (BENCHMARKS.md).
 *
 * The integers are q16_dot_rows' (same int16 activations, exact int32 sums); only the float sums' order differs.
 * Weights to int16 pairs: Q4_0 / Q4_1 byte j holds weight j (low nibble) and j + 16 (high), so pair p (weights 2p,
 * 2p + 1) is bytes 2p and 2p + 1's low nibbles for p < 8 and bytes 2p - 16, 2p - 15's high ones after: one vpshufb
 * puts a lane's two bytes in the low bytes of its words (the others zeroed), a mask (and a shift) keeps the nibble.
 * Q8_0's 32 signed bytes are the pairs as they stand, sign-extended.
 */
#ifndef PAGEDSERVE_GGUF_Q16_LANES_H
#define PAGEDSERVE_GGUF_Q16_LANES_H
#include "gguf_q16.h"

#if defined(__AVX512F__) && defined(__AVX512BW__)
#define PAGEDSERVE_GGUF_LANES 1
static inline int q16_lanes_type(int qtype) { return qtype == GGUF_Q4_0 || qtype == GGUF_Q4_1 || qtype == GGUF_Q8_0; }

/* 512-bit registers: four weight rows a register; up to 8 activation rows a pass (8 accumulators, 4 weight
 * registers and the scales stay in the 32 registers). */
#define LANE_COLS 4
#define LANE_ROWS 8
/* The 8 int16 at p (four pairs of an activation row) in every 128-bit lane. */
#define lane_broadcast128(p) _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(p)))
static inline __m512i lane_dot(__m512i acc, __m512i w, __m512i x) {
#if defined(__AVX512VNNI__)
    return _mm512_dpwssd_epi32(acc, w, x);
#else
    return _mm512_add_epi32(acc, _mm512_madd_epi16(w, x));
#endif
}
/* The LANE_COLS rows' 16 bytes at p[c], one a 128-bit lane. */
static inline __m512i lane_load16(const uint8_t *const p[LANE_COLS]) {
    const __m512i v = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)p[0]));
    const __m512i v1 = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)p[1]), 1);
    const __m512i v2 = _mm512_inserti32x4(v1, _mm_loadu_si128((const __m128i *)p[2]), 2);
    return _mm512_inserti32x4(v2, _mm_loadu_si128((const __m128i *)p[3]), 3);
}
/* Q8_0: bytes 8t .. 8t + 7 of each row (q[c]: its 32 bytes), sign-extended: lane c = its pairs 4t .. 4t + 3. */
static inline void lane_q8_pairs(const uint8_t *const q[LANE_COLS], __m512i w[4]) {
    const __m512i rows01 = _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)q[0])), _mm256_loadu_si256((const __m256i *)q[1]), 1);
    const __m512i rows23 = _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)q[2])), _mm256_loadu_si256((const __m256i *)q[3]), 1);
    for (int t = 0; t < 4; ++t) { /* qword t of each row: rows01's t and 4 + t, rows23's (8 +) t and 12 + t */
        const __m512i pick = _mm512_setr_epi64(t, 4 + t, 8 + t, 12 + t, 0, 0, 0, 0);
        w[t] = _mm512_cvtepi8_epi16(_mm512_castsi512_si256(_mm512_permutex2var_epi64(rows01, pick, rows23)));
    }
}
/* Lanes (c, u) of d [c] (all u) and of m [c] (u = 0, else 0): the rows' (d, m) float16 pairs at h[c] (Q4_0, Q8_0: m 0). */
static inline void lane_scales(const int32_t h[LANE_COLS], __m512 *d, __m512 *m) {
    const __m512 dm = _mm512_castps256_ps512(_mm256_cvtph_ps(_mm_setr_epi32(h[0], h[1], h[2], h[3])));
    *d = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 4, 4, 4, 4, 6, 6, 6, 6), dm);
    *m = _mm512_permutex2var_ps(dm, _mm512_setr_epi32(1, 16, 16, 16, 3, 16, 16, 16, 5, 16, 16, 16, 7, 16, 16, 16),
                                _mm512_setzero_ps());
}

/* A lane's shuffle: dword u takes bytes first + 2u and first + 2u + 1 into its words' low bytes (0x80: zero). */
#define LANE_PAIR(first, u) ((int)(0x80008000u | (uint32_t)((first) + 2 * (u)) | (uint32_t)((first) + 2 * (u) + 1) << 16))
#define LANE_PAIRS(first) _mm512_set4_epi32(LANE_PAIR(first, 3), LANE_PAIR(first, 2), LANE_PAIR(first, 1), LANE_PAIR(first, 0))

/* The pairs of the LANE_COLS rows' blocks at blocks[c] (one block of `qtype` each) as four registers: w[t] lane c
 * holds pairs 4t .. 4t + 3 of row c. */
static inline __attribute__((always_inline)) void lane_weights(const uint8_t *const blocks[LANE_COLS], int qtype,
                                                               __m512i w[4]) {
    const uint8_t *qs[LANE_COLS];
    for (int c = 0; c < LANE_COLS; ++c) qs[c] = blocks[c] + (qtype == GGUF_Q4_1 ? 4 : 2);
    if (qtype == GGUF_Q8_0) {
        lane_q8_pairs(qs, w);
        return;
    }
    const __m512i bytes = lane_load16(qs);
    const __m512i first = _mm512_shuffle_epi8(bytes, LANE_PAIRS(0)), second = _mm512_shuffle_epi8(bytes, LANE_PAIRS(8));
    w[0] = _mm512_and_si512(first, _mm512_set1_epi16(15)); /* weights 0-7: low nibbles of bytes 0-7 */
    w[1] = _mm512_and_si512(second, _mm512_set1_epi16(15)); /* 8-15 */
    w[2] = _mm512_srli_epi16(first, 4); /* 16-23: high nibbles of bytes 0-7 */
    w[3] = _mm512_srli_epi16(second, 4);
    if (qtype == GGUF_Q4_0)
        for (int t = 0; t < 4; ++t) w[t] = _mm512_sub_epi16(w[t], _mm512_set1_epi16(8));
}

/* sums[r * LANE_COLS + c] = x_r . row c over blocks [b0, b1), for `rows` activation rows (at most LANE_ROWS; a
 * constant where inlined) and the LANE_COLS weight rows at cols[c] (first blocks, `stride` bytes from one to the
 * next). `w_group`, `ahead`: the prefetch cursor (q16_prefetch_step) of the four-row group these rows are in. */
static inline __attribute__((always_inline)) void q16_lanes_rows(const q16_rows *x, const uint8_t *const cols[LANE_COLS],
                                                                 int64_t stride, int qtype, int64_t b0, int64_t b1,
                                                                 int rows, const uint8_t *w_group, int64_t ahead,
                                                                 float *sums) {
    __m512 acc[LANE_ROWS];
    for (int r = 0; r < rows; ++r) acc[r] = _mm512_setzero_ps();
    const int64_t blocks = x->k / GGUF_BLOCK;
    const int32_t halves_mask = qtype == GGUF_Q4_1 ? -1 : 0xffff; /* Q4_0, Q8_0: d alone */
    for (int64_t b = b0; b < b1; ++b) {
        if (w_group != NULL) q16_prefetch_step(w_group, b, gguf_block_bytes(qtype), ahead, 0);
        const uint8_t *at[LANE_COLS];
        int32_t h[LANE_COLS];
        for (int c = 0; c < LANE_COLS; ++c) {
            at[c] = cols[c] + b * stride;
            memcpy(&h[c], at[c], 4);
            h[c] &= halves_mask;
        }
        __m512i w[4];
        lane_weights(at, qtype, w);
        __m512 d, m;
        lane_scales(h, &d, &m);
        for (int r = 0; r < rows; ++r) {
            const int16_t *xq = x->q + r * x->k + b * GGUF_BLOCK;
            __m512i dot = lane_dot(_mm512_setzero_si512(), w[0], lane_broadcast128(xq));
            dot = lane_dot(dot, w[1], lane_broadcast128(xq + 8));
            dot = lane_dot(dot, w[2], lane_broadcast128(xq + 16));
            dot = lane_dot(dot, w[3], lane_broadcast128(xq + 24));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(d, _mm512_set1_ps(x->d[r * blocks + b])), acc[r]);
            if (qtype == GGUF_Q4_1) acc[r] = _mm512_fmadd_ps(m, _mm512_set1_ps(x->s[r * blocks + b]), acc[r]);
        }
    }
    for (int r = 0; r < rows; ++r) {
        float lanes[4 * LANE_COLS];
        _mm512_storeu_ps(lanes, acc[r]);
        for (int c = 0; c < LANE_COLS; ++c)
            sums[r * LANE_COLS + c] = (lanes[4 * c] + lanes[4 * c + 1]) + (lanes[4 * c + 2] + lanes[4 * c + 3]);
    }
}
#endif
#endif
