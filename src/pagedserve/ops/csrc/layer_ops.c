/* The small per-layer operations of a decoder step, fused: RMSNorm with the residual add, SiLU-and-multiply,
 * rotary embedding in place, and the K/V write into the paged cache.
 *
 * Why: in PyTorch each of these is several operators, and each operator is one OpenMP parallel region. At decode
 * batch sizes the work is microseconds, but every region is a barrier, and on a machine whose cores are shared
 * with an HTTP server a barrier waits for a descheduled thread. Here each operation is one call, and it only
 * goes parallel when there are enough rows to pay for it. In bfloat16 the intermediate results are rounded
 * where PyTorch's operator sequence rounds them (ROUND), so both paths agree to the last bit (which can still
 * differ where a reduction's order or expf differ): a 135M model in bfloat16 is sensitive enough that "more
 * exact" single rounding changes greedy answers.
 *
 * dtype: 0 float32, 1 bfloat16. All tensors row-major and contiguous unless a row stride is passed. The norms also
 * take 2: bfloat16 activations with a float32 weight (Gemma's 1 + weight, which bfloat16 would round).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "bf16.h"
#include "e4m3.h"

/* Rows below this run on the calling thread only (no parallel region, so no barrier). */
#define PARALLEL_MIN_ROWS 64

#define F32_LOAD(x) (x)
#define F32_STORE(x) (x)
#define F32_ROUND(x) (x)
#define BF16_ROUND(x) bf16_to_f32(f32_to_bf16(x))

/* residual (optional) += x, then out = residual_or_x * rsqrt(mean(square) + eps) * weight. */
#define DEFINE_RMS_NORM(NAME, T, LOAD, STORE, TW, LOADW)                                                          \
    static void NAME(T *x, T *residual, const TW *weight, T *out, int64_t rows, int64_t hidden, float eps,      \
                     int threads) {                                                                              \
        _Pragma("omp parallel for num_threads(threads) if (rows >= PARALLEL_MIN_ROWS) schedule(static)")         \
        for (int64_t r = 0; r < rows; ++r) {                                                                     \
            T *xr = x + r * hidden, *o = out + r * hidden;                                                       \
            const T *src = xr;                                                                                   \
            if (residual != NULL) {                                                                              \
                T *res = residual + r * hidden;                                                                  \
                /* rounded to the storage type first, as `x + residual` in PyTorch would be */                   \
                for (int64_t h = 0; h < hidden; ++h) res[h] = STORE(LOAD(xr[h]) + LOAD(res[h]));                 \
                src = res;                                                                                       \
            }                                                                                                    \
            float total = 0.0f;                                                                                  \
            _Pragma("omp simd reduction(+ : total)") for (int64_t h = 0; h < hidden; ++h) {                      \
                const float v = LOAD(src[h]);                                                                    \
                total += v * v;                                                                                  \
            }                                                                                                    \
            const float inverse = 1.0f / sqrtf(total / (float)hidden + eps);                                     \
            for (int64_t h = 0; h < hidden; ++h) o[h] = STORE(LOAD(src[h]) * inverse * LOADW(weight[h]));        \
        }                                                                                                        \
    }

DEFINE_RMS_NORM(rms_norm_f32, float, F32_LOAD, F32_STORE, float, F32_LOAD)
DEFINE_RMS_NORM(rms_norm_bf16, uint16_t, bf16_to_f32, f32_to_bf16, uint16_t, bf16_to_f32)
DEFINE_RMS_NORM(rms_norm_bf16_f32w, uint16_t, bf16_to_f32, f32_to_bf16, float, F32_LOAD)

int rms_norm(void *x, void *residual, const void *weight, void *out, int64_t rows, int64_t hidden, float eps,
             int dtype, int threads) {
    if (dtype == 0)
        rms_norm_f32(x, residual, weight, out, rows, hidden, eps, threads);
    else if (dtype == 1)
        rms_norm_bf16(x, residual, weight, out, rows, hidden, eps, threads);
    else
        rms_norm_bf16_f32w(x, residual, weight, out, rows, hidden, eps, threads);
    return 0;
}

