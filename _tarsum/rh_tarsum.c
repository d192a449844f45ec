/* Incremental tarsum: block framing, the plain-header fast path, body
 * hashing, and state export/import.  No allocation, no I/O, no Python.
 * See rh_tarsum.h for the contract and registry/tarsum.py for the caller. */
#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include "rh_sha256.h"
#include "rh_tarsum.h"
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define BLOCK 512u

static void put_be16(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v;
}
static void put_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);  p[3] = (uint8_t)v;
}
static void put_be64(uint8_t *p, uint64_t v) {
    put_be32(p, (uint32_t)(v >> 32)); put_be32(p + 4, (uint32_t)v);
}
static uint32_t get_be16(const uint8_t *p) {
    return ((uint32_t)p[0] << 8) | p[1];
}
static uint32_t get_be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static uint64_t get_be64(const uint8_t *p) {
    return ((uint64_t)get_be32(p) << 32) | get_be32(p + 4);
}

static uint32_t pad_for(uint64_t size) {
    return (uint32_t)((BLOCK - (uint32_t)(size % BLOCK)) % BLOCK);
}

/* A numeric field in the plain form: optional spaces/NULs, octal digits,
 * optional spaces/NULs.  Anything else (base-256, embedded junk) returns -1
 * and the caller's full parser decides.  At most 12 digits: no overflow. */
static int plain_octal(const uint8_t *p, size_t n, uint64_t *out) {
    size_t i = 0;
    uint64_t v = 0;
    while (i < n && (p[i] == ' ' || p[i] == 0)) i++;
    while (i < n && p[i] >= '0' && p[i] <= '7') v = (v << 3) | (uint64_t)(p[i++] - '0');
    while (i < n && (p[i] == ' ' || p[i] == 0)) i++;
    if (i != n) return -1;
    *out = v;
    return 0;
}

static size_t cstr_len(const uint8_t *p, size_t n) {
    const uint8_t *z = memchr(p, 0, n);
    return z ? (size_t)(z - p) : n;
}

static size_t put_str(uint8_t *o, const char *s) {
    size_t n = strlen(s);
    memcpy(o, s, n);
    return n;
}

static size_t put_dec(uint8_t *o, uint64_t v) {
    char tmp[24];
    size_t n = 0, i;
    do { tmp[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    for (i = 0; i < n; i++) o[i] = (uint8_t)tmp[n - 1 - i];
    return n;
}

/* Sums of a header block for its checksum: *usum over all 512 bytes as
 * unsigned, *high the number of bytes with the top bit set. */
static void block_sums(const uint8_t *h, uint32_t *usum, uint32_t *high) {
#if defined(__SSE2__)
    /* psadbw adds eight bytes at a time; (byte >> 7) & 1 counts top bits. */
    const __m128i zero = _mm_setzero_si128(), one = _mm_set1_epi8(1);
    __m128i s = zero, t = zero;
    size_t i;
    for (i = 0; i < BLOCK; i += 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)(const void *)(h + i));
        s = _mm_add_epi64(s, _mm_sad_epu8(x, zero));
        t = _mm_add_epi64(t, _mm_sad_epu8(_mm_and_si128(_mm_srli_epi16(x, 7), one), zero));
    }
    *usum = (uint32_t)(_mm_cvtsi128_si32(s) + _mm_cvtsi128_si32(_mm_srli_si128(s, 8)));
    *high = (uint32_t)(_mm_cvtsi128_si32(t) + _mm_cvtsi128_si32(_mm_srli_si128(t, 8)));
#else
    uint32_t u = 0, k = 0;
    size_t i;
    for (i = 0; i < BLOCK; i++) {
        u += h[i];
        k += h[i] >> 7;
    }
    *usum = u;
    *high = k;
#endif
}

/* moby's path.Join(".", path.Join("/", name)) of in[0..n) into out (room
 * for max(n, 1) bytes): empty and "." components dropped, ".." drops the
 * previous one, "." if nothing is left.  Returns the length written.  Each
 * byte written matches an input byte already read, so o <= i <= n. */
static size_t clean_name(const uint8_t *in, size_t n, uint8_t *out) {
    size_t i = 0, o = 0;
    while (i < n) {
        size_t j = i, len;
        while (j < n && in[j] != '/') j++;
        len = j - i;
        if (len == 2 && in[i] == '.' && in[i + 1] == '.') {
            while (o > 0 && out[o - 1] != '/') o--;
            if (o > 0) o--;
        } else if (len > 1 || (len == 1 && in[i] != '.')) {
            if (o > 0) out[o++] = '/';
            memcpy(out + o, in + i, len);
            o += len;
        }
        i = j + 1;
    }
    if (o == 0) out[o++] = '.';
    return o;
}

