/* One float32 vector type for the kernels, whatever the ISA level the library is compiled for (ops/build.py):
 * AVX-512 (16 lanes) or AVX2 + FMA (8 lanes). Without either, PAGEDSERVE_SIMD is undefined and the kernels use
 * their plain loops (which the compiler vectorises for the baseline, SSE2 or NEON).
 *
 *   vf_zero() vf_set1(x) vf_load(p) vf_store(p, v) vf_mul(a, b) vf_fma(a, b, acc) = a * b + acc,
 *   vf_sum(v) = horizontal sum
 *   vf_load_bf16(p): VF_LANES bfloat16 values (uint16_t) widened to float32 (exact: a 16-bit shift)
 *   vf_load_e4m3(p): VF_LANES float8 e4m3 bytes widened to float32 (exact: the bits placed in a float16 whose
 *                    exponent is 8 too small, converted by F16C, which handles subnormals whatever MXCSR's DAZ
 *                    says, then times 2^8)
 *   prefetch_t0(p), prefetch_t1(p): software prefetch into L1 / L2 (x86 only; no-ops elsewhere)
 *   PAGEDSERVE_PANELS: defined where panel_gemm.c's 256-bit panel kernels build (AVX2 + FMA, so the AVX-512
 *                      levels too)
 */
#ifndef PAGEDSERVE_SIMD_H
#define PAGEDSERVE_SIMD_H
#include <stdint.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define prefetch_t0(p) _mm_prefetch((const char *)(p), _MM_HINT_T0)
#define prefetch_t1(p) _mm_prefetch((const char *)(p), _MM_HINT_T1)
#else
#define prefetch_t0(p) ((void)(p))
#define prefetch_t1(p) ((void)(p))
#endif

#if defined(__AVX2__)
/* Eight bfloat16 values widened to float32 (exact: a 16-bit shift), at every level with AVX2. */
static inline __m256 load8_bf16(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__)
#define PAGEDSERVE_SIMD 1
#define VF_LANES 16
typedef __m512 vf;
#define vf_zero() _mm512_setzero_ps()
#define vf_set1(x) _mm512_set1_ps(x)
#define vf_load(p) _mm512_loadu_ps(p)
#define vf_store(p, v) _mm512_storeu_ps((p), (v))
#define vf_fma(a, b, acc) _mm512_fmadd_ps((a), (b), (acc))
#define vf_mul(a, b) _mm512_mul_ps((a), (b))
#define vf_sum(v) _mm512_reduce_add_ps(v)
static inline vf vf_load_bf16(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}
static inline vf vf_load_e4m3(const uint8_t *p) {
    const __m256i bytes = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)p));
    const __m256i half = _mm256_or_si256(_mm256_slli_epi16(_mm256_and_si256(bytes, _mm256_set1_epi16(0x7f)), 7),
                                         _mm256_slli_epi16(_mm256_and_si256(bytes, _mm256_set1_epi16(0x80)), 8));
    return _mm512_mul_ps(_mm512_cvtph_ps(half), _mm512_set1_ps(256.0f));
}
#elif defined(__AVX2__) && defined(__FMA__)
#define PAGEDSERVE_SIMD 1
#define VF_LANES 8
typedef __m256 vf;
#define vf_zero() _mm256_setzero_ps()
#define vf_set1(x) _mm256_set1_ps(x)
#define vf_load(p) _mm256_loadu_ps(p)
#define vf_store(p, v) _mm256_storeu_ps((p), (v))
#define vf_fma(a, b, acc) _mm256_fmadd_ps((a), (b), (acc))
#define vf_mul(a, b) _mm256_mul_ps((a), (b))
static inline float vf_sum(vf v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}
static inline vf vf_load_bf16(const uint16_t *p) { return load8_bf16(p); }
static inline vf vf_load_e4m3(const uint8_t *p) {
    const __m128i bytes = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)p));
    const __m128i half = _mm_or_si128(_mm_slli_epi16(_mm_and_si128(bytes, _mm_set1_epi16(0x7f)), 7),
                                      _mm_slli_epi16(_mm_and_si128(bytes, _mm_set1_epi16(0x80)), 8));
    return _mm256_mul_ps(_mm256_cvtph_ps(half), _mm256_set1_ps(256.0f));
}
#endif

#if defined(__AVX2__) && defined(__FMA__)
#define PAGEDSERVE_PANELS 1
#endif

#ifdef PAGEDSERVE_SIMD
/* Loads of either storage type, for kernels written once for float32 and bfloat16 storage. */
#define VF_LOAD_F32(p) vf_load(p)
#define VF_LOAD_BF16(p) vf_load_bf16(p)
#endif
#endif