/* In place: `rows` rows `row_stride` elements apart, each `heads` heads of `head_dim` (contiguous); heads [0, split)
 * normalised with weight_a, the others with weight_b. Qwen3's q_norm and k_norm over the q|k heads of the merged
 * projection, without copying them out (a copy and a concatenation are PyTorch operations a decode graph cannot
 * replay). */
int rms_norm_heads(void *x, const void *weight_a, const void *weight_b, int64_t rows, int64_t row_stride,
                   int64_t heads, int64_t split, int64_t head_dim, float eps, int dtype, int threads) {
    _Pragma("omp parallel for num_threads(threads) if (rows * heads >= PARALLEL_MIN_ROWS) schedule(static)")
    for (int64_t n = 0; n < rows * heads; ++n) {
        const int64_t offset = (n / heads) * row_stride + (n % heads) * head_dim;
        const void *weight = n % heads < split ? weight_a : weight_b;
        if (dtype == 0) {
            float *head = (float *)x + offset;
            rms_norm_f32(head, NULL, weight, head, 1, head_dim, eps, 1);
        } else if (dtype == 1) {
            uint16_t *head = (uint16_t *)x + offset;
            rms_norm_bf16(head, NULL, weight, head, 1, head_dim, eps, 1);
        } else {
            uint16_t *head = (uint16_t *)x + offset;
            rms_norm_bf16_f32w(head, NULL, weight, head, 1, head_dim, eps, 1);
        }
    }
    return 0;
}

/* out[r, i] = act(x[r, i]) * x[r, inter + i]  (gate | up merged in one projection): SiLU, or Gemma's GELU with
 * the tanh approximation (PyTorch's gelu(approximate="tanh")). */
#define SILU(g) ((g) / (1.0f + expf(-(g))))
#define GELU_TANH(g) (0.5f * (g) * (1.0f + tanhf(0.7978845608028654f * ((g) + 0.044715f * (g) * (g) * (g)))))
#define DEFINE_GATED_MUL(NAME, T, LOAD, STORE, ROUND, ACT)                                                        \
    static void NAME(const T *x, T *out, int64_t rows, int64_t inter, int threads) {                             \
        _Pragma("omp parallel for num_threads(threads) if (rows >= PARALLEL_MIN_ROWS) schedule(static)")         \
        for (int64_t r = 0; r < rows; ++r) {                                                                     \
            const T *gate = x + r * 2 * inter, *up = gate + inter;                                               \
            T *o = out + r * inter;                                                                              \
            _Pragma("omp simd") for (int64_t i = 0; i < inter; ++i) {                                            \
                const float g = LOAD(gate[i]);                                                                   \
                o[i] = STORE(ROUND(ACT(g)) * LOAD(up[i]));                                                       \
            }                                                                                                    \
        }                                                                                                        \
    }

DEFINE_GATED_MUL(silu_and_mul_f32, float, F32_LOAD, F32_STORE, F32_ROUND, SILU)
DEFINE_GATED_MUL(silu_and_mul_bf16, uint16_t, bf16_to_f32, f32_to_bf16, BF16_ROUND, SILU)
DEFINE_GATED_MUL(gelu_tanh_and_mul_f32, float, F32_LOAD, F32_STORE, F32_ROUND, GELU_TANH)
DEFINE_GATED_MUL(gelu_tanh_and_mul_bf16, uint16_t, bf16_to_f32, f32_to_bf16, BF16_ROUND, GELU_TANH)

int silu_and_mul(const void *x, void *out, int64_t rows, int64_t inter, int dtype, int threads) {
    if (dtype == 0)
        silu_and_mul_f32(x, out, rows, inter, threads);
    else
        silu_and_mul_bf16(x, out, rows, inter, threads);
    return 0;
}

int gelu_tanh_and_mul(const void *x, void *out, int64_t rows, int64_t inter, int dtype, int threads) {
    if (dtype == 0)
        gelu_tanh_and_mul_f32(x, out, rows, inter, threads);
    else
        gelu_tanh_and_mul_bf16(x, out, rows, inter, threads);
    return 0;
}

/* In place on the first `rot_dim` values of the first `heads` heads of each row ("rotate half" layout; heads are
 * `head_stride` apart, so rot_dim < head_stride leaves the rest of a head as it is: partial rotary, Phi-4-mini): with
 * c, s the cached cos and sin of the row's position, x1' = x1 c - x2 s and x2' = x2 c + x1 s (each product rounded,
 * as PyTorch does). cos/sin caches: float32 [max_position, rot_dim]. */
