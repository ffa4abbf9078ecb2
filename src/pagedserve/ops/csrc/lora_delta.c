/* LoRA on a decode step: out[r] += B_s (A_s x[r]) for each row r whose adapter sits in slot s = slot_of_row[r]
 * (-1: no adapter), the adapters' matrices read from fixed slots (punica's layout).
 *
 * Why: the CPU decode graphs replay recorded kernel calls (ops/recording.py), and a call records pointers. With the
 * adapters in fixed slots and the rows' slots in a fixed buffer, the recorded call stays right whichever adapters
 * the next step runs, so a step with adapters keeps its graph (eager, single-stream decode ran at 0.47x of the
 * graph's speed, BENCHMARKS.md).
 *
 * a: [slots, max_rank, in] float32, bt: [slots, max_rank, out] float32 (B transposed, the scaling folded in),
 * ranks: [slots] int32, the rows of a / bt in use for each slot (the rest is never read). x: [rows, in] and
 * out: [rows, out_stride] in dtype (0 float32, 1 bfloat16, out rounded once). A row's work is rank * (in + out)
 * multiply-adds (~74k for the bundled model's q|k|v at rank 16): rows go parallel from PARALLEL_MIN_ROWS.
 */
#include <stdint.h>
#include <stdlib.h>

#include "bf16.h"

#define PARALLEL_MIN_ROWS 4
#define MAX_STACKED_RANK 1024

static inline float load_x(const void *x, int64_t i, int dtype) {
    return dtype == 0 ? ((const float *)x)[i] : bf16_to_f32(((const uint16_t *)x)[i]);
}

int lora_delta(const void *x, void *out, const float *a, const float *bt, const int32_t *ranks,
               const int32_t *slot_of_row, int64_t rows, int64_t in, int64_t out_n, int64_t out_stride,
               int64_t max_rank, int64_t slots, int dtype, int threads) {
    if (max_rank > MAX_STACKED_RANK || (dtype != 0 && dtype != 1)) return 2;
    int failed = 0;
#pragma omp parallel for num_threads(threads) if (rows >= PARALLEL_MIN_ROWS) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
        const int32_t s = slot_of_row[r];
        if (s < 0) continue;
        if (s >= slots || ranks[s] > max_rank) {
            failed = 2;
            continue;
        }
        const int64_t rank = ranks[s];
        const float *as = a + s * max_rank * in;
        const float *bs = bt + s * max_rank * out_n;
        float t[MAX_STACKED_RANK];
        if (dtype == 0) {
            const float *xr = (const float *)x + r * in;
            for (int64_t k = 0; k < rank; ++k) {
                float sum = 0.0f;
                const float *ak = as + k * in;
                for (int64_t i = 0; i < in; ++i) sum += ak[i] * xr[i];
                t[k] = sum;
            }
            float *o = (float *)out + r * out_stride;
            for (int64_t k = 0; k < rank; ++k) {
                const float tk = t[k];
                const float *bk = bs + k * out_n;
                for (int64_t j = 0; j < out_n; ++j) o[j] += tk * bk[j];
            }
        } else {
            float *xr = malloc(sizeof(float) * (size_t)(in > out_n ? in : out_n));
            if (xr == NULL) {
                failed = 1;
                continue;
            }
            for (int64_t i = 0; i < in; ++i) xr[i] = load_x(x, r * in + i, 1);
            for (int64_t k = 0; k < rank; ++k) {
                float sum = 0.0f;
                const float *ak = as + k * in;
                for (int64_t i = 0; i < in; ++i) sum += ak[i] * xr[i];
                t[k] = sum;
            }
            float *delta = xr; /* x is read: reuse its buffer for the row's delta */
            for (int64_t j = 0; j < out_n; ++j) delta[j] = 0.0f;
            for (int64_t k = 0; k < rank; ++k) {
                const float tk = t[k];
                const float *bk = bs + k * out_n;
                for (int64_t j = 0; j < out_n; ++j) delta[j] += tk * bk[j];
            }
            uint16_t *o = (uint16_t *)out + r * out_stride;
            for (int64_t j = 0; j < out_n; ++j) o[j] = f32_to_bf16(bf16_to_f32(o[j]) + delta[j]);
            free(xr);
        }
    }
    return failed;
}
