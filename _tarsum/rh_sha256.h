/* Resumable SHA-256: the hot loop of the registry's hashing core.
 *
 * This header is read verbatim by cffi's cdef (build_ext.py), so it holds
 * only declarations cffi understands: no preprocessor directives.
 *
 * State format (rh_sha256_marshal / rh_sha256_unmarshal) is exactly Go's
 * crypto/sha256 MarshalBinary: "sha\x03", h[0..7] big-endian uint32,
 * the 64-byte block buffer (bytes past the buffered count are zero),
 * the total byte count as big-endian uint64.  108 bytes.
 */

typedef struct {
    uint32_t h[8];
    uint8_t buf[64];
    uint64_t len;          /* total bytes hashed; len % 64 bytes sit in buf */
} rh_sha256_ctx;

/* Implementation selectors for rh_sha256_set_impl. */
#define RH_SHA256_IMPL_AUTO 0
#define RH_SHA256_IMPL_PORTABLE 1
#define RH_SHA256_IMPL_SHANI 2

void rh_sha256_init(rh_sha256_ctx *ctx);
void rh_sha256_update(rh_sha256_ctx *ctx, const uint8_t *data, size_t n);
/* Writes the digest of everything hashed so far; ctx is not modified. */
void rh_sha256_final(const rh_sha256_ctx *ctx, uint8_t *out32);
/* out must hold RH_SHA256_STATE_SIZE (108) bytes. */
void rh_sha256_marshal(const rh_sha256_ctx *ctx, uint8_t *out108);
/* Returns 0 on success, a negative RH_SHA256_E* code on a malformed state
 * (wrong length, wrong magic, non-zero bytes past the buffered count, or a
 * byte count of 2^61 or more, whose bit length SHA-256 cannot encode);
 * ctx is left untouched on failure.  Never reads past in[n-1]. */
int rh_sha256_unmarshal(rh_sha256_ctx *ctx, const uint8_t *in, size_t n);
/* Select the block function; returns the implementation now active
 * (AUTO picks SHA-NI when the CPU has it).  Asking for SHANI on a CPU
 * without it returns -1 and changes nothing. */
int rh_sha256_set_impl(int impl);
int rh_sha256_get_impl(void);
int rh_sha256_cpu_has_shani(void);

#define RH_SHA256_STATE_SIZE 108
#define RH_SHA256_E_LENGTH -1
#define RH_SHA256_E_MAGIC -2
#define RH_SHA256_E_INCONSISTENT -3
#define RH_SHA256_E_TOO_LONG -4
