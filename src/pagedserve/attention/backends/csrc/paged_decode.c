/* Decode attention straight from the paged KV cache: one query token per sequence, K/V read once through the
 * block table (no gathered copy), float32 accumulation, softmax in float32. Parallel over (sequence, kv head)
 * with OpenMP; linked against the libgomp torch already loaded, so both share one thread pool.
 *
 * Layouts: q, out [batch, num_q_heads, head_dim]; k_cache, v_cache [num_blocks, block_size, num_kv_heads,
 * head_dim]; block_tables [batch, max_blocks] int64; seq_lens [batch] int64. dtype: 0 float32, 1 bfloat16.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE__)
#include <xmmintrin.h>
#endif
#if defined(__AVX512F__) && defined(__AVX512BF16__)
#include <immintrin.h>
#define HAVE_AVX512_BF16 1
#endif

static inline float bf16_load(const uint16_t *p) {
    uint32_t bits = ((uint32_t)*p) << 16;
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

static inline uint16_t bf16_round(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40); /* NaN stays NaN */
    bits += 0x7fffu + ((bits >> 16) & 1u); /* round to nearest even */
    return (uint16_t)(bits >> 16);
}

/* In place, each of `rows` rows of `len` scores. */
static void softmax_rows(float *scores, int64_t rows, int64_t len) {
    for (int64_t g = 0; g < rows; ++g) {
        float *s = scores + g * len, maximum = -INFINITY, total = 0.0f;
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

static inline void load_row(const void *base, int64_t offset, int64_t n, int dtype, float *dst) {
    if (dtype == 0) {
        memcpy(dst, (const float *)base + offset, (size_t)n * sizeof(float));
    } else {
        const uint16_t *src = (const uint16_t *)base + offset;
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) {
            uint32_t bits = ((uint32_t)src[i]) << 16;
            float value;
            memcpy(&value, &bits, sizeof value);
            dst[i] = value;
        }
    }
}

#ifdef HAVE_AVX512_BF16
/* bfloat16 with AVX-512 BF16: q.k with vdpbf16ps (exact bf16 products, float32 sums), V widened by a shift. */
static void decode_one_bf16(const uint16_t *q, const uint16_t *k_cache, const uint16_t *v_cache, uint16_t *out,
                            const int64_t *table, int64_t len, int64_t h, int64_t group, int64_t num_kv_heads,
                            int64_t head_dim, int64_t block_size, float scale, float *scores, float *acc) {
    const int64_t chunks = head_dim / 32;
    for (int64_t t = 0; t < len; ++t) {
        const int64_t slot = table[t / block_size] * block_size + t % block_size;
        const uint16_t *krow = k_cache + (slot * num_kv_heads + h) * head_dim;
        for (int64_t g = 0; g < group; ++g) {
            const uint16_t *qg = q + g * head_dim;
            __m512 sum = _mm512_setzero_ps();
            for (int64_t c = 0; c < chunks; ++c) {
                __m512bh kv = (__m512bh)_mm512_loadu_si512((const void *)(krow + c * 32));
                __m512bh qv = (__m512bh)_mm512_loadu_si512((const void *)(qg + c * 32));
                sum = _mm512_dpbf16_ps(sum, qv, kv);
            }
            scores[g * len + t] = _mm512_reduce_add_ps(sum) * scale;
        }
    }
    softmax_rows(scores, group, len);
    memset(acc, 0, sizeof(float) * (size_t)(group * head_dim));
    for (int64_t t = 0; t < len; ++t) {
        const int64_t slot = table[t / block_size] * block_size + t % block_size;
        const uint16_t *vrow = v_cache + (slot * num_kv_heads + h) * head_dim;
        for (int64_t c = 0; c < head_dim / 16; ++c) {
            __m256i raw = _mm256_loadu_si256((const __m256i *)(vrow + c * 16));
            __m512 v = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
            for (int64_t g = 0; g < group; ++g) {
                float *a = acc + g * head_dim + c * 16;
                _mm512_storeu_ps(a, _mm512_fmadd_ps(_mm512_set1_ps(scores[g * len + t]), v, _mm512_loadu_ps(a)));
            }
        }
    }
    for (int64_t g = 0; g < group; ++g)
        for (int64_t d = 0; d < head_dim; ++d) out[g * head_dim + d] = bf16_round(acc[g * head_dim + d]);
}
#endif

int paged_decode_attention(const void *q, const void *k_cache, const void *v_cache, void *out,
                           const int64_t *block_tables, const int64_t *seq_lens, int64_t batch,
                           int64_t num_q_heads, int64_t num_kv_heads, int64_t head_dim, int64_t block_size,
                           int64_t max_blocks, float scale, int dtype, int num_threads) {
    const int64_t group = num_q_heads / num_kv_heads;
    int failed = 0;
#pragma omp parallel num_threads(num_threads)
    {
#if defined(__SSE__)
    /* Flush subnormals inside the kernel only (exp of very negative scores would hit the slow path); restored below. */
    const unsigned int saved_csr = _mm_getcsr();
    _mm_setcsr(saved_csr | 0x8040u);
#endif
#pragma omp for schedule(dynamic, 4)
    for (int64_t work = 0; work < batch * num_kv_heads; ++work) {
        const int64_t b = work / num_kv_heads, h = work % num_kv_heads;
        const int64_t len = seq_lens[b];
        float *buffer = malloc(sizeof(float) * (size_t)(group * head_dim * 2 + head_dim + group * len));
        if (buffer == NULL) {
            failed = 1;
            continue;
        }
        float *qf = buffer, *acc = qf + group * head_dim, *row = acc + group * head_dim;
        float *scores = row + head_dim;
        const int64_t *table = block_tables + b * max_blocks;
#ifdef HAVE_AVX512_BF16
        if (dtype == 1 && head_dim % 32 == 0) {
            const int64_t offset = (b * num_q_heads + h * group) * head_dim;
            decode_one_bf16((const uint16_t *)q + offset, k_cache, v_cache, (uint16_t *)out + offset, table, len, h,
                            group, num_kv_heads, head_dim, block_size, scale, scores, acc);
            free(buffer);
            continue;
        }
#endif
        for (int64_t g = 0; g < group; ++g)
            load_row(q, (b * num_q_heads + h * group + g) * head_dim, head_dim, dtype, qf + g * head_dim);
        memset(acc, 0, sizeof(float) * (size_t)(group * head_dim));
        for (int64_t t = 0; t < len; ++t) {
            const int64_t slot = table[t / block_size] * block_size + t % block_size;
            load_row(k_cache, (slot * num_kv_heads + h) * head_dim, head_dim, dtype, row);
            for (int64_t g = 0; g < group; ++g) {
                const float *qg = qf + g * head_dim;
                float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
                for (int64_t d = 0; d < head_dim; ++d) dot += qg[d] * row[d];
                scores[g * len + t] = dot * scale;
            }
        }
        softmax_rows(scores, group, len);
        for (int64_t t = 0; t < len; ++t) {
            const int64_t slot = table[t / block_size] * block_size + t % block_size;
            load_row(v_cache, (slot * num_kv_heads + h) * head_dim, head_dim, dtype, row);
            for (int64_t g = 0; g < group; ++g) {
                const float p = scores[g * len + t];
                float *ag = acc + g * head_dim;
#pragma omp simd
                for (int64_t d = 0; d < head_dim; ++d) ag[d] += p * row[d];
            }
        }
        for (int64_t g = 0; g < group; ++g) {
            const int64_t offset = (b * num_q_heads + h * group + g) * head_dim;
            if (dtype == 0) {
                memcpy((float *)out + offset, acc + g * head_dim, sizeof(float) * (size_t)head_dim);
            } else {
                uint16_t *dst = (uint16_t *)out + offset;
                for (int64_t d = 0; d < head_dim; ++d) dst[d] = bf16_round(acc[g * head_dim + d]);
            }
        }
        free(buffer);
    }
#if defined(__SSE__)
    _mm_setcsr(saved_csr);
#endif
    }
    return failed;
}
