/* The epilogue of a W8A8 product (layers/ct_quant.py): acc int32 [m, n] = int8 activations x int8 weights^T, to
 * out [m, n] = acc * x_scale[row] * w_scale[column] (+ bias[column]) in float32 (dtype 0) or bfloat16 (1, rounded
 * once).
 *
 * Why in C: in PyTorch this is four passes over [m, n] (float copy, two scalings, the dtype cast), and at 256 rows x
 * 3072 columns they cost half as much as the int8 product itself (AVX-512 BF16 host, 2026-12-02).
 */
#include <stdint.h>

#include "bf16.h"

int int8_epilogue(const int32_t *acc, const float *x_scale, const float *w_scale, const float *bias, void *out,
                  int dtype, int64_t m, int64_t n, int threads) {
    if (dtype != 0 && dtype != 1) return 1;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t r = 0; r < m; ++r) {
        const int32_t *row = acc + r * n;
        const float xs = x_scale[r];
        if (dtype == 0) {
            float *o = (float *)out + r * n;
            for (int64_t c = 0; c < n; ++c) o[c] = (float)row[c] * xs * w_scale[c] + (bias != NULL ? bias[c] : 0.0f);
        } else {
            uint16_t *o = (uint16_t *)out + r * n;
            for (int64_t c = 0; c < n; ++c)
                o[c] = f32_to_bf16((float)row[c] * xs * w_scale[c] + (bias != NULL ? bias[c] : 0.0f));
        }
    }
    return 0;
}
