/* Decode attention straight from the paged KV cache: one query token per sequence, K/V read once through the
 * block table (no gathered copy), float32 accumulation and softmax. Parallel over (sequence, kv head) with
 * OpenMP, and over parts of a sequence where there are few such pairs (combine_parts); linked against the libgomp
 * torch already loaded, so both share one thread pool.
 *
 * Layouts (see attention/backend.py):
 *   q          [batch, num_q_heads, head_dim], rows q_row_stride elements apart (a view into merged qkv)
 *   out        [batch, num_q_heads, head_dim]
 *   k_cache    [num_blocks, num_kv_heads, head_dim, block_size]   keys transposed per block: the scores of a
 *                                                                 block's tokens are one vector FMA per dimension
 *   v_cache    [num_blocks, num_kv_heads, block_size, head_dim]   value rows: accumulated per dimension
 * so one (block, kv head) of K and of V are each one contiguous chunk, read as a stream.
 *   block_tables [batch, max_blocks] int64; seq_lens [batch] int64. dtype (q and out): 0 float32, 1 bfloat16;
 *   cache_dtype: the same code as dtype (a cache in the activations' dtype), 2, float8 e4m3 (--kv-cache-dtype
 *   fp8, read as stored: the scale is 1, as vLLM's without calibrated scales), which halves (bfloat16) or
 *   quarters (float32) the bytes decode reads, or 1, a bfloat16 cache under float32 activations (the model's
 *   matrices bfloat16, its compute float32: worker/kv_cache.py), half the bytes.
 *   window: sliding-window attention (Mistral, Gemma 3's local layers): the query sees only the last `window`
 *   keys; 0 sees them all. Blocks wholly before the window are not read; the first block's earlier keys get
 *   probability 0.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "e4m3.h"
#include "simd.h"

/* In place, a tile's `len` scores of each of `rows` heads (row stride `stride`), the first `skip` before a sliding
 * window (probability 0): each becomes exp(score - the new running maximum), and the running maximum, sum and the
 * accumulated values (acc, rows x head_dim) are rescaled to it (online softmax, one tile at a time). softcap > 0:
 * each score becomes softcap * tanh(score / softcap) first (Gemma 2's attention logit soft-capping). */
static void softmax_tile(float *scores, int64_t rows, int64_t len, int64_t stride, int64_t skip, float softcap,
                         float *running_max, float *running_sum, float *acc, int64_t head_dim) {
    for (int64_t g = 0; g < rows; ++g) {
        float *s = scores + g * stride, maximum = running_max[g], total = 0.0f;
        for (int64_t t = 0; t < skip; ++t) s[t] = 0.0f;
        if (softcap > 0.0f)
            for (int64_t t = skip; t < len; ++t) s[t] = softcap * tanhf(s[t] / softcap);
        for (int64_t t = skip; t < len; ++t) maximum = s[t] > maximum ? s[t] : maximum;
#pragma omp simd reduction(+ : total)
        for (int64_t t = skip; t < len; ++t) {
            s[t] = expf(s[t] - maximum);
            total += s[t];
        }
        if (maximum > running_max[g]) { /* earlier tiles' weights shrink by exp(old - new) */
            const float correction = running_max[g] == -FLT_MAX ? 0.0f : expf(running_max[g] - maximum);
            running_sum[g] *= correction;
            for (int64_t d = 0; d < head_dim; ++d) acc[g * head_dim + d] *= correction;
            running_max[g] = maximum;
        }
        running_sum[g] += total;
    }
}

/* In place, each of `rows` rows of `len` scores (row stride `stride`) becomes its softmax; the first `skip` of a
 * row (keys before a sliding window) get probability 0; softcap as in softmax_tile. */
