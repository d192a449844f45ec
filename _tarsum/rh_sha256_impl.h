/* Internal declarations shared by the C core's own files (not for cdef). */
#ifndef RH_SHA256_IMPL_H
#define RH_SHA256_IMPL_H
#include <stdint.h>
#include <stddef.h>

void rh_sha256_blocks_portable(uint32_t h[8], const uint8_t *p, size_t nblocks);
/* Dispatching block function used by update/final and by tarsum. */
void rh_sha256_blocks(uint32_t h[8], const uint8_t *p, size_t nblocks);

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define RH_HAVE_SHANI 1
int rh_sha256_shani_supported(void);
void rh_sha256_blocks_shani(uint32_t h[8], const uint8_t *p, size_t nblocks);
#endif
#endif
