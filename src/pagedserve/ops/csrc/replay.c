/* Replays a recorded list of kernel calls (ops/recording.py) in one call from Python.
 *
 * Why: a decode step of the bundled model is ~300 kernel calls, and each ctypes crossing with ~10 arguments costs
 * ~5 us (measured: rms_norm on one 576-wide row, 6.1 us a call of which < 1 us is the norm): ~1.5 ms of a 14 ms
 * step. Here a call is a record: the kernel's index in REPLAY_KERNELS (ops/recording.py, same order as the enum
 * below), its pointer and integer arguments in order as int64 (NULL as 0), and its float arguments in order.
 */
#include <stdint.h>

#define REPLAY_INTS 20
#define REPLAY_FLOATS 2

typedef struct {
    int64_t kernel;
    int64_t i[REPLAY_INTS];
    float f[REPLAY_FLOATS];
} replay_call;

enum {
    K_PAGED_DECODE_ATTENTION,
    K_RMS_NORM,
    K_SILU_AND_MUL,
    K_ROTARY_NEOX,
    K_ARGMAX_ROWS,
    K_GEMV,
    K_GEMM_F32_BF16W,
    K_GGUF_GEMM,
    K_GGUF_DEQUANTIZE,
    K_WRITE_KV_CACHE,
    K_INT8_EPILOGUE,
    K_INT8_GEMM,
    K_INT8_QUANTIZE,
    K_GEMM_E4M3W,
    K_FP8_QUANTIZE,
    K_E4M3_DEQUANTIZE,
    K_SHM_ALL_REDUCE,
    K_SHM_ALL_GATHER,
    K_RMS_NORM_HEADS,
    K_LORA_DELTA,
    K_GELU_TANH_AND_MUL,
    K_GGUF_MOE,
    K_GGUF_GEMM_BF16,
    K_COUNT
};

int paged_decode_attention(const void *q, const void *k_cache, const void *v_cache, void *out,
                           const int64_t *block_tables, const int64_t *seq_lens, int64_t batch, int64_t num_q_heads,
                           int64_t num_kv_heads, int64_t head_dim, int64_t block_size, int64_t max_blocks,
                           int64_t q_row_stride, float scale, int dtype, int cache_dtype, int num_threads,
                           int64_t window, float softcap);
int rms_norm(void *x, void *residual, const void *weight, void *out, int64_t rows, int64_t hidden, float eps,
             int dtype, int threads);
int rms_norm_heads(void *x, const void *weight_a, const void *weight_b, int64_t rows, int64_t row_stride,
                   int64_t heads, int64_t split, int64_t head_dim, float eps, int dtype, int threads);
int silu_and_mul(const void *x, void *out, int64_t rows, int64_t inter, int dtype, int threads);
int gelu_tanh_and_mul(const void *x, void *out, int64_t rows, int64_t inter, int dtype, int threads);
int rotary_neox(void *x, const int64_t *positions, const float *cos_cache, const float *sin_cache, int64_t rows,
                int64_t heads, int64_t rot_dim, int64_t head_stride, int64_t row_stride, int64_t max_position,
                int dtype, int threads);
int argmax_rows(const void *logits, int64_t *out, int64_t rows, int64_t n, int dtype, int threads);
int gemv(const void *x, const void *w, const void *bias, void *out, int64_t rows, int64_t n, int64_t k, int dtype,
         int threads);
int gemm_f32_bf16w(const float *x, const uint16_t *w, const float *bias, float *out, int64_t m, int64_t n, int64_t k,
                   int threads);
int gguf_gemm(const float *x, const uint8_t *w, int qtype, const float *bias, float *out, int64_t m, int64_t n,
              int64_t k, int il, int64_t ldo, int threads);
int gguf_gemm_bf16(const uint16_t *x, const uint8_t *w, int qtype, const float *bias, float *out, int64_t m,
                   int64_t n, int64_t k, int il, int64_t ldo, int threads);
int gguf_dequantize(const uint8_t *w, int qtype, float *out, int64_t n, int64_t k, int il, int threads);
int write_kv_cache(const void *key, const void *value, void *k_cache, void *v_cache, const int64_t *slots,
                   int64_t rows, int64_t kv_heads, int64_t head_dim, int64_t block_size, int64_t row_stride,
                   int64_t num_slots, int dtype, int cache_dtype);
int int8_epilogue(const int32_t *acc, const float *x_scale, const float *w_scale, const float *bias, void *out,
                  int dtype, int64_t m, int64_t n, int threads);
int int8_gemm(const int8_t *x, const int8_t *w, int32_t *acc, int64_t m, int64_t n, int64_t k, int threads);
int int8_quantize(const void *x, int8_t *q, float *scales, int64_t m, int64_t k, int per_tensor, int dtype,
                  int threads, float static_scale);
int gemm_e4m3w(const void *x, const uint8_t *w, const float *w_scale, int64_t block_n, int64_t block_k,
               const float *bias, void *out, int64_t m, int64_t n, int64_t k, int x_dtype, int out_dtype, int threads);
int fp8_quantize(const void *x, float *out, int64_t m, int64_t k, int64_t group, int per_tensor, int dtype,
                 int threads, float static_scale);
int e4m3_dequantize(const uint8_t *w, const float *scale, int64_t block_n, int64_t block_k, float *out, int64_t n,
                    int64_t k, int threads);
int shm_all_reduce(void *region, void *x, int64_t n, int64_t capacity, int dtype, int rank, int world,
                   int64_t *seq, float timeout_s);
int lora_delta(const void *x, void *out, const float *a, const float *bt, const int32_t *ranks,
               const int32_t *slot_of_row, int64_t rows, int64_t in, int64_t out_n, int64_t out_stride,
               int64_t max_rank, int64_t slots, int dtype, int threads);