static void softmax_rows(float *scores, int64_t rows, int64_t len, int64_t stride, int64_t skip, float softcap) {
    for (int64_t g = 0; g < rows; ++g) {
        float maximum = -FLT_MAX, total = 0.0f;
        softmax_tile(scores + g * stride, 1, len, stride, skip, softcap, &maximum, &total, NULL, 0);
        const float inverse = 1.0f / total;
        for (int64_t t = skip; t < len; ++t) scores[g * stride + t] *= inverse;
    }
}

/* One (sequence, kv head): T is the storage type, LOAD converts one element to float. BS is the block size
 * (a compile-time 16 for the common case so the token loop is exactly one vector). */
#define DEFINE_DECODE_ONE(NAME, T, LOAD, STORE, TC, LOADC, BS_EXPR)                                               \
    static void NAME(const T *q, const TC *k_cache, const TC *v_cache, T *out, const int64_t *table, int64_t len, \
                     int64_t skip, int64_t h, int64_t group, int64_t num_kv_heads, int64_t head_dim, int64_t block_size_arg,   \
                     float scale, float softcap, float *qf, float *acc, float *scores) {                        \
        const int64_t bs = (BS_EXPR);                                                                            \
        const int64_t num_blocks = (len + bs - 1) / bs, stride = num_blocks * bs;                                \
        (void)block_size_arg;                                                                                    \
        for (int64_t i = 0; i < group * head_dim; ++i) qf[i] = LOAD(q[i]) * scale;                             \
        for (int64_t blk_i = 0; blk_i < num_blocks; ++blk_i) {                                                   \
            const TC *kb = k_cache + (table[blk_i] * num_kv_heads + h) * head_dim * bs;                          \
            for (int64_t g = 0; g < group; ++g) {                                                                \
                const float *qg = qf + g * head_dim;                                                             \
                float block_scores[bs]; /* a register when bs is the constant 16 */                              \
                for (int64_t j = 0; j < bs; ++j) block_scores[j] = 0.0f;                                         \
                for (int64_t d = 0; d < head_dim; ++d) {                                                         \
                    const float qd = qg[d];                                                                      \
                    const TC *row = kb + d * bs;                                                                 \
                    _Pragma("omp simd") for (int64_t j = 0; j < bs; ++j) block_scores[j] += qd * LOADC(row[j]); \
                }                                                                                                \
                memcpy(scores + g * stride + blk_i * bs, block_scores, sizeof(float) * (size_t)bs);              \
            }                                                                                                    \
        }                                                                                                        \
        softmax_rows(scores, group, len, stride, skip, softcap);                                                 \
        memset(acc, 0, sizeof(float) * (size_t)(group * head_dim));                                              \
        for (int64_t t = 0; t < len; ++t) {                                                                      \
            const TC *vrow = v_cache + ((table[t / bs] * num_kv_heads + h) * bs + t % bs) * head_dim;           \
            for (int64_t g = 0; g < group; ++g) {                                                                \
                const float p = scores[g * stride + t];                                                          \
                float *a = acc + g * head_dim;                                                                   \
                _Pragma("omp simd") for (int64_t d = 0; d < head_dim; ++d) a[d] += p * LOADC(vrow[d]);          \
            }                                                                                                    \
        }                                                                                                        \
        for (int64_t i = 0; i < group * head_dim; ++i) out[i] = STORE(acc[i]);                                  \
    }

