/* SHA-256 block function using the x86 SHA extensions (SHA-NI).
 * Compiled with a target attribute so the rest of the core stays portable;
 * chosen at run time only when CPUID reports SHA, SSSE3 and SSE4.1. */
#include <stdint.h>
#include <stddef.h>
#include "rh_sha256_impl.h"

#if defined(RH_HAVE_SHANI)
#include <cpuid.h>
#include <immintrin.h>

int rh_sha256_shani_supported(void) {
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return 0;
    if (!(c & (1u << 9)) || !(c & (1u << 19)))   /* SSSE3, SSE4.1 */
        return 0;
    if (__get_cpuid_max(0, 0) < 7)
        return 0;
    __cpuid_count(7, 0, a, b, c, d);
    return (b >> 29) & 1;                          /* SHA */
}

static const uint32_t KS[64] __attribute__((aligned(16))) = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1,
    0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3,
    0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
    0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147,
    0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
    0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
    0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
    0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

__attribute__((target("sha,ssse3,sse4.1")))
void rh_sha256_blocks_shani(uint32_t h[8], const uint8_t *p, size_t nblocks) {
    const __m128i mask = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i st0, st1, tmp, msg, abef, cdgh, m[4];
    int i;

    tmp = _mm_loadu_si128((const __m128i *)&h[0]);
    st1 = _mm_loadu_si128((const __m128i *)&h[4]);
    tmp = _mm_shuffle_epi32(tmp, 0xB1);           /* CDAB */
    st1 = _mm_shuffle_epi32(st1, 0x1B);           /* EFGH */
    st0 = _mm_alignr_epi8(tmp, st1, 8);           /* ABEF */
    st1 = _mm_blend_epi16(st1, tmp, 0xF0);        /* CDGH */

    while (nblocks--) {
        abef = st0;
        cdgh = st1;
        m[0] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 0)), mask);
        m[1] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16)), mask);
        m[2] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 32)), mask);
        m[3] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 48)), mask);
        /* 16 groups of 4 rounds; the message schedule for group j >= 4 is
         * begun (msg1) at group j-3 and finished (msg2) at group j-1. */
#pragma GCC unroll 16
        for (i = 0; i < 16; i++) {
            __m128i cur = m[i & 3];
            msg = _mm_add_epi32(cur, _mm_load_si128((const __m128i *)&KS[4 * i]));
            st1 = _mm_sha256rnds2_epu32(st1, st0, msg);
            if (i >= 3 && i < 15) {
                tmp = _mm_alignr_epi8(cur, m[(i + 3) & 3], 4);
                m[(i + 1) & 3] = _mm_add_epi32(m[(i + 1) & 3], tmp);
                m[(i + 1) & 3] = _mm_sha256msg2_epu32(m[(i + 1) & 3], cur);
            }
            msg = _mm_shuffle_epi32(msg, 0x0E);
            st0 = _mm_sha256rnds2_epu32(st0, st1, msg);
            if (i >= 1 && i < 13)
                m[(i + 3) & 3] = _mm_sha256msg1_epu32(m[(i + 3) & 3], cur);
        }
        st0 = _mm_add_epi32(st0, abef);
        st1 = _mm_add_epi32(st1, cdgh);
        p += 64;
    }

    tmp = _mm_shuffle_epi32(st0, 0x1B);           /* FEBA */
    st1 = _mm_shuffle_epi32(st1, 0xB1);           /* DCHG */
    st0 = _mm_blend_epi16(tmp, st1, 0xF0);        /* DCBA */
    st1 = _mm_alignr_epi8(st1, tmp, 8);           /* ABEF */
    _mm_storeu_si128((__m128i *)&h[0], st0);
    _mm_storeu_si128((__m128i *)&h[4], st1);
}
#endif
