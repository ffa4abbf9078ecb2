/* The multi-row GEMV of Q4_0, Q4_1, Q8_0, Q4_K and Q6_K blocks (2 to GGUF_LANES_MAX_ROWS activation rows: a decode
 * batch), with a weight row in each 128-bit lane (the AVX-512 levels): lanes (c, u) hold weight row c's pairs 4t + u
 * (u < 4) of a block's 16 pairs of weights, widened to int16, and one activation row's same four pairs are broadcast
 * to every lane. A vpmaddwd (vpdpwssd with AVX512_VNNI) adds 8 products into each lane and four of them (t = 0..3)
 * cover the block, so its integer dot product for four weight rows ends in one register, converted and scaled by
 * one FMA. q16_dot_rows (gguf_q16.h) ends each activation row x block x weight row in its own register, with a
 * conversion, a scale and an FMA each: a Q4_1 1536 x 576 GEMV of 4 / 8 rows on a Zen 4 took 106-120 / 207-216 us
 * there, 61-67 / 88-119 here (one thread, standalone). It also beats the bfloat16 panels up to GGUF_LANES_MAX_ROWS
 * (gguf.c). A 256-bit version (two weight rows a register, 4 activation rows a pass, vpmaddwd) was no faster than
 * q16_dot_rows at the avx2 level: the AVX2 levels keep that (BENCHMARKS.md). Q4_K's 32-weight sub-blocks go the
 * same way, each with its own scale and min per weight row (q16_lanes_rows_q4k): a GEMV of 4 / 8 / 16 rows, 2048
 * wide, 2 threads on a Zen 5 ran 1.3-1.7x / 1.2-1.4x / 1.7-2.7x the speed of q16_dot_rows_q4k (8 rows) and the
 * panels (16); Q6_K's, with the scales of its 16-weight halves folded into the int16 weights (q16_lanes_rows_q6k),
 * 1.6-1.8x / 2.1-2.2x / 2.7-3.1x.
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
#include "gguf_q16_kquants.h"

#if defined(__AVX512F__) && defined(__AVX512BW__)
#define PAGEDSERVE_GGUF_LANES 1
static inline int q16_lanes_type(int qtype) {
    return qtype == GGUF_Q4_0 || qtype == GGUF_Q4_1 || qtype == GGUF_Q8_0 || qtype == GGUF_Q4_K || qtype == GGUF_Q6_K;
}

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
/* A 32-weight block's integer dot for the four weight rows (w[t] lane c: row c's pairs 4t .. 4t + 3) with one
 * activation row's 32 int16 at xq: lanes (c, u) hold row c's part sums (their four sums are the dot). */