#define LOAD_F32(x) (x)
#define STORE_F32(x) (x)
DEFINE_DECODE_ONE(decode_f32_bs16, float, LOAD_F32, STORE_F32, float, LOAD_F32, 16)
DEFINE_DECODE_ONE(decode_f32, float, LOAD_F32, STORE_F32, float, LOAD_F32, block_size_arg)
DEFINE_DECODE_ONE(decode_bf16_bs16, uint16_t, bf16_to_f32, f32_to_bf16, uint16_t, bf16_to_f32, 16)
DEFINE_DECODE_ONE(decode_bf16, uint16_t, bf16_to_f32, f32_to_bf16, uint16_t, bf16_to_f32, block_size_arg)
DEFINE_DECODE_ONE(decode_f32_e4m3_bs16, float, LOAD_F32, STORE_F32, uint8_t, e4m3_to_f32, 16)
DEFINE_DECODE_ONE(decode_f32_e4m3, float, LOAD_F32, STORE_F32, uint8_t, e4m3_to_f32, block_size_arg)
DEFINE_DECODE_ONE(decode_bf16_e4m3_bs16, uint16_t, bf16_to_f32, f32_to_bf16, uint8_t, e4m3_to_f32, 16)
DEFINE_DECODE_ONE(decode_bf16_e4m3, uint16_t, bf16_to_f32, f32_to_bf16, uint8_t, e4m3_to_f32, block_size_arg)
DEFINE_DECODE_ONE(decode_f32_bf16c_bs16, float, LOAD_F32, STORE_F32, uint16_t, bf16_to_f32, 16)
DEFINE_DECODE_ONE(decode_f32_bf16c, float, LOAD_F32, STORE_F32, uint16_t, bf16_to_f32, block_size_arg)

typedef void (*decode_one_fn)(const void *, const void *, const void *, void *, const int64_t *, int64_t, int64_t,
                              int64_t, int64_t, int64_t, int64_t, int64_t, float, float, float *, float *, float *);
/* [dtype][cache_dtype][block size is 16]; a float32 cache under bfloat16 activations is never allocated */
static const decode_one_fn DECODE_ONE[2][3][2] = {
    {{(decode_one_fn)decode_f32, (decode_one_fn)decode_f32_bs16},
     {(decode_one_fn)decode_f32_bf16c, (decode_one_fn)decode_f32_bf16c_bs16},
     {(decode_one_fn)decode_f32_e4m3, (decode_one_fn)decode_f32_e4m3_bs16}},
    {{NULL, NULL},
     {(decode_one_fn)decode_bf16, (decode_one_fn)decode_bf16_bs16},
     {(decode_one_fn)decode_bf16_e4m3, (decode_one_fn)decode_bf16_e4m3_bs16}},
};

#ifdef PAGEDSERVE_SIMD
/* Block size 16, head_dim % 16 == 0: the common case, with the accumulators in registers, for float32 and
 * bfloat16 storage, AVX-512 (one vector per block of 16 tokens) or AVX2 (two). GROUP (query heads per kv head)
 * is a compile-time constant so the GROUP score vectors and value accumulators never touch memory; each key row
 * and value chunk is loaded (and widened) once and used by every query head of the group. */
#define VECTORS_PER_BLOCK (16 / VF_LANES)

/* One (block, kv head) of K or V: 16 x head_dim elements, contiguous. to_l2: values are read after all keys. */
static inline void prefetch_block(const void *block, int64_t bytes, int to_l2) {
    const char *p = (const char *)block;
    for (int64_t offset = 0; offset < bytes; offset += 64) {
        if (to_l2)
            prefetch_t1(p + offset);
        else
            prefetch_t0(p + offset);
    }
}

/* Keys and values are read a tile of blocks at a time: the tile's scores, their softmax against the running
 * maximum, then the tile's values, fetched into L2 while its keys were read, for each group of VF_LANES dimensions
 * from cache. Until 2026-12-07 all scores came first, then each group of dimensions read all of a sequence's
 * values (4 passes at head_dim 64 on AVX-512), from memory once they passed L2. */
#define DECODE_TILE_BYTES 16384

/* One (sequence or part of one, kv head): acc (GROUP x head_dim) gets the values weighted by exp(score - max),
 * state[g] the maximum and state[GROUP + g] the sum of those weights (the caller divides, or combines parts). */
