/* libFuzzer target: the tarsum machine fed outside bytes in outside-chosen
 * chunks, answered the way registry/tarsum.py answers (with the answer also
 * chosen by the input), with a state export/import round trip at every event.
 * The machine must never read or write out of bounds, whatever the caller
 * does within the contract, and an exported state must always import. */
#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include <stdlib.h>
#include "rh_sha256.h"
#include "rh_tarsum.h"

static uint64_t octal(const uint8_t *p, size_t n) {
    uint64_t v = 0;
    size_t i;
    for (i = 0; i < n; i++)
        if (p[i] >= '0' && p[i] <= '7') v = (v << 3) | (uint64_t)(p[i] - '0');
    return v;
}

static void roundtrip(rh_tarsum_ctx *ctx) {
    static rh_tarsum_ctx other;
    uint8_t st[RH_TARSUM_STATE_SIZE], st2[RH_TARSUM_STATE_SIZE];
    ctx->nsums = 0; /* drain */
    if (rh_tarsum_export(ctx, st) != 0) abort();
    if (rh_tarsum_import(&other, st, sizeof st) != 0) abort();
    if (rh_tarsum_export(&other, st2) != 0 || memcmp(st, st2, sizeof st) != 0) abort();
    *ctx = other;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static rh_tarsum_ctx ctx;
    size_t pos = 0, consumed = 0, chunk;
    int ev, steps = 0;
    if (size < 2) return 0;
    rh_tarsum_init(&ctx, data[0] & 7);
    chunk = (size_t)data[1] * 3 + 1;
    data += 2;
    size -= 2;
    while (pos < size && steps++ < 100000) {
        size_t n = size - pos < chunk ? size - pos : chunk;
        ev = rh_tarsum_feed(&ctx, data + pos, n, &consumed);
        if (consumed > n) abort();
        pos += consumed;
        if (ev == RH_TARSUM_EV_SUMS_FULL) {
            ctx.nsums = 0;
        } else if (ev == RH_TARSUM_EV_HEADER) {
            const uint8_t *h = ctx.hdr;
            uint64_t sz = octal(h + 124, 12);
            ctx.nsums = 0;
            switch (h[156] % 5) {
            case 0: /* an entry with a body */
                rh_tarsum_file_begin(&ctx, h, 300, h, (size_t)h[0] * 2);
                if (rh_tarsum_expect(&ctx, RH_TARSUM_MODE_BODY, sz) != 0 && sz <= INT64_MAX / 2) abort();
                break;
            case 1: /* metadata */
                rh_tarsum_expect(&ctx, RH_TARSUM_MODE_META, sz);
                break;
            case 2: /* a global header: an entry without a body */
                rh_tarsum_file_begin(&ctx, h + 100, 50, h, 5);
                if (rh_tarsum_file_end(&ctx) != 0) abort();
                break;
            case 3:
                rh_tarsum_expect(&ctx, RH_TARSUM_MODE_DONE, 0);
                break;
            default:
                ctx.flags ^= RH_TARSUM_F_SLOW;
                break;
            }
            roundtrip(&ctx);
        } else if (ev == RH_TARSUM_EV_META) {
            if (consumed == 0) abort();
            roundtrip(&ctx);
        }
        if (ctx.nsums > RH_TARSUM_SUMS_CAP) abort();
    }
    roundtrip(&ctx);
    return 0;
}