static inline __m512i lane_block_dot(const __m512i w[4], const int16_t *xq) {
    __m512i dot = lane_dot(_mm512_setzero_si512(), w[0], lane_broadcast128(xq));
    dot = lane_dot(dot, w[1], lane_broadcast128(xq + 8));
    dot = lane_dot(dot, w[2], lane_broadcast128(xq + 16));
    return lane_dot(dot, w[3], lane_broadcast128(xq + 24));
}
/* The LANE_COLS rows' 16 bytes at p[c], one a 128-bit lane. */
static inline __m512i lane_load16(const uint8_t *const p[LANE_COLS]) {
    const __m512i v = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)p[0]));
    const __m512i v1 = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)p[1]), 1);
    const __m512i v2 = _mm512_inserti32x4(v1, _mm_loadu_si128((const __m128i *)p[2]), 2);
    return _mm512_inserti32x4(v2, _mm_loadu_si128((const __m128i *)p[3]), 3);
}
/* Qword t of each row's 32 bytes at q[c] (t = 0..3), row c's in qword c: lane c of the bytes widened later. */
static inline void lane_qwords(const uint8_t *const q[LANE_COLS], __m256i picks[4]) {
    const __m512i rows01 = _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)q[0])), _mm256_loadu_si256((const __m256i *)q[1]), 1);
    const __m512i rows23 = _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)q[2])), _mm256_loadu_si256((const __m256i *)q[3]), 1);
    for (int t = 0; t < 4; ++t) { /* qword t of each row: rows01's t and 4 + t, rows23's (8 +) t and 12 + t */
        const __m512i pick = _mm512_setr_epi64(t, 4 + t, 8 + t, 12 + t, 0, 0, 0, 0);
        picks[t] = _mm512_castsi512_si256(_mm512_permutex2var_epi64(rows01, pick, rows23));
    }
}
/* Q8_0: bytes 8t .. 8t + 7 of each row (q[c]: its 32 bytes), sign-extended: lane c = its pairs 4t .. 4t + 3. */
static inline void lane_q8_pairs(const uint8_t *const q[LANE_COLS], __m512i w[4]) {
    __m256i picks[4];
    lane_qwords(q, picks);
    for (int t = 0; t < 4; ++t) w[t] = _mm512_cvtepi8_epi16(picks[t]);
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

/* Q4_K (gguf.h): the LANE_COLS rows' eight sub-block scales d * sc and mins dmin * mn of the super-blocks at at[c],
 * as floats, row c's eight in lanes 8c .. 8c + 7 of scale[c / 2] and min[c / 2]: one sub-block's for every row is
 * then one permute (lane_q4k_sub). */
static inline void lane_q4k_scales(const uint8_t *const at[LANE_COLS], __m512 scale[2], __m512 min[2]) {
    uint64_t sc[LANE_COLS], mn[LANE_COLS];
    int32_t h[LANE_COLS];
    for (int c = 0; c < LANE_COLS; ++c) {
        memcpy(&h[c], at[c], 4);
        gguf_q4k_scales_mins(at[c], &sc[c], &mn[c]);
    }
    /* d0 dmin0 d1 dmin1 .. d3 dmin3 */
    const __m512 dm = _mm512_castps256_ps512(_mm256_cvtph_ps(_mm_setr_epi32(h[0], h[1], h[2], h[3])));
    for (int half = 0; half < 2; ++half) { /* rows 2 half and 2 half + 1 */
        const int c = 2 * half;
        const __m512i d_at = _mm512_add_epi32(_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2),
                                              _mm512_set1_epi32(2 * c)); /* d of rows c (lanes 0-7), c + 1 (8-15) */
        const __m512 d = _mm512_permutexvar_ps(d_at, dm);
        const __m512 dmin = _mm512_permutexvar_ps(_mm512_add_epi32(d_at, _mm512_set1_epi32(1)), dm);
        const __m128i sc2 = _mm_set_epi64x((long long)sc[c + 1], (long long)sc[c]);
        const __m128i mn2 = _mm_set_epi64x((long long)mn[c + 1], (long long)mn[c]);
        scale[half] = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(sc2))); /* exact: 11 + 6 bits */
        min[half] = _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(mn2)));
    }
}
/* Sub-block s's lanes (c, u) from lane_q4k_scales' pair: row c's value (at index 8c + s of the 32), or with mask 0x1111
 * only in lane u = 0 (a min, added once per lane group), zero elsewhere. */
static inline __m512 lane_q4k_sub(const __m512 pair[2], int s, __mmask16 mask) {
    const __m512i at = _mm512_add_epi32(_mm512_setr_epi32(0, 0, 0, 0, 8, 8, 8, 8, 16, 16, 16, 16, 24, 24, 24, 24),
                                        _mm512_set1_epi32(s));
    return _mm512_maskz_permutex2var_ps(mask, pair[0], at, pair[1]);
}
/* sums[r * LANE_COLS + c] = the four lanes (c, u) of acc[r] summed, for the `rows` activation rows. */
static inline void lane_sums(const __m512 acc[LANE_ROWS], int rows, float *sums) {
    for (int r = 0; r < rows; ++r) {
        float lanes[4 * LANE_COLS];
        _mm512_storeu_ps(lanes, acc[r]);
        for (int c = 0; c < LANE_COLS; ++c)
            sums[r * LANE_COLS + c] = (lanes[4 * c] + lanes[4 * c + 1]) + (lanes[4 * c + 2] + lanes[4 * c + 3]);
    }
}