#define DEFINE_DECODE_FAST(NAME, T, LOAD, TC, LOADV, GROUP)                                                       \
    static void NAME##_##GROUP(const void *q_in, const void *k_in, const void *v_in, const int64_t *table,       \
                               int64_t len, int64_t skip, int64_t h, int64_t num_kv_heads, int64_t head_dim,    \
                               float scale, float softcap, float *qf, float *scores, float *acc, float *state) { \
        const T *q = q_in;                                                                                       \
        const TC *k_cache = k_in, *v_cache = v_in;                                                               \
        const int64_t num_blocks = (len + 15) / 16;                                                              \
        const int64_t block_elems = head_dim * 16, block_bytes = block_elems * (int64_t)sizeof(TC);             \
        const int64_t tile_blocks = DECODE_TILE_BYTES / block_bytes > 0 ? DECODE_TILE_BYTES / block_bytes : 1;   \
        /* the scratch holds GROUP x (the table's blocks x 16) scores: a tile never needs more than the sequence */ \
        const int64_t stride = (tile_blocks < num_blocks ? tile_blocks : num_blocks) * 16;                      \
        float *running_max = state, *running_sum = state + GROUP;                                                \
        for (int g = 0; g < GROUP; ++g) {                                                                        \
            running_max[g] = -FLT_MAX;                                                                           \
            running_sum[g] = 0.0f;                                                                               \
        }                                                                                                        \
        memset(acc, 0, sizeof(float) * (size_t)(GROUP * head_dim));                                              \
        for (int64_t b = 0; b < 2 && b < num_blocks; ++b)                                                        \
            prefetch_block(k_cache + (table[b] * num_kv_heads + h) * block_elems, block_bytes, 0);               \
        for (int64_t i = 0; i < GROUP * head_dim; ++i) qf[i] = LOAD(q[i]) * scale;                             \
        for (int64_t tile = 0; tile < num_blocks; tile += tile_blocks) {                                         \
            const int64_t tile_end = tile + tile_blocks < num_blocks ? tile + tile_blocks : num_blocks;          \
            const int64_t first = tile * 16, tokens = (len < tile_end * 16 ? len : tile_end * 16) - first;      \
            for (int64_t blk_i = tile; blk_i < tile_end; ++blk_i) {                                              \
                const TC *kb = k_cache + (table[blk_i] * num_kv_heads + h) * block_elems;                        \
                /* Blocks sit anywhere in the pool, too short for the hardware prefetcher to ramp up: fetch the   \
                 * keys two blocks ahead, and this block's values (into L2) for the tile's value pass. */         \
                if (blk_i + 2 < num_blocks)                                                                      \
                    prefetch_block(k_cache + (table[blk_i + 2] * num_kv_heads + h) * block_elems, block_bytes, 0); \
                prefetch_block(v_cache + (table[blk_i] * num_kv_heads + h) * block_elems, block_bytes, 1);       \
                vf s[GROUP][VECTORS_PER_BLOCK];                                                                  \
                for (int g = 0; g < GROUP; ++g)                                                                  \
                    for (int v = 0; v < VECTORS_PER_BLOCK; ++v) s[g][v] = vf_zero();                             \
                for (int64_t d = 0; d < head_dim; ++d) {                                                         \
                    for (int v = 0; v < VECTORS_PER_BLOCK; ++v) {                                                \
                        const vf k = LOADV(kb + d * 16 + v * VF_LANES);                                          \
                        for (int g = 0; g < GROUP; ++g)                                                          \
                            s[g][v] = vf_fma(vf_set1(qf[g * head_dim + d]), k, s[g][v]);                         \
                    }                                                                                            \
                }                                                                                                \
                for (int g = 0; g < GROUP; ++g)                                                                  \
                    for (int v = 0; v < VECTORS_PER_BLOCK; ++v)                                                  \
                        vf_store(scores + g * stride + (blk_i - tile) * 16 + v * VF_LANES, s[g][v]);             \
            }                                                                                                    \
            softmax_tile(scores, GROUP, tokens, stride, tile == 0 ? skip : 0, softcap, running_max, running_sum, \
                         acc, head_dim);                                                                         \
            for (int64_t c = 0; c < head_dim; c += VF_LANES) {                                                   \
                vf a[GROUP];                                                                                     \
                for (int g = 0; g < GROUP; ++g) a[g] = vf_load(acc + g * head_dim + c);                          \
                for (int64_t blk_i = tile; blk_i < tile_end; ++blk_i) {                                          \
                    const TC *vb = v_cache + (table[blk_i] * num_kv_heads + h) * block_elems + c;                \
                    const int64_t at = (blk_i - tile) * 16, n = tokens - at < 16 ? tokens - at : 16;             \
                    for (int64_t j = 0; j < n; ++j) {                                                            \
                        const vf v = LOADV(vb + j * head_dim);                                                   \
                        for (int g = 0; g < GROUP; ++g)                                                          \
                            a[g] = vf_fma(vf_set1(scores[g * stride + at + j]), v, a[g]);                        \
                    }                                                                                            \
                }                                                                                                \
                for (int g = 0; g < GROUP; ++g) vf_store(acc + g * head_dim + c, a[g]);                          \
            }                                                                                                    \
        }                                                                                                        \
    }