int gguf_moe(const float *x, const float *router, const float *logits, float *out, int64_t m, int64_t hidden, int64_t inter,
             int64_t experts, int64_t k, int renormalize, const int64_t *gate_up, int gate_up_type, int gate_up_il,
             const int64_t *down, int down_type, int down_il, const float *shared, const float *shared_gate_weight,
             const float *shared_gate_logits, int threads);
int shm_all_gather(void *region, const void *x, int64_t nbytes, void *out, int64_t capacity, int rank, int world,
                   int64_t *seq, float timeout_s);

#define P(j) ((void *)(intptr_t)c->i[j])

static int run_one(const replay_call *c) {
    const int64_t *i = c->i;
    switch (c->kernel) {
    case K_PAGED_DECODE_ATTENTION:
        return paged_decode_attention(P(0), P(1), P(2), P(3), P(4), P(5), i[6], i[7], i[8], i[9], i[10], i[11], i[12],
                                      c->f[0], (int)i[13], (int)i[14], (int)i[15], i[16], c->f[1]);
    case K_RMS_NORM: return rms_norm(P(0), P(1), P(2), P(3), i[4], i[5], c->f[0], (int)i[6], (int)i[7]);
    case K_SILU_AND_MUL: return silu_and_mul(P(0), P(1), i[2], i[3], (int)i[4], (int)i[5]);
    case K_GELU_TANH_AND_MUL: return gelu_tanh_and_mul(P(0), P(1), i[2], i[3], (int)i[4], (int)i[5]);
    case K_ROTARY_NEOX:
        return rotary_neox(P(0), P(1), P(2), P(3), i[4], i[5], i[6], i[7], i[8], i[9], (int)i[10], (int)i[11]);
    case K_ARGMAX_ROWS: return argmax_rows(P(0), P(1), i[2], i[3], (int)i[4], (int)i[5]);
    case K_GEMV: return gemv(P(0), P(1), P(2), P(3), i[4], i[5], i[6], (int)i[7], (int)i[8]);
    case K_GEMM_F32_BF16W: return gemm_f32_bf16w(P(0), P(1), P(2), P(3), i[4], i[5], i[6], (int)i[7]);
    case K_GGUF_GEMM:
        return gguf_gemm(P(0), P(1), (int)i[2], P(3), P(4), i[5], i[6], i[7], (int)i[8], i[9], (int)i[10]);
    case K_GGUF_GEMM_BF16:
        return gguf_gemm_bf16(P(0), P(1), (int)i[2], P(3), P(4), i[5], i[6], i[7], (int)i[8], i[9], (int)i[10]);
    case K_GGUF_DEQUANTIZE: return gguf_dequantize(P(0), (int)i[1], P(2), i[3], i[4], (int)i[5], (int)i[6]);
    case K_WRITE_KV_CACHE:
        return write_kv_cache(P(0), P(1), P(2), P(3), P(4), i[5], i[6], i[7], i[8], i[9], i[10], (int)i[11],
                              (int)i[12]);
    case K_INT8_EPILOGUE: return int8_epilogue(P(0), P(1), P(2), P(3), P(4), (int)i[5], i[6], i[7], (int)i[8]);
    case K_INT8_GEMM: return int8_gemm(P(0), P(1), P(2), i[3], i[4], i[5], (int)i[6]);
    case K_INT8_QUANTIZE:
        return int8_quantize(P(0), P(1), P(2), i[3], i[4], (int)i[5], (int)i[6], (int)i[7], c->f[0]);
    case K_GEMM_E4M3W:
        return gemm_e4m3w(P(0), P(1), P(2), i[3], i[4], P(5), P(6), i[7], i[8], i[9], (int)i[10], (int)i[11],
                          (int)i[12]);
    case K_FP8_QUANTIZE:
        return fp8_quantize(P(0), P(1), i[2], i[3], i[4], (int)i[5], (int)i[6], (int)i[7], c->f[0]);
    case K_E4M3_DEQUANTIZE: return e4m3_dequantize(P(0), P(1), i[2], i[3], P(4), i[5], i[6], (int)i[7]);
    /* Tensor parallelism: every rank replays the same calls in the same order, so the call numbers agree. */
    case K_SHM_ALL_REDUCE:
        return shm_all_reduce(P(0), P(1), i[2], i[3], (int)i[4], (int)i[5], (int)i[6], P(7), c->f[0]);
    case K_SHM_ALL_GATHER:
        return shm_all_gather(P(0), P(1), i[2], P(3), i[4], (int)i[5], (int)i[6], P(7), c->f[0]);
    case K_RMS_NORM_HEADS:
        return rms_norm_heads(P(0), P(1), P(2), i[3], i[4], i[5], i[6], i[7], c->f[0], (int)i[8], (int)i[9]);
    case K_LORA_DELTA:
        return lora_delta(P(0), P(1), P(2), P(3), P(4), P(5), i[6], i[7], i[8], i[9], i[10], i[11], (int)i[12],
                          (int)i[13]);
    case K_GGUF_MOE:
        return gguf_moe(P(0), P(1), P(2), P(3), i[4], i[5], i[6], i[7], i[8], (int)i[9], P(10), (int)i[11], (int)i[12],
                        P(13), (int)i[14], (int)i[15], P(16), P(17), P(18), (int)i[19]);
    default: return -1;
    }
}

/* 0 when every call returned 0; else 1 + the index of the first call that failed (the rest are not run). */
int replay_calls(const replay_call *calls, int64_t count) {
    for (int64_t n = 0; n < count; ++n)
        if (run_one(calls + n) != 0) return (int)n + 1;
    return 0;
}
