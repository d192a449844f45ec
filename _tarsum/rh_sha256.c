/* Resumable SHA-256: portable block function, buffering, Go-compatible
 * state marshalling, and run-time dispatch to the SHA-NI block function.
 * No allocation, no I/O, no Python. */
#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include "rh_sha256.h"
#include "rh_sha256_impl.h"

static const uint32_t K[64] = {
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

static const uint32_t H0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                               0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static inline uint32_t load_be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
           ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static inline void store_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);  p[3] = (uint8_t)v;
}

static inline void store_be64(uint8_t *p, uint64_t v) {
    store_be32(p, (uint32_t)(v >> 32));
    store_be32(p + 4, (uint32_t)v);
}

static inline uint64_t load_be64(const uint8_t *p) {
    return ((uint64_t)load_be32(p) << 32) | load_be32(p + 4);
}

/* Portable block function: processes nblocks 64-byte blocks. */
void rh_sha256_blocks_portable(uint32_t h[8], const uint8_t *p, size_t nblocks) {
    uint32_t w[64];
    while (nblocks--) {
        uint32_t a = h[0], b = h[1], c = h[2], d = h[3];
        uint32_t e = h[4], f = h[5], g = h[6], hh = h[7];
        int i;
        for (i = 0; i < 16; i++)
            w[i] = load_be32(p + 4 * i);
        for (i = 16; i < 64; i++) {
            uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
            uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16] + s0 + w[i - 7] + s1;
        }
        for (i = 0; i < 64; i++) {
            uint32_t S1 = ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25);
            uint32_t ch = (e & f) ^ (~e & g);
            uint32_t t1 = hh + S1 + ch + K[i] + w[i];
            uint32_t S0 = ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22);
            uint32_t mj = (a & b) ^ (a & c) ^ (b & c);
            uint32_t t2 = S0 + mj;
            hh = g; g = f; f = e; e = d + t1;
            d = c; c = b; b = a; a = t1 + t2;
        }
        h[0] += a; h[1] += b; h[2] += c; h[3] += d;
        h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
        p += 64;
    }
}

typedef void (*blocks_fn)(uint32_t h[8], const uint8_t *p, size_t nblocks);

static blocks_fn active_blocks = 0;
static int active_impl = 0;

/* CPUID traps to the hypervisor on a VM (microseconds), so ask once.
 * Racing first callers compute and store the same value. */
static int has_shani = -1;

int rh_sha256_cpu_has_shani(void) {
#if defined(RH_HAVE_SHANI)
    if (has_shani < 0)
        has_shani = rh_sha256_shani_supported();
    return has_shani;
#else
    return 0;
#endif
}

int rh_sha256_set_impl(int impl) {
    if (impl == RH_SHA256_IMPL_AUTO)
        impl = rh_sha256_cpu_has_shani() ? RH_SHA256_IMPL_SHANI : RH_SHA256_IMPL_PORTABLE;
    if (impl == RH_SHA256_IMPL_PORTABLE) {
        active_blocks = rh_sha256_blocks_portable;
        active_impl = impl;
        return impl;
    }
#if defined(RH_HAVE_SHANI)
    if (impl == RH_SHA256_IMPL_SHANI && rh_sha256_cpu_has_shani()) {
        active_blocks = rh_sha256_blocks_shani;
        active_impl = impl;
        return impl;
    }
#endif
    return -1;
}

int rh_sha256_get_impl(void) {
    if (!active_blocks)
        rh_sha256_set_impl(RH_SHA256_IMPL_AUTO);
    return active_impl;
}

void rh_sha256_blocks(uint32_t h[8], const uint8_t *p, size_t nblocks) {
    if (!active_blocks)
        rh_sha256_set_impl(RH_SHA256_IMPL_AUTO);
    active_blocks(h, p, nblocks);
}

void rh_sha256_init(rh_sha256_ctx *ctx) {
    memcpy(ctx->h, H0, sizeof H0);
    memset(ctx->buf, 0, sizeof ctx->buf);
    ctx->len = 0;
}

void rh_sha256_update(rh_sha256_ctx *ctx, const uint8_t *data, size_t n) {
    size_t used = (size_t)(ctx->len & 63);
    if (n == 0)                    /* data may be NULL then (an empty buffer) */
        return;
    ctx->len += n;
    if (used) {
        size_t take = 64 - used;
        if (take > n) {
            memcpy(ctx->buf + used, data, n);
            return;
        }
        memcpy(ctx->buf + used, data, take);
        rh_sha256_blocks(ctx->h, ctx->buf, 1);
        data += take;
        n -= take;
    }
    if (n >= 64) {
        size_t nb = n / 64;
        rh_sha256_blocks(ctx->h, data, nb);
        data += nb * 64;
        n -= nb * 64;
    }
    /* Keep the unused tail of buf zeroed so marshal needs no masking. */
    memset(ctx->buf, 0, sizeof ctx->buf);
    if (n)
        memcpy(ctx->buf, data, n);
}

void rh_sha256_final(const rh_sha256_ctx *ctx, uint8_t *out32) {
    uint32_t h[8];
    uint8_t block[128];
    size_t used = (size_t)(ctx->len & 63);
    size_t total = used + 1 + 8 <= 64 ? 64 : 128;
    int i;
    memcpy(h, ctx->h, sizeof h);
    memset(block, 0, sizeof block);
    memcpy(block, ctx->buf, used);
    block[used] = 0x80;
    store_be64(block + total - 8, ctx->len * 8);
    rh_sha256_blocks(h, block, total / 64);
    for (i = 0; i < 8; i++)
        store_be32(out32 + 4 * i, h[i]);
}

void rh_sha256_marshal(const rh_sha256_ctx *ctx, uint8_t *out) {
    size_t used = (size_t)(ctx->len & 63);
    int i;
    out[0] = 's'; out[1] = 'h'; out[2] = 'a'; out[3] = 0x03;
    for (i = 0; i < 8; i++)
        store_be32(out + 4 + 4 * i, ctx->h[i]);
    memset(out + 36, 0, 64);
    memcpy(out + 36, ctx->buf, used);
    store_be64(out + 100, ctx->len);
}

int rh_sha256_unmarshal(rh_sha256_ctx *ctx, const uint8_t *in, size_t n) {
    uint64_t len;
    size_t used, i;
    if (n != RH_SHA256_STATE_SIZE)
        return RH_SHA256_E_LENGTH;
    if (in[0] != 's' || in[1] != 'h' || in[2] != 'a' || in[3] != 0x03)
        return RH_SHA256_E_MAGIC;
    len = load_be64(in + 100);
    if (len >> 61)                 /* len * 8 must fit the 64-bit length */
        return RH_SHA256_E_TOO_LONG;
    used = (size_t)(len & 63);
    for (i = used; i < 64; i++)
        if (in[36 + i] != 0)
            return RH_SHA256_E_INCONSISTENT;
    for (i = 0; i < 8; i++)
        ctx->h[i] = load_be32(in + 4 + 4 * i);
    memcpy(ctx->buf, in + 36, 64);
    ctx->len = len;
    return 0;
}