#define DEFINE_DECODE_FAST_GROUPS(NAME, T, LOAD, TC, LOADV)                                                       \
    DEFINE_DECODE_FAST(NAME, T, LOAD, TC, LOADV, 1)                                                               \
    DEFINE_DECODE_FAST(NAME, T, LOAD, TC, LOADV, 2)                                                               \
    DEFINE_DECODE_FAST(NAME, T, LOAD, TC, LOADV, 3)                                                               \
    DEFINE_DECODE_FAST(NAME, T, LOAD, TC, LOADV, 4)                                                               \
    DEFINE_DECODE_FAST(NAME, T, LOAD, TC, LOADV, 5)                                                               \
    DEFINE_DECODE_FAST(NAME, T, LOAD, TC, LOADV, 6)                                                               \
    DEFINE_DECODE_FAST(NAME, T, LOAD, TC, LOADV, 7)                                                               \
    DEFINE_DECODE_FAST(NAME, T, LOAD, TC, LOADV, 8)
DEFINE_DECODE_FAST_GROUPS(decode_fast_f32, float, LOAD_F32, float, VF_LOAD_F32)
DEFINE_DECODE_FAST_GROUPS(decode_fast_bf16, uint16_t, bf16_to_f32, uint16_t, VF_LOAD_BF16)
DEFINE_DECODE_FAST_GROUPS(decode_fast_f32_e4m3, float, LOAD_F32, uint8_t, vf_load_e4m3)
DEFINE_DECODE_FAST_GROUPS(decode_fast_bf16_e4m3, uint16_t, bf16_to_f32, uint8_t, vf_load_e4m3)
DEFINE_DECODE_FAST_GROUPS(decode_fast_f32_bf16c, float, LOAD_F32, uint16_t, VF_LOAD_BF16)

typedef void (*decode_fast_fn)(const void *, const void *, const void *, const int64_t *, int64_t, int64_t, int64_t,
                               int64_t, int64_t, float, float, float *, float *, float *, float *);
#define FAST_TABLE(NAME) {NULL, NAME##_1, NAME##_2, NAME##_3, NAME##_4, NAME##_5, NAME##_6, NAME##_7, NAME##_8}
/* [dtype][cache_dtype][group] */
static const decode_fast_fn DECODE_FAST[2][3][9] = {
    {FAST_TABLE(decode_fast_f32), FAST_TABLE(decode_fast_f32_bf16c), FAST_TABLE(decode_fast_f32_e4m3)},
    {{NULL}, FAST_TABLE(decode_fast_bf16), FAST_TABLE(decode_fast_bf16_e4m3)},
};
#define HAVE_DECODE_FAST 1
#endif

