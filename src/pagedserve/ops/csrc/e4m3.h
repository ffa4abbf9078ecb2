/* float8 e4m3 (fn: no infinities, NaN 0x7f / 0xff) <-> float32, one value at a time; shared by the float8 KV cache
 * (layer_ops.c, paged_decode.c) and the float8 weights and activations (gemv.c). */
#ifndef PAGEDSERVE_E4M3_H
#define PAGEDSERVE_E4M3_H
#include <stdint.h>
#include <string.h>

/* float8 e4m3 (1 sign, 4 exponent bits with bias 7, 3 mantissa bits; no infinities) to float32, exactly. 0x7f/0xff
 * (NaN) is never written by the kernels (their conversions saturate). */
static inline float e4m3_to_f32(uint8_t b) {
    const uint32_t exponent = (b >> 3) & 15u, mantissa = b & 7u;
    float magnitude;
    if (exponent == 0) {
        magnitude = (float)mantissa * 0.001953125f; /* subnormal: m * 2^-9 */
    } else {
        const uint32_t bits = ((exponent + 120u) << 23) | (mantissa << 20);
        memcpy(&magnitude, &bits, sizeof bits);
    }
    return (b & 0x80u) ? -magnitude : magnitude;
}

/* float32 to float8 e4m3 (fn: no infinities) as PyTorch casts after clamping to +-448: round half to even,
 * saturating at 448; subnormals in steps of 2^-9; NaN stays NaN (0x7f). */
static inline uint8_t f32_to_e4m3(float x) {
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    const uint8_t sign = (uint8_t)((bits >> 24) & 0x80u);
    uint32_t magnitude = bits & 0x7fffffffu;
    if (magnitude > 0x7f800000u) return sign | 0x7fu;
    if (magnitude >= 0x43e00000u) return sign | 0x7eu; /* >= 448 */
    if (magnitude < 0x3c800000u) {                      /* < 2^-6: subnormal, m * 2^-9 */
        float value;
        memcpy(&value, &magnitude, sizeof value);
        const float scaled = value * 512.0f; /* exact */
        uint32_t q = (uint32_t)scaled;
        const float fraction = scaled - (float)q;
        if (fraction > 0.5f || (fraction == 0.5f && (q & 1u))) q += 1u; /* 8 is the smallest normal, 0x08 */
        return sign | (uint8_t)q;
    }
    magnitude += 0x7ffffu + ((magnitude >> 20) & 1u); /* 3 mantissa bits, half to even */
    const uint32_t code = (((magnitude >> 23) - 120u) << 3) | ((magnitude >> 20) & 7u);
    return sign | (uint8_t)(code > 0x7eu ? 0x7eu : code);
}
#endif