/* q16_lanes_rows for Q4_K super-blocks [b0, b1): per super-block the scales of the LANE_COLS rows are unpacked
 * once, then sub-blocks 2p and 2p + 1 (32 bytes a row: low nibbles 2p, high 2p + 1; byte j holds weight j) are
 * widened once for every activation row. Each row x sub-block takes a convert and two FMAs (its scale, its min)
 * for four weight rows, where q16_dot_rows_q4k folded a super-block's eight with horizontal adds per weight row. */
static inline __attribute__((always_inline)) void q16_lanes_rows_q4k(const q16_rows *x,
                                                                     const uint8_t *const cols[LANE_COLS], int64_t stride,
                                                                     int64_t b0, int64_t b1, int rows,
                                                                     const uint8_t *w_group, int64_t ahead, float *sums) {
    __m512 acc[LANE_ROWS];
    for (int r = 0; r < rows; ++r) acc[r] = _mm512_setzero_ps();
    const int64_t blocks = x->k / GGUF_BLOCK;
    for (int64_t b = b0; b < b1; ++b) {
        if (w_group != NULL) q16_prefetch_step(w_group, b, gguf_block_bytes(GGUF_Q4_K), ahead, 0);
        const uint8_t *at[LANE_COLS];
        for (int c = 0; c < LANE_COLS; ++c) at[c] = cols[c] + b * stride;
        __m512 scale[2], min[2];
        lane_q4k_scales(at, scale, min);
        for (int p = 0; p < 4; ++p) {
            const uint8_t *qs[LANE_COLS];
            for (int c = 0; c < LANE_COLS; ++c) qs[c] = at[c] + 16 + 32 * p;
            __m256i picks[4];
            lane_qwords(qs, picks);
            __m512i bytes[4];
            for (int t = 0; t < 4; ++t) bytes[t] = _mm512_cvtepu8_epi16(picks[t]);
            for (int high = 0; high < 2; ++high) {
                const int s = 2 * p + high;
                __m512i w[4];
                for (int t = 0; t < 4; ++t)
                    w[t] = high ? _mm512_srli_epi16(bytes[t], 4) : _mm512_and_si512(bytes[t], _mm512_set1_epi16(15));
                const __m512 d = lane_q4k_sub(scale, s, 0xffff), m = lane_q4k_sub(min, s, 0x1111);
                for (int r = 0; r < rows; ++r) {
                    const int16_t *xq = x->q + r * x->k + b * GGUF_SUPER + 32 * s;
                    const int64_t at_x = r * blocks + 8 * b + s;
                    const __m512i dot = lane_block_dot(w, xq);
                    const __m512 scale_x = _mm512_mul_ps(d, _mm512_set1_ps(x->d[at_x]));
                    acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale_x, acc[r]);
                    acc[r] = _mm512_fnmadd_ps(m, _mm512_set1_ps(x->s[at_x]), acc[r]);
                }
            }
        }
    }
    lane_sums(acc, rows, sums);
}

/* Q6_K's int8 scale j of each row (lane c of scale_bytes: row c's 16) in every int16 of its lane: the byte put in
 * each word's high byte (the low one zeroed), then shifted down with its sign. */
static inline __m512i lane_q6k_scale(__m512i scale_bytes, int j) {
    return _mm512_srai_epi16(_mm512_shuffle_epi8(scale_bytes, _mm512_set1_epi16((short)(j << 8 | 0x80))), 8);
}

/* q16_lanes_rows for Q6_K super-blocks [b0, b1). Per half (128 weights) of the LANE_COLS rows' super-blocks, their
 * ql and qh bytes are gathered a qword a row (lane_qwords) and each sub-block's 6-bit values assembled from them as
 * the single-row kernel does (q6k_bytes), then widened; each 16 weights' int8 scale is folded into its int16
 * weights by one vpmullw (|sc (q - 32)| <= 128 x 32 = 4096, and a lane's 8 products stay below 2^30), so a
 * sub-block's dot for four weight rows is one register, one convert and one FMA (d d_x), and no min. The integers
 * are q16_dot_rows_q6k's: d d_x sum((sc (q - 32)) q_x). */
