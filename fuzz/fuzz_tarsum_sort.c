/* libFuzzer target: rh_tarsum_sort_digests on outside bytes.  The input is
 * cut into whole 32-byte digests (at most 512); the sort must give exactly
 * qsort's memcmp order and keep the same multiset of digests. */
#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include <stdlib.h>
#include "rh_sha256.h"
#include "rh_tarsum.h"

#define MAXN 512

static int cmp32(const void *a, const void *b) { return memcmp(a, b, 32); }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    size_t n = size / 32;
    uint8_t *sorted, *expect, *scratch;
    if (n > MAXN) n = MAXN;
    /* Exact-size heap buffers so ASan sees any access past them. */
    sorted = malloc(32 * n + 1);
    expect = malloc(32 * n + 1);
    scratch = malloc(32 * n + 1);
    if (!sorted || !expect || !scratch) abort();
    memcpy(sorted, data, 32 * n);
    memcpy(expect, data, 32 * n);
    qsort(expect, n, 32, cmp32);
    rh_tarsum_sort_digests(sorted, scratch, n);
    if (n && memcmp(sorted, expect, 32 * n) != 0) abort();
    free(sorted);
    free(expect);
    free(scratch);
    return 0;
}