/* out (GROUP rows of head_dim, float32 or bfloat16) = parts' weighted values over their weights' sum: `parts`
 * partial results (acc GROUP x head_dim, then state: GROUP maxima, GROUP sums), each `part_floats` apart, brought to
 * one maximum; a part without keys has sum 0. */
static void combine_parts(const float *partial, int64_t parts, int64_t part_floats, int64_t group, int64_t head_dim,
                          int dtype, void *out) {
    for (int64_t g = 0; g < group; ++g) {
        float maximum = -FLT_MAX, total = 0.0f;
        for (int64_t p = 0; p < parts; ++p) {
            const float *state = partial + p * part_floats + group * head_dim;
            if (state[group + g] > 0.0f && state[g] > maximum) maximum = state[g];
        }
        float row[head_dim];
        for (int64_t d = 0; d < head_dim; ++d) row[d] = 0.0f;
        for (int64_t p = 0; p < parts; ++p) {
            const float *acc = partial + p * part_floats, *state = acc + group * head_dim;
            if (state[group + g] == 0.0f) continue;
            const float weight = expf(state[g] - maximum);
            total += weight * state[group + g];
            for (int64_t d = 0; d < head_dim; ++d) row[d] += weight * acc[g * head_dim + d];
        }
        const float inverse = 1.0f / total;
        for (int64_t d = 0; d < head_dim; ++d) {
            if (dtype == 0)
                ((float *)out)[g * head_dim + d] = row[d] * inverse;
            else
                ((uint16_t *)out)[g * head_dim + d] = f32_to_bf16(row[d] * inverse);
        }
    }
}

/* With fewer (sequence, kv head) pairs than this many a thread, the register path splits each sequence's blocks in
 * parts, each a work item, combined at the end (flash-decoding's split-K): one sequence of a model with 3 kv heads
 * (SmolLM2) ran on one of 2 threads, and its decode at 4000 tokens of context spent ~20 of its 28 ms a token there. */
#define DECODE_ITEMS_PER_THREAD 4
/* No part shorter than this many blocks (a tile of bfloat16 keys at head_dim 64): shorter ones cost more to combine
 * than they save. */
#define DECODE_PART_BLOCKS 8