/* Handle the header block h (in ctx->hdr, or in place in the caller's data)
 * if it is a plain ustar or GNU header of an ordinary entry: hash its fields
 * and set up the body.  Returns 1 if handled, 0 to hand the header to the
 * caller.  The caller guarantees a free slot in sums. */
static int fast_header(rh_tarsum_ctx *ctx, const uint8_t *h) {
    uint64_t chk, mode, uid, gid, size, mtime, dmaj, dmin, body;
    uint32_t usum, high;
    int64_t ssum;
    int ustar;
    size_t i, nlen, plen = 0, llen;
    uint8_t f[800];
    size_t o = 0;
    uint8_t type = h[156];

    if (type < '0' || type > '7')
        return 0;
    if (memcmp(h + 257, "ustar\0", 6) == 0 && memcmp(h + 508, "tar\0", 4) != 0)
        ustar = 1;
    else if (memcmp(h + 257, "ustar  \0", 8) == 0 && h[345] == 0 && h[357] == 0)
        ustar = 0;
    else
        return 0;
    if (plain_octal(h + 148, 8, &chk)) return 0;
    /* The checksum field counts as eight spaces.  Summed as unsigned bytes
     * and as signed ones (old writers): a signed byte is 256 less when the
     * top bit is set. */
    block_sums(h, &usum, &high);
    for (i = 148; i < 156; i++) {
        usum -= h[i];
        high -= h[i] >> 7;
    }
    usum += 8u * ' ';
    ssum = (int64_t)usum - 256 * (int64_t)high;
    if (chk != usum && (int64_t)chk != ssum) return 0;
    if (plain_octal(h + 100, 8, &mode) || plain_octal(h + 108, 8, &uid) ||
        plain_octal(h + 116, 8, &gid) || plain_octal(h + 124, 12, &size) ||
        plain_octal(h + 136, 12, &mtime) || plain_octal(h + 329, 8, &dmaj) ||
        plain_octal(h + 337, 8, &dmin))
        return 0;

    nlen = cstr_len(h, 100);
    if (ustar) plen = cstr_len(h + 345, 155);
    llen = cstr_len(h + 157, 100);

    o += put_str(f + o, "name");
    if (plen) {
        memcpy(f + o, h + 345, plen); o += plen;
        f[o++] = '/';
    }
    memcpy(f + o, h, nlen); o += nlen;
    o += put_str(f + o, "mode"); o += put_dec(f + o, mode);
    o += put_str(f + o, "uid"); o += put_dec(f + o, uid);
    o += put_str(f + o, "gid"); o += put_dec(f + o, gid);
    o += put_str(f + o, "size"); o += put_dec(f + o, size);
    if (ctx->flags & RH_TARSUM_F_MTIME) {
        o += put_str(f + o, "mtime"); o += put_dec(f + o, mtime);
    }
    o += put_str(f + o, "typeflag"); f[o++] = type;
    o += put_str(f + o, "linkname");
    memcpy(f + o, h + 157, llen); o += llen;
    /* Docker hashes uname and gname with empty values. */
    o += put_str(f + o, "unamegname");
    o += put_str(f + o, "devmajor"); o += put_dec(f + o, dmaj);
    o += put_str(f + o, "devminor"); o += put_dec(f + o, dmin);

    rh_sha256_init(&ctx->file);
    rh_sha256_update(&ctx->file, f, o);
    /* Bytes of name past name_len are never read (export copies name_len). */
    ctx->name_len = (uint32_t)(plen ? plen + 1 + nlen : nlen);
    memcpy(ctx->name, f + 4, ctx->name_len);
    /* Links, devices, directories and FIFOs carry no body whatever size says. */
    body = (type == '0' || type == '7') ? size : 0;
    if (body == 0) {
        rh_tarsum_file_end(ctx);
        return 1;
    }
    ctx->remaining = body;
    ctx->pad = pad_for(body);
    ctx->mode = RH_TARSUM_MODE_BODY;
    return 1;
}

void rh_tarsum_init(rh_tarsum_ctx *ctx, uint32_t flags) {
    memset(ctx, 0, sizeof *ctx);
    rh_sha256_init(&ctx->file);
    ctx->flags = flags & (RH_TARSUM_F_MTIME | RH_TARSUM_F_SLOW | RH_TARSUM_F_NOFAST);
    ctx->mode = RH_TARSUM_MODE_HEADER;
}

