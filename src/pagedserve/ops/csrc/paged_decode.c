/* Decode attention straight from the paged KV cache: one query token per sequence, K/V read once through the
 * block table (no gathered copy), float32 accumulation and softmax. Parallel over (sequence, kv head) with
 * OpenMP; linked against the libgomp torch already loaded, so both share one thread pool.
 *
 * Layouts (see attention/backend.py):
 *   q          [batch, num_q_heads, head_dim], rows q_row_stride elements apart (a view into merged qkv)
 *   out        [batch, num_q_heads, head_dim]
 *   k_cache    [num_blocks, num_kv_heads, head_dim, block_size]   keys transposed per block: the scores of a
 *                                                                 block's tokens are one vector FMA per dimension
 *   v_cache    [num_blocks, num_kv_heads, block_size, head_dim]   value rows: accumulated per dimension
 * so one (block, kv head) of K and of V are each one contiguous chunk, read as a stream.
 *   block_tables [batch, max_blocks] int64; seq_lens [batch] int64. dtype: 0 float32, 1 bfloat16.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE__)
#include <xmmintrin.h>
#endif

#include "bf16.h"

/* In place, each of `rows` rows of `len` scores (row stride `stride`). */
static void softmax_rows(float *scores, int64_t rows, int64_t len, int64_t stride) {
    for (int64_t g = 0; g < rows; ++g) {
        float *s = scores + g * stride, maximum = -FLT_MAX, total = 0.0f;
        for (int64_t t = 0; t < len; ++t) maximum = s[t] > maximum ? s[t] : maximum;
#pragma omp simd reduction(+ : total)
        for (int64_t t = 0; t < len; ++t) {
            s[t] = expf(s[t] - maximum);
            total += s[t];
        }
        const float inverse = 1.0f / total;
        for (int64_t t = 0; t < len; ++t) s[t] *= inverse;
    }
}

/* One (sequence, kv head): T is the storage type, LOAD converts one element to float. BS is the block size
 * (a compile-time 16 for the common case so the token loop is exactly one vector). */
#define DEFINE_DECODE_ONE(NAME, T, LOAD, STORE, BS_EXPR)                                                          \
    static void NAME(const T *q, const T *k_cache, const T *v_cache, T *out, const int64_t *table, int64_t len,  \
                     int64_t h, int64_t group, int64_t num_kv_heads, int64_t head_dim, int64_t block_size_arg,   \
                     float scale, float *qf, float *acc, float *scores) {                                       \
        const int64_t bs = (BS_EXPR);                                                                            \
        const int64_t num_blocks = (len + bs - 1) / bs, stride = num_blocks * bs;                                \
        (void)block_size_arg;                                                                                    \
        for (int64_t i = 0; i < group * head_dim; ++i) qf[i] = LOAD(q[i]) * scale;                             \
        for (int64_t blk_i = 0; blk_i < num_blocks; ++blk_i) {                                                   \
            const T *kb = k_cache + (table[blk_i] * num_kv_heads + h) * head_dim * bs;                           \
            for (int64_t g = 0; g < group; ++g) {                                                                \
                const float *qg = qf + g * head_dim;                                                             \
                float block_scores[bs]; /* a register when bs is the constant 16 */                              \
                for (int64_t j = 0; j < bs; ++j) block_scores[j] = 0.0f;                                         \
                for (int64_t d = 0; d < head_dim; ++d) {                                                         \
                    const float qd = qg[d];                                                                      \
                    const T *row = kb + d * bs;                                                                  \
                    _Pragma("omp simd") for (int64_t j = 0; j < bs; ++j) block_scores[j] += qd * LOAD(row[j]);  \
                }                                                                                                \
                memcpy(scores + g * stride + blk_i * bs, block_scores, sizeof(float) * (size_t)bs);              \
            }                                                                                                    \
        }                                                                                                        \
        softmax_rows(scores, group, len, stride);                                                                \
        memset(acc, 0, sizeof(float) * (size_t)(group * head_dim));                                              \
        for (int64_t t = 0; t < len; ++t) {                                                                      \
            const T *vrow = v_cache + ((table[t / bs] * num_kv_heads + h) * bs + t % bs) * head_dim;            \
            for (int64_t g = 0; g < group; ++g) {                                                                \
                const float p = scores[g * stride + t];                                                          \
                float *a = acc + g * head_dim;                                                                   \
                _Pragma("omp simd") for (int64_t d = 0; d < head_dim; ++d) a[d] += p * LOAD(vrow[d]);           \
            }                                                                                                    \
        }                                                                                                        \
        for (int64_t i = 0; i < group * head_dim; ++i) out[i] = STORE(acc[i]);                                  \
    }

