// fp32 -> bf16 rounding in vector registers, as torch rounds (c10::BFloat16 / at::vec): add 0x7fff
// plus the kept part's lowest bit, keep the high half; integer arithmetic, so subnormals are not
// flushed (the AVX512-BF16 conversion instruction treats them as zero); NaN -> 0x7fc0. The scalar
// form is cpu_common.hpp's to_bf16_bits. Internal; include after amx_tiles.hpp (immintrin.h).
#pragma once

#include "amx_tiles.hpp"

#if SK_HAVE_AMX_CODE
namespace sk {

// 16 fp32 -> 16 bf16 in the low halves of the 32-bit lanes.
__attribute__((target("avx512f,avx512bw"))) inline __m512i round16_bf16(__m512 v) {
  const __m512i b = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
  const __m512i bias = _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff));
  const __m512i r = _mm512_srli_epi32(_mm512_add_epi32(b, bias), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  return _mm512_mask_blend_epi32(nan, r, _mm512_set1_epi32(0x7fc0));
}

// 8 fp32 -> 8 bf16 in the low halves of the 32-bit lanes (AVX2).
__attribute__((target("avx2"))) inline __m256i round8_bf16(__m256 v) {
  const __m256i b = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
  const __m256i bias = _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff));
  const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(b, bias), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  return _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7fc0), nan);
}

}  // namespace sk
#endif