void rh_tarsum_file_begin(rh_tarsum_ctx *ctx, const uint8_t *fields, size_t n,
                          const uint8_t *name, size_t name_len) {
    rh_sha256_init(&ctx->file);
    rh_sha256_update(&ctx->file, fields, n);
    if (name_len > RH_TARSUM_NAME_MAX) {
        ctx->name_len = RH_TARSUM_NAME_LONG;
    } else {
        name_len = cstr_len(name, name_len);
        ctx->name_len = (uint32_t)name_len;
        if (name_len) memcpy(ctx->name, name, name_len);
    }
}

int rh_tarsum_file_end(rh_tarsum_ctx *ctx) {
    uint8_t *slot;
    size_t len = ctx->name_len;
    /* A drained batch (nsums set to 0) starts names[] afresh.  Each of the
     * nsums keys so far took at most RH_TARSUM_NAME_SLOT bytes, so with
     * nsums < cap a whole slot is free; checked anyway. */
    if (ctx->nsums == 0) ctx->names_len = 0;
    if (ctx->nsums >= RH_TARSUM_SUMS_CAP ||
        ctx->names_len > sizeof ctx->names - RH_TARSUM_NAME_SLOT)
        return RH_TARSUM_E_FULL;
    rh_sha256_final(&ctx->file, ctx->sums + 32u * ctx->nsums);
    slot = ctx->names + ctx->names_len;
    /* No NUL within name_len: fast_header takes C strings, file_begin cuts
     * at a NUL and import refuses one. */
    len = len > RH_TARSUM_NAME_MAX ? 0 : clean_name(ctx->name, len, slot);
    slot[len] = 0;
    ctx->names_len += (uint32_t)len + 1;
    ctx->nsums++;
    return 0;
}

void rh_tarsum_sort_digests(uint8_t *digests, uint8_t *scratch, size_t n) {
    /* LSD radix sort on the first eight bytes (one pass per byte, skipped
     * when every digest has the same byte there), back and forth between
     * the two buffers, then an insertion pass that orders digests sharing
     * those eight bytes (it moves nothing else, so it is linear unless
     * 64-bit prefixes collide).  Counts sum to n, so every index stays
     * below n. */
    size_t count[8][256];
    uint8_t *src = digests, *dst = scratch, *t;
    size_t i, j, v;
    int b;
    if (n < 2) return;
    memset(count, 0, sizeof count);
    for (i = 0; i < n; i++)
        for (b = 0; b < 8; b++) count[b][digests[32 * i + 7 - b]]++;
    for (b = 0; b < 8; b++) {
        size_t *c = count[b], sum = 0;
        for (v = 0; v < 256 && c[v] != n; v++) {}
        if (v < 256) continue; /* one value for all: nothing moves */
        for (v = 0; v < 256; v++) {
            size_t k = c[v];
            c[v] = sum;
            sum += k;
        }
        for (i = 0; i < n; i++) {
            const uint8_t *r = src + 32 * i;
            memcpy(dst + 32 * c[r[7 - b]]++, r, 32);
        }
        t = src; src = dst; dst = t;
    }
    if (src != digests) memcpy(digests, src, 32 * n);
    for (i = 1; i < n; i++) {
        uint8_t tmp[32];
        if (memcmp(digests + 32 * (i - 1), digests + 32 * i, 32) <= 0) continue;
        memcpy(tmp, digests + 32 * i, 32);
        for (j = i; j > 0 && memcmp(digests + 32 * (j - 1), tmp, 32) > 0; j--)
            memcpy(digests + 32 * j, digests + 32 * (j - 1), 32);
        memcpy(digests + 32 * j, tmp, 32);
    }
}