#define LOAD_F32(x) (x)
#define STORE_F32(x) (x)
DEFINE_DECODE_ONE(decode_f32_bs16, float, LOAD_F32, STORE_F32, 16)
DEFINE_DECODE_ONE(decode_f32, float, LOAD_F32, STORE_F32, block_size_arg)
DEFINE_DECODE_ONE(decode_bf16_bs16, uint16_t, bf16_to_f32, f32_to_bf16, 16)
DEFINE_DECODE_ONE(decode_bf16, uint16_t, bf16_to_f32, f32_to_bf16, block_size_arg)

#if defined(__AVX512F__)
#include <immintrin.h>
/* bfloat16, block size 16: the common case, with the accumulators in registers. GROUP (query heads per kv head)
 * is a compile-time constant so the GROUP score vectors and value accumulators never touch memory; each key row
 * and value chunk is converted to float once and used by every query head of the group. head_dim % 16 == 0. */
static inline __m512 load16_bf16(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

/* One (block, kv head) of K or V: 16 x head_dim bfloat16, contiguous. to_l2: values are read after all keys. */
static inline void prefetch_block(const uint16_t *block, int64_t head_dim, int to_l2) {
    const char *bytes = (const char *)block;
    for (int64_t offset = 0; offset < head_dim * 16 * 2; offset += 64) {
        if (to_l2)
            _mm_prefetch(bytes + offset, _MM_HINT_T1);
        else
            _mm_prefetch(bytes + offset, _MM_HINT_T0);
    }
}

#define DEFINE_DECODE_FAST(GROUP)                                                                                 \
    static void decode_bf16_fast_##GROUP(const uint16_t *q, const uint16_t *k_cache, const uint16_t *v_cache,    \
                                         uint16_t *out, const int64_t *table, int64_t len, int64_t h,            \
                                         int64_t num_kv_heads, int64_t head_dim, float scale, float *qf,          \
                                         float *scores) {                                                        \
        const int64_t num_blocks = (len + 15) / 16, stride = num_blocks * 16;                                    \
        for (int64_t b = 0; b < 2 && b < num_blocks; ++b)                                                        \
            prefetch_block(k_cache + (table[b] * num_kv_heads + h) * head_dim * 16, head_dim, 0);                \
        for (int64_t i = 0; i < GROUP * head_dim; ++i) qf[i] = bf16_to_f32(q[i]) * scale;                      \
        for (int64_t blk_i = 0; blk_i < num_blocks; ++blk_i) {                                                   \
            const uint16_t *kb = k_cache + (table[blk_i] * num_kv_heads + h) * head_dim * 16;                    \
            /* Blocks sit anywhere in the pool, too short for the hardware prefetcher to ramp up: fetch the keys  \
             * two blocks ahead, and this block's values for the pass below (into L2), while this one computes. */ \
            if (blk_i + 2 < num_blocks)                                                                          \
                prefetch_block(k_cache + (table[blk_i + 2] * num_kv_heads + h) * head_dim * 16, head_dim, 0);    \
            prefetch_block(v_cache + (table[blk_i] * num_kv_heads + h) * 16 * head_dim, head_dim, 1);            \
            __m512 s[GROUP];                                                                                     \
            for (int g = 0; g < GROUP; ++g) s[g] = _mm512_setzero_ps();                                          \
            for (int64_t d = 0; d < head_dim; ++d) {                                                             \
                const __m512 k = load16_bf16(kb + d * 16);                                                       \
                for (int g = 0; g < GROUP; ++g) s[g] = _mm512_fmadd_ps(_mm512_set1_ps(qf[g * head_dim + d]), k, s[g]); \
            }                                                                                                    \
            for (int g = 0; g < GROUP; ++g) _mm512_storeu_ps(scores + g * stride + blk_i * 16, s[g]);            \
        }                                                                                                        \
        softmax_rows(scores, GROUP, len, stride);                                                                \
        for (int64_t c = 0; c < head_dim; c += 16) {                                                             \
            __m512 acc[GROUP];                                                                                   \
            for (int g = 0; g < GROUP; ++g) acc[g] = _mm512_setzero_ps();                                        \
            for (int64_t blk_i = 0; blk_i < num_blocks; ++blk_i) {                                               \
                const uint16_t *vb = v_cache + (table[blk_i] * num_kv_heads + h) * 16 * head_dim + c;            \
                const int64_t tokens = len - blk_i * 16 < 16 ? len - blk_i * 16 : 16;                            \
                for (int64_t j = 0; j < tokens; ++j) {                                                           \
                    const __m512 v = load16_bf16(vb + j * head_dim);                                             \
                    const int64_t t = blk_i * 16 + j;                                                            \
                    for (int g = 0; g < GROUP; ++g)                                                              \
                        acc[g] = _mm512_fmadd_ps(_mm512_set1_ps(scores[g * stride + t]), v, acc[g]);             \
                }                                                                                                \
            }                                                                                                    \
            for (int g = 0; g < GROUP; ++g) {                                                                    \
                float lanes[16];                                                                                 \
                _mm512_storeu_ps(lanes, acc[g]);                                                                 \
                for (int i = 0; i < 16; ++i) out[g * head_dim + c + i] = f32_to_bf16(lanes[i]);                \
            }                                                                                                    \
        }                                                                                                        \
    }