#define DEFINE_ROTARY(NAME, T, LOAD, STORE, ROUND)                                                                       \
    static int NAME(T *x, const int64_t *positions, const float *cos_cache, const float *sin_cache, int64_t rows, \
                    int64_t heads, int64_t rot_dim, int64_t head_stride, int64_t row_stride, int64_t max_position, \
                    int threads) {                                                                               \
        const int64_t half = rot_dim / 2;                                                                       \
        int bad = 0;                                                                                             \
        _Pragma("omp parallel for num_threads(threads) if (rows >= PARALLEL_MIN_ROWS) schedule(static)")         \
        for (int64_t r = 0; r < rows; ++r) {                                                                     \
            const int64_t position = positions[r];                                                               \
            if (position < 0 || position >= max_position) {                                                     \
                bad = 1;                                                                                         \
                continue;                                                                                        \
            }                                                                                                    \
            const float *c = cos_cache + position * rot_dim, *s = sin_cache + position * rot_dim;                \
            for (int64_t h = 0; h < heads; ++h) {                                                                \
                T *v = x + r * row_stride + h * head_stride;                                                     \
                _Pragma("omp simd") for (int64_t i = 0; i < half; ++i) {                                         \
                    const float a = LOAD(v[i]), b = LOAD(v[i + half]);                                           \
                    const float c1 = ROUND(c[i]), s1 = ROUND(s[i]);                                              \
                    const float c2 = ROUND(c[i + half]), s2 = ROUND(s[i + half]);                                \
                    v[i] = STORE(ROUND(a * c1) + ROUND(-b * s1));                                                \
                    v[i + half] = STORE(ROUND(b * c2) + ROUND(a * s2));                                          \
                }                                                                                                \
            }                                                                                                    \
        }                                                                                                        \
        return bad;                                                                                              \
    }

DEFINE_ROTARY(rotary_f32, float, F32_LOAD, F32_STORE, F32_ROUND)
DEFINE_ROTARY(rotary_bf16, uint16_t, bf16_to_f32, f32_to_bf16, BF16_ROUND)

int rotary_neox(void *x, const int64_t *positions, const float *cos_cache, const float *sin_cache, int64_t rows,
                int64_t heads, int64_t rot_dim, int64_t head_stride, int64_t row_stride, int64_t max_position,
                int dtype, int threads) {
    if (dtype == 0)
        return rotary_f32(x, positions, cos_cache, sin_cache, rows, heads, rot_dim, head_stride, row_stride,
                          max_position, threads);
    return rotary_bf16(x, positions, cos_cache, sin_cache, rows, heads, rot_dim, head_stride, row_stride,
                       max_position, threads);
}

/* Scatter each row's K and V heads to its slot (block = slot / block_size). Cache layouts as attention/backend.py:
 * k_cache [blocks, kv_heads, head_dim, block_size] (keys transposed per block), v_cache [blocks, kv_heads,
 * block_size, head_dim]. key/value rows are `row_stride` elements apart (views into the merged qkv projection). */
#define DEFINE_WRITE_KV(NAME, T)                                                                                  \
    static int NAME(const T *key, const T *value, T *k_cache, T *v_cache, const int64_t *slots, int64_t rows,    \
                    int64_t kv_heads, int64_t head_dim, int64_t block_size, int64_t row_stride,                  \
                    int64_t num_slots) {                                                                         \
        for (int64_t r = 0; r < rows; ++r) {                                                                     \
            const int64_t slot = slots[r];                                                                       \
            if (slot < 0 || slot >= num_slots) return 1;                                                         \
            const int64_t block = slot / block_size, offset = slot % block_size;                                 \
            for (int64_t h = 0; h < kv_heads; ++h) {                                                             \
                const T *k = key + r * row_stride + h * head_dim;                                                \
                T *kd = k_cache + (block * kv_heads + h) * head_dim * block_size + offset;                       \
                for (int64_t d = 0; d < head_dim; ++d) kd[d * block_size] = k[d];                                \
                memcpy(v_cache + ((block * kv_heads + h) * block_size + offset) * head_dim,                      \
                       value + r * row_stride + h * head_dim, sizeof(T) * (size_t)head_dim);                     \
            }                                                                                                    \
        }                                                                                                        \
        return 0;                                                                                                \
    }