int rh_tarsum_feed(rh_tarsum_ctx *ctx, const uint8_t *data, size_t n, size_t *consumed) {
    size_t pos = 0, take;

    while (pos < n) {
        switch (ctx->mode) {
        case RH_TARSUM_MODE_HEADER:
            if (ctx->hdr_fill == 0 && ctx->nsums >= RH_TARSUM_SUMS_CAP) {
                *consumed = pos;
                return RH_TARSUM_EV_SUMS_FULL;
            }
            if (ctx->hdr_fill == 0 && n - pos >= BLOCK) {
                /* A whole header in the caller's data: look at it there and
                 * copy it only to hand it over. */
                const uint8_t *h = data + pos;
                ctx->offset += BLOCK;
                pos += BLOCK;
                if (!(ctx->flags & (RH_TARSUM_F_SLOW | RH_TARSUM_F_NOFAST)) && fast_header(ctx, h))
                    break;
                memcpy(ctx->hdr, h, BLOCK);
                *consumed = pos;
                return RH_TARSUM_EV_HEADER;
            }
            if (ctx->hdr_fill >= BLOCK) ctx->hdr_fill = 0; /* defensive */
            take = BLOCK - ctx->hdr_fill;
            if (take > n - pos) take = n - pos;
            memcpy(ctx->hdr + ctx->hdr_fill, data + pos, take);
            ctx->hdr_fill += (uint32_t)take;
            ctx->offset += take;
            pos += take;
            if (ctx->hdr_fill < BLOCK) break;
            ctx->hdr_fill = 0;
            if (!(ctx->flags & (RH_TARSUM_F_SLOW | RH_TARSUM_F_NOFAST)) && fast_header(ctx, ctx->hdr))
                break;
            *consumed = pos;
            return RH_TARSUM_EV_HEADER;
        case RH_TARSUM_MODE_BODY:
            if (ctx->nsums >= RH_TARSUM_SUMS_CAP) {
                *consumed = pos;
                return RH_TARSUM_EV_SUMS_FULL;
            }
            take = n - pos;
            if ((uint64_t)take > ctx->remaining) take = (size_t)ctx->remaining;
            rh_sha256_update(&ctx->file, data + pos, take);
            ctx->remaining -= take;
            ctx->offset += take;
            pos += take;
            if (ctx->remaining == 0) {
                rh_tarsum_file_end(ctx);
                ctx->mode = ctx->pad ? RH_TARSUM_MODE_PAD : RH_TARSUM_MODE_HEADER;
            }
            break;
        case RH_TARSUM_MODE_META:
            /* META is entered only between feed calls (rh_tarsum_expect or
             * import), so the metadata bytes always start at data[0]. */
            take = n - pos;
            if ((uint64_t)take > ctx->remaining) take = (size_t)ctx->remaining;
            ctx->remaining -= take;
            ctx->offset += take;
            pos += take;
            if (ctx->remaining == 0)
                ctx->mode = ctx->pad ? RH_TARSUM_MODE_PAD : RH_TARSUM_MODE_HEADER;
            *consumed = pos;
            return RH_TARSUM_EV_META;
        case RH_TARSUM_MODE_PAD:
            take = n - pos;
            if (take > ctx->pad) take = ctx->pad;
            ctx->pad -= (uint32_t)take;
            ctx->offset += take;
            pos += take;
            if (ctx->pad == 0) ctx->mode = RH_TARSUM_MODE_HEADER;
            break;
        default: /* DONE: whatever follows the end-of-archive marker is ignored */
            ctx->mode = RH_TARSUM_MODE_DONE;
            ctx->offset += n - pos;
            pos = n;
            break;
        }
    }
    *consumed = pos;
    return RH_TARSUM_EV_NEED_MORE;
}

int rh_tarsum_expect(rh_tarsum_ctx *ctx, uint32_t mode, uint64_t size) {
    if (ctx->mode != RH_TARSUM_MODE_HEADER || ctx->hdr_fill != 0 || ctx->offset % BLOCK)
        return RH_TARSUM_E_STATE;
    if (size > (uint64_t)INT64_MAX || ctx->offset > UINT64_MAX - size - BLOCK)
        return RH_TARSUM_E_STATE;
    switch (mode) {
    case RH_TARSUM_MODE_BODY:
        if (ctx->nsums >= RH_TARSUM_SUMS_CAP) return RH_TARSUM_E_FULL;
        if (size == 0) return rh_tarsum_file_end(ctx);
        break;
    case RH_TARSUM_MODE_META:
        if (size == 0) return 0;
        break;
    case RH_TARSUM_MODE_HEADER:
        return size ? RH_TARSUM_E_STATE : 0;
    case RH_TARSUM_MODE_DONE:
        if (size) return RH_TARSUM_E_STATE;
        ctx->mode = RH_TARSUM_MODE_DONE;
        return 0;
    default:
        return RH_TARSUM_E_STATE;
    }
    ctx->remaining = size;
    ctx->pad = pad_for(size);
    ctx->mode = mode;
    return 0;
}