static inline __attribute__((always_inline)) void q16_lanes_rows_q6k(const q16_rows *x,
                                                                     const uint8_t *const cols[LANE_COLS], int64_t stride,
                                                                     int64_t b0, int64_t b1, int rows,
                                                                     const uint8_t *w_group, int64_t ahead, float *sums) {
    __m512 acc[LANE_ROWS];
    for (int r = 0; r < rows; ++r) acc[r] = _mm512_setzero_ps();
    const int64_t blocks = x->k / GGUF_BLOCK;
    for (int64_t b = b0; b < b1; ++b) {
        if (w_group != NULL) q16_prefetch_step(w_group, b, gguf_block_bytes(GGUF_Q6_K), ahead, 0);
        const uint8_t *at[LANE_COLS], *scales[LANE_COLS];
        uint16_t h[8] = {0};
        for (int c = 0; c < LANE_COLS; ++c) {
            at[c] = cols[c] + b * stride;
            scales[c] = at[c] + 192;
            memcpy(&h[c], at[c] + 208, 2);
        }
        /* lanes (c, u): row c's d */
        const __m512 d = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3),
                                               _mm512_castps256_ps512(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h))));
        const __m512i scale_bytes = lane_load16(scales); /* lane c: row c's 16 int8 scales */
        for (int half = 0; half < 2; ++half) {
            const uint8_t *ql_a[LANE_COLS], *ql_b[LANE_COLS], *qh[LANE_COLS];
            for (int c = 0; c < LANE_COLS; ++c) {
                ql_a[c] = at[c] + 64 * half;
                ql_b[c] = ql_a[c] + 32;
                qh[c] = at[c] + 128 + 32 * half;
            }
            __m256i a[4], bb[4], hi[4];
            lane_qwords(ql_a, a);
            lane_qwords(ql_b, bb);
            lane_qwords(qh, hi);
            for (int g = 0; g < 4; ++g) {
                const int s = 4 * half + g, j = 8 * half + 2 * g; /* sub-block; scale of its first 16 weights */
                const __m512i sc0 = lane_q6k_scale(scale_bytes, j), sc1 = lane_q6k_scale(scale_bytes, j + 1);
                __m512i w[4];
                for (int t = 0; t < 4; ++t)
                    w[t] = _mm512_mullo_epi16(_mm512_cvtepi8_epi16(q6k_bytes(a[t], bb[t], hi[t], g)), t < 2 ? sc0 : sc1);
                for (int r = 0; r < rows; ++r) {
                    const __m512i dot = lane_block_dot(w, x->q + r * x->k + b * GGUF_SUPER + 32 * s);
                    const __m512 scale_x = _mm512_mul_ps(d, _mm512_set1_ps(x->d[r * blocks + 8 * b + s]));
                    acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale_x, acc[r]);
                }
            }
        }
    }
    lane_sums(acc, rows, sums);
}

/* sums[r * LANE_COLS + c] = x_r . row c over blocks [b0, b1), for `rows` activation rows (at most LANE_ROWS; a
 * constant where inlined) and the LANE_COLS weight rows at cols[c] (first blocks, `stride` bytes from one to the
 * next). `w_group`, `ahead`: the prefetch cursor (q16_prefetch_step) of the four-row group these rows are in. */
static inline __attribute__((always_inline)) void q16_lanes_rows(const q16_rows *x, const uint8_t *const cols[LANE_COLS],
                                                                 int64_t stride, int qtype, int64_t b0, int64_t b1,
                                                                 int rows, const uint8_t *w_group, int64_t ahead,
                                                                 float *sums) {
    if (qtype == GGUF_Q4_K) { /* b0, b1: super-blocks */
        q16_lanes_rows_q4k(x, cols, stride, b0, b1, rows, w_group, ahead, sums);
        return;
    }
    if (qtype == GGUF_Q6_K) {
        q16_lanes_rows_q6k(x, cols, stride, b0, b1, rows, w_group, ahead, sums);
        return;
    }
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
            const __m512i dot = lane_block_dot(w, xq);
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(d, _mm512_set1_ps(x->d[r * blocks + b])), acc[r]);
            if (qtype == GGUF_Q4_1) acc[r] = _mm512_fmadd_ps(m, _mm512_set1_ps(x->s[r * blocks + b]), acc[r]);
        }
    }
    lane_sums(acc, rows, sums);
}
#endif
#endif