DEFINE_WRITE_KV(write_kv_f32, float)
DEFINE_WRITE_KV(write_kv_bf16, uint16_t)

/* The same scatter into a cache of another dtype, each element converted by STOREC after LOAD widened it to
 * float32: float8 e4m3 caches (--kv-cache-dtype fp8, scale 1) and bfloat16 caches under float32 activations. */
#define DEFINE_WRITE_KV_CONVERTED(NAME, T, LOAD, TC, STOREC)                                                      \
    static int NAME(const T *key, const T *value, TC *k_cache, TC *v_cache, const int64_t *slots, int64_t rows,  \
                    int64_t kv_heads, int64_t head_dim, int64_t block_size, int64_t row_stride,                  \
                    int64_t num_slots) {                                                                         \
        for (int64_t r = 0; r < rows; ++r) {                                                                     \
            const int64_t slot = slots[r];                                                                       \
            if (slot < 0 || slot >= num_slots) return 1;                                                         \
            const int64_t block = slot / block_size, offset = slot % block_size;                                 \
            for (int64_t h = 0; h < kv_heads; ++h) {                                                             \
                const T *k = key + r * row_stride + h * head_dim, *v = value + r * row_stride + h * head_dim;    \
                TC *kd = k_cache + (block * kv_heads + h) * head_dim * block_size + offset;                      \
                TC *vd = v_cache + ((block * kv_heads + h) * block_size + offset) * head_dim;                    \
                for (int64_t d = 0; d < head_dim; ++d) {                                                         \
                    kd[d * block_size] = STOREC(LOAD(k[d]));                                                     \
                    vd[d] = STOREC(LOAD(v[d]));                                                                  \
                }                                                                                                \
            }                                                                                                    \
        }                                                                                                        \
        return 0;                                                                                                \
    }
#define LOAD_AS_IS(x) (x)
DEFINE_WRITE_KV_CONVERTED(write_kv_f32_e4m3, float, LOAD_AS_IS, uint8_t, f32_to_e4m3)
DEFINE_WRITE_KV_CONVERTED(write_kv_bf16_e4m3, uint16_t, bf16_to_f32, uint8_t, f32_to_e4m3)
DEFINE_WRITE_KV_CONVERTED(write_kv_f32_bf16, float, LOAD_AS_IS, uint16_t, f32_to_bf16)

/* dtype: key/value's (0 float32, 1 bfloat16); cache_dtype: the same code, 2 for float8 e4m3 caches, or 1 (a
 * bfloat16 cache) under float32 key/value: 2 unsupported pairs. */
int write_kv_cache(const void *key, const void *value, void *k_cache, void *v_cache, const int64_t *slots,
                   int64_t rows, int64_t kv_heads, int64_t head_dim, int64_t block_size, int64_t row_stride,
                   int64_t num_slots, int dtype, int cache_dtype) {
    if (cache_dtype == 2)
        return (dtype == 0 ? write_kv_f32_e4m3((const float *)key, (const float *)value, k_cache, v_cache, slots,
                                               rows, kv_heads, head_dim, block_size, row_stride, num_slots)
                           : write_kv_bf16_e4m3((const uint16_t *)key, (const uint16_t *)value, k_cache, v_cache,
                                                slots, rows, kv_heads, head_dim, block_size, row_stride, num_slots));
    if (dtype == 0 && cache_dtype == 1)
        return write_kv_f32_bf16((const float *)key, (const float *)value, k_cache, v_cache, slots, rows, kv_heads,
                                 head_dim, block_size, row_stride, num_slots);
    if (cache_dtype != dtype) return 2;
    if (dtype == 0)
        return write_kv_f32(key, value, k_cache, v_cache, slots, rows, kv_heads, head_dim, block_size, row_stride,
                            num_slots);
    return write_kv_bf16(key, value, k_cache, v_cache, slots, rows, kv_heads, head_dim, block_size, row_stride,
                         num_slots);
}
