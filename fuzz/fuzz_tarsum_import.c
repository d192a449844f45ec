/* libFuzzer target: rh_tarsum_import on outside bytes.  A state that loads
 * must export to the same bytes and then accept more data safely. */
#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include <stdlib.h>
#include "rh_sha256.h"
#include "rh_tarsum.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static rh_tarsum_ctx ctx, before;
    uint8_t out[RH_TARSUM_STATE_SIZE];
    size_t consumed, pos;
    int ev, guard = 0;
    rh_tarsum_init(&ctx, 0);
    before = ctx;
    if (rh_tarsum_import(&ctx, data, size) != 0) {
        if (memcmp(&ctx, &before, sizeof ctx) != 0) abort();
        return 0;
    }
    if (rh_tarsum_export(&ctx, out) != 0 || memcmp(out, data, RH_TARSUM_STATE_SIZE) != 0) abort();
    /* Feed the state's own bytes as tar data, answering every event. */
    pos = 0;
    while (pos < size && guard++ < 10000) {
        ev = rh_tarsum_feed(&ctx, data + pos, size - pos, &consumed);
        pos += consumed;
        ctx.nsums = 0;
        if (ev == RH_TARSUM_EV_HEADER)
            rh_tarsum_expect(&ctx, RH_TARSUM_MODE_BODY, ctx.hdr[0]);
    }
    return 0;
}
