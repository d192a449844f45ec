/* libFuzzer target: rh_sha256_unmarshal on outside bytes.  A state that
 * loads must marshal back to the same bytes and stay usable. */
#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include <stdlib.h>
#include "rh_sha256.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    rh_sha256_ctx ctx, copy;
    uint8_t out[RH_SHA256_STATE_SIZE], d1[32], d2[32];
    memset(&ctx, 0xa5, sizeof ctx);
    copy = ctx;
    if (rh_sha256_unmarshal(&ctx, data, size) != 0) {
        if (memcmp(&ctx, &copy, sizeof ctx) != 0) abort(); /* untouched on failure */
        return 0;
    }
    rh_sha256_marshal(&ctx, out);
    if (size != RH_SHA256_STATE_SIZE || memcmp(out, data, size) != 0) abort();
    rh_sha256_final(&ctx, d1);
    copy = ctx;
    rh_sha256_update(&ctx, data, size);
    rh_sha256_final(&ctx, d2);
    rh_sha256_update(&copy, data, size / 2);
    rh_sha256_update(&copy, data + size / 2, size - size / 2);
    rh_sha256_final(&copy, d1);
    if (memcmp(d1, d2, 32) != 0) abort();
    return 0;
}