DEFINE_DECODE_FAST(1)
DEFINE_DECODE_FAST(2)
DEFINE_DECODE_FAST(3)
DEFINE_DECODE_FAST(4)
DEFINE_DECODE_FAST(5)
DEFINE_DECODE_FAST(6)
DEFINE_DECODE_FAST(7)
DEFINE_DECODE_FAST(8)

typedef void (*decode_fast_fn)(const uint16_t *, const uint16_t *, const uint16_t *, uint16_t *, const int64_t *,
                               int64_t, int64_t, int64_t, int64_t, float, float *, float *);
static const decode_fast_fn DECODE_FAST[9] = {NULL, decode_bf16_fast_1, decode_bf16_fast_2, decode_bf16_fast_3,
                                              decode_bf16_fast_4, decode_bf16_fast_5, decode_bf16_fast_6,
                                              decode_bf16_fast_7, decode_bf16_fast_8};
#define HAVE_DECODE_FAST 1
#endif

int paged_decode_attention(const void *q, const void *k_cache, const void *v_cache, void *out,
                           const int64_t *block_tables, const int64_t *seq_lens, int64_t batch,
                           int64_t num_q_heads, int64_t num_kv_heads, int64_t head_dim, int64_t block_size,
                           int64_t max_blocks, int64_t q_row_stride, float scale, int dtype, int num_threads) {
    const int64_t group = num_q_heads / num_kv_heads;
    int failed = 0;
#pragma omp parallel num_threads(num_threads)
    {
#if defined(__SSE__)
        /* Flush subnormals inside the kernel only (exp of very negative scores takes a slow path); restored below. */
        const unsigned int saved_csr = _mm_getcsr();
        _mm_setcsr(saved_csr | 0x8040u);
#endif
        /* One scratch buffer per thread, sized for the longest possible sequence. */
        float *buffer = malloc(sizeof(float) * (size_t)(group * head_dim * 2 + group * max_blocks * block_size));
        if (buffer == NULL) failed = 1;
#pragma omp for schedule(dynamic, 4)
        for (int64_t work = 0; work < batch * num_kv_heads; ++work) {
            if (buffer == NULL) continue;
            const int64_t b = work / num_kv_heads, h = work % num_kv_heads;
            const int64_t len = seq_lens[b];
            if (len < 1 || len > max_blocks * block_size) {
                failed = 2;
                continue;
            }
            float *qf = buffer, *acc = qf + group * head_dim, *scores = acc + group * head_dim;
            const int64_t *table = block_tables + b * max_blocks;
            const int64_t q_offset = b * q_row_stride + h * group * head_dim;
            const int64_t out_offset = (b * num_q_heads + h * group) * head_dim;
            if (dtype == 0) {
                (block_size == 16 ? decode_f32_bs16 : decode_f32)(
                    (const float *)q + q_offset, k_cache, v_cache, (float *)out + out_offset, table, len, h, group,
                    num_kv_heads, head_dim, block_size, scale, qf, acc, scores);
            } else {
#ifdef HAVE_DECODE_FAST
                if (block_size == 16 && group <= 8 && head_dim % 16 == 0) {
                    DECODE_FAST[group]((const uint16_t *)q + q_offset, k_cache, v_cache,
                                       (uint16_t *)out + out_offset, table, len, h, num_kv_heads, head_dim, scale,
                                       qf, scores);
                    continue;
                }
#endif
                (block_size == 16 ? decode_bf16_bs16 : decode_bf16)(
                    (const uint16_t *)q + q_offset, k_cache, v_cache, (uint16_t *)out + out_offset, table, len, h,
                    group, num_kv_heads, head_dim, block_size, scale, qf, acc, scores);
            }
        }
        free(buffer);
#if defined(__SSE__)
        _mm_setcsr(saved_csr);
#endif
    }
    return failed;
}