int rh_tarsum_export(const rh_tarsum_ctx *ctx, uint8_t *out) {
    uint32_t fill = ctx->hdr_fill < BLOCK ? ctx->hdr_fill : 0;
    if (ctx->nsums != 0) return RH_TARSUM_E_STATE;
    memset(out, 0, RH_TARSUM_STATE_SIZE);
    out[0] = (uint8_t)ctx->mode;
    out[1] = (uint8_t)ctx->flags;
    put_be16(out + 2, fill);
    put_be32(out + 4, ctx->pad);
    put_be64(out + 8, ctx->offset);
    put_be64(out + 16, ctx->remaining);
    rh_sha256_marshal(&ctx->file, out + 24);
    memcpy(out + 24 + RH_SHA256_STATE_SIZE, ctx->hdr, fill);
    if (ctx->name_len > RH_TARSUM_NAME_MAX) {
        put_be16(out + 644, RH_TARSUM_NAME_LONG);
    } else {
        put_be16(out + 644, ctx->name_len);
        memcpy(out + 646, ctx->name, ctx->name_len);
    }
    return 0;
}

int rh_tarsum_import(rh_tarsum_ctx *ctx, const uint8_t *in, size_t n) {
    rh_sha256_ctx sha;
    const uint8_t *hdr, *name;
    uint32_t mode, flags, fill, pad, i, name_len, name_used;
    uint64_t offset, remaining;

    if (n != RH_TARSUM_STATE_SIZE) return RH_TARSUM_E_LENGTH;
    hdr = in + 24 + RH_SHA256_STATE_SIZE;
    name = in + 646;
    mode = in[0];
    flags = in[1];
    fill = get_be16(in + 2);
    pad = get_be32(in + 4);
    offset = get_be64(in + 8);
    remaining = get_be64(in + 16);
    if (mode > RH_TARSUM_MODE_DONE) return RH_TARSUM_E_INCONSISTENT;
    if (flags & ~(uint32_t)(RH_TARSUM_F_MTIME | RH_TARSUM_F_SLOW | RH_TARSUM_F_NOFAST))
        return RH_TARSUM_E_INCONSISTENT;
    if (fill >= BLOCK || (fill && mode != RH_TARSUM_MODE_HEADER) || pad >= BLOCK)
        return RH_TARSUM_E_INCONSISTENT;
    for (i = fill; i < BLOCK; i++)
        if (hdr[i]) return RH_TARSUM_E_INCONSISTENT;
    name_len = get_be16(in + 644);
    if (name_len > RH_TARSUM_NAME_MAX && name_len != RH_TARSUM_NAME_LONG)
        return RH_TARSUM_E_INCONSISTENT;
    name_used = name_len == RH_TARSUM_NAME_LONG ? 0 : name_len;
    if (memchr(name, 0, name_used)) return RH_TARSUM_E_INCONSISTENT;
    for (i = name_used; i < RH_TARSUM_NAME_MAX; i++)
        if (name[i]) return RH_TARSUM_E_INCONSISTENT;
    switch (mode) {
    case RH_TARSUM_MODE_HEADER:
        if (remaining || pad || offset < fill || (offset - fill) % BLOCK)
            return RH_TARSUM_E_INCONSISTENT;
        break;
    case RH_TARSUM_MODE_BODY:
    case RH_TARSUM_MODE_META:
        if (remaining == 0 || remaining > (uint64_t)INT64_MAX ||
            offset > UINT64_MAX - remaining - pad || (offset + remaining + pad) % BLOCK)
            return RH_TARSUM_E_INCONSISTENT;
        break;
    case RH_TARSUM_MODE_PAD:
        if (remaining || pad == 0 || offset > UINT64_MAX - pad || (offset + pad) % BLOCK)
            return RH_TARSUM_E_INCONSISTENT;
        break;
    default: /* DONE */
        if (remaining || pad) return RH_TARSUM_E_INCONSISTENT;
        break;
    }
    if (rh_sha256_unmarshal(&sha, in + 24, RH_SHA256_STATE_SIZE) != 0)
        return RH_TARSUM_E_SHA256;

    memset(ctx, 0, sizeof *ctx);
    ctx->file = sha;
    ctx->offset = offset;
    ctx->remaining = remaining;
    ctx->pad = pad;
    ctx->hdr_fill = fill;
    ctx->mode = mode;
    ctx->flags = flags;
    memcpy(ctx->hdr, hdr, fill);
    ctx->name_len = name_len;
    memcpy(ctx->name, name, name_used);
    return 0;
}
