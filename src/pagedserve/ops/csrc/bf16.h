/* bfloat16 <-> float32 conversions shared by the kernels (bfloat16 is stored as uint16_t). */
#ifndef PAGEDSERVE_BF16_H
#define PAGEDSERVE_BF16_H
#include <stdint.h>
#include <string.h>

static inline float bf16_to_f32(uint16_t bits16) {
    uint32_t bits = ((uint32_t)bits16) << 16;
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

/* Round to nearest even; NaN stays NaN. Branch-free, so loops calling it still vectorise. */
static inline uint16_t f32_to_bf16(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
    const uint32_t quiet_nan = (bits >> 16) | 0x40u;
    return (uint16_t)((bits & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}
#endif