int paged_decode_attention(const void *q, const void *k_cache, const void *v_cache, void *out,
                           const int64_t *block_tables, const int64_t *seq_lens, int64_t batch,
                           int64_t num_q_heads, int64_t num_kv_heads, int64_t head_dim, int64_t block_size,
                           int64_t max_blocks, int64_t q_row_stride, float scale, int dtype, int cache_dtype,
                           int num_threads, int64_t window, float softcap) {
    const int64_t group = num_q_heads / num_kv_heads, pairs = batch * num_kv_heads;
    if ((dtype != 0 && dtype != 1) || cache_dtype < 0 || cache_dtype > 2 || DECODE_ONE[dtype][cache_dtype][0] == NULL)
        return 3;
    const size_t element = dtype == 0 ? sizeof(float) : sizeof(uint16_t);
#ifdef HAVE_DECODE_FAST
    const int fast = block_size == 16 && group <= 8 && head_dim % 16 == 0;
#else
    const int fast = 0;
#endif
    int64_t parts = 1;
    if (fast && pairs < DECODE_ITEMS_PER_THREAD * num_threads) {
        int64_t longest = 0;
        for (int64_t b = 0; b < batch; ++b) longest = seq_lens[b] > longest ? seq_lens[b] : longest;
        const int64_t blocks = (longest < max_blocks * block_size ? longest : max_blocks * block_size) / block_size;
        parts = (DECODE_ITEMS_PER_THREAD * num_threads + pairs - 1) / pairs;
        if (parts > blocks / DECODE_PART_BLOCKS) parts = blocks / DECODE_PART_BLOCKS > 1 ? blocks / DECODE_PART_BLOCKS : 1;
    }
    const int64_t part_floats = group * head_dim + 2 * group;
    float *partials = parts > 1 ? malloc(sizeof(float) * (size_t)(pairs * parts * part_floats)) : NULL;
    if (parts > 1 && partials == NULL) return 1;
    int failed = 0;
#pragma omp parallel num_threads(num_threads)
    {
#if defined(__SSE__)
        /* Flush subnormals inside the kernel only (exp of very negative scores takes a slow path); restored below. */
        const unsigned int saved_csr = _mm_getcsr();
        _mm_setcsr(saved_csr | 0x8040u);
#endif
        /* One scratch buffer per thread, sized for the longest possible sequence. */
        float *buffer = malloc(sizeof(float) * (size_t)(group * head_dim * 2 + group * max_blocks * block_size +
                                                        2 * group));
        if (buffer == NULL) failed = 1;
#pragma omp for schedule(dynamic, 1)
        for (int64_t work = 0; work < pairs * parts; ++work) {
            if (buffer == NULL) continue;
            const int64_t b = work / parts / num_kv_heads, h = work / parts % num_kv_heads;
            int64_t len = seq_lens[b];
            if (len < 1 || len > max_blocks * block_size) {
                failed = 2;
                continue;
            }
            /* qf, acc, then acc's state (a whole sequence's maxima and sums: combine_parts reads them after acc) */
            float *qf = buffer, *acc = qf + group * head_dim, *scores = acc + group * head_dim + 2 * group;
            const int64_t *table = block_tables + b * max_blocks;
            int64_t skip = 0;
            if (window > 0 && len > window) {
                /* Start at the block holding the window's first key: earlier blocks are not read at all. */
                const int64_t first = len - window, first_block = first / block_size;
                table += first_block;
                len -= first_block * block_size;
                skip = first - first_block * block_size;
            }
            const int64_t q_offset = b * q_row_stride + h * group * head_dim;
            const int64_t out_offset = (b * num_q_heads + h * group) * head_dim;
#ifdef HAVE_DECODE_FAST
            if (fast) {
                const int64_t part = work % parts, blocks = (len + 15) / 16;
                const int64_t b0 = blocks * part / parts, b1 = blocks * (part + 1) / parts;
                float *part_acc = parts > 1 ? partials + work * part_floats : acc;
                float *state = part_acc + group * head_dim;
                if (b0 == b1) { /* a short sequence among long ones: this part has no keys */
                    for (int64_t g = 0; g < group; ++g) state[group + g] = 0.0f;
                    continue;
                }
                const int64_t part_len = (len < b1 * 16 ? len : b1 * 16) - b0 * 16;
                DECODE_FAST[dtype][cache_dtype][group]((const char *)q + q_offset * element, k_cache, v_cache, table + b0,
                                                part_len, b0 == 0 ? skip : 0, h, num_kv_heads, head_dim, scale,
                                                softcap, qf, scores, part_acc, state);
                if (parts == 1)
                    combine_parts(part_acc, 1, part_floats, group, head_dim, dtype, (char *)out + out_offset * element);
                continue;
            }
#endif
            DECODE_ONE[dtype][cache_dtype][block_size == 16]((const char *)q + q_offset * element, k_cache, v_cache,
                                                      (char *)out + out_offset * element, table, len, skip, h, group,
                                                      num_kv_heads, head_dim, block_size, scale, softcap, qf, acc,
                                                      scores);
        }
        if (parts > 1) { /* after the loop's barrier: every part is done */
#pragma omp for schedule(static)
            for (int64_t pair = 0; pair < pairs; ++pair) {
                if (failed) continue;
                const int64_t b = pair / num_kv_heads, h = pair % num_kv_heads;
                combine_parts(partials + pair * parts * part_floats, parts, part_floats, group, head_dim, dtype,
                              (char *)out + ((b * num_q_heads + h * group) * head_dim) * element);
            }
        }
        free(buffer);
#if defined(__SSE__)
        _mm_setcsr(saved_csr);
#endif
    }
    free(partials);
    return failed;
}
