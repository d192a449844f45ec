/* Incremental tarsum: the framing and hashing loop over a tar stream.
 *
 * Read verbatim by cffi's cdef (build_ext.py): declarations and integer
 * #defines only, no other preprocessor directives.  Needs rh_sha256.h first.
 *
 * The machine frames the stream in 512-byte blocks across arbitrary chunk
 * boundaries.  A plain ustar/GNU header with nothing pending is handled in
 * C (the "fast path": fields hashed, body hashed, sum appended to sums[]);
 * every other header is handed to the caller (RH_TARSUM_EV_HEADER), which
 * parses it and answers with rh_tarsum_file_begin / rh_tarsum_expect /
 * rh_tarsum_file_end.  Metadata bodies (PAX records, GNU long names) are
 * returned to the caller as they arrive (RH_TARSUM_EV_META).
 *
 * State export (rh_tarsum_export / rh_tarsum_import) is a fixed-size
 * big-endian record, RH_TARSUM_STATE_SIZE bytes:
 *   u8 mode, u8 flags, u16 hdr_fill, u32 pad, u64 offset, u64 remaining,
 *   108-byte per-file SHA-256 state (Go MarshalBinary format),
 *   512-byte partial header (bytes past hdr_fill zero),
 *   u16 current entry's name length (or RH_TARSUM_NAME_LONG), 256-byte name
 *   (bytes past the length zero).
 *
 * Each finished entry leaves its digest in sums[] and its duplicate key in
 * names[]: the name as in the header (ustar prefix joined) cleaned the way
 * moby cleans it (path.Join(".", path.Join("/", name)): empty and "."
 * components dropped, ".." pops, "." when nothing is left), followed by a
 * NUL; names_len bytes in all.  An entry whose name is longer than
 * RH_TARSUM_NAME_MAX leaves an empty key (just the NUL): the caller holds
 * that name.  Docker orders entries with duplicate keys by position.
 */

typedef struct {
    rh_sha256_ctx file;     /* the current entry's hash */
    uint64_t offset;        /* stream bytes consumed so far */
    uint64_t remaining;     /* body bytes still to come (BODY, META) */
    uint32_t pad;           /* padding bytes still to skip after the body */
    uint32_t hdr_fill;      /* bytes of the next header gathered in hdr */
    uint32_t mode;          /* RH_TARSUM_MODE_* */
    uint32_t flags;         /* RH_TARSUM_F_* */
    uint32_t nsums;         /* finished entry digests waiting in sums */
    uint32_t name_len;      /* the current entry's name, for names[] */
    uint32_t names_len;     /* bytes of NUL-terminated keys waiting in names */
    uint8_t name[256];
    uint8_t hdr[512];       /* the header being gathered / just completed */
    uint8_t sums[8192];     /* RH_TARSUM_SUMS_CAP raw 32-byte digests */
    uint8_t names[65792];   /* RH_TARSUM_SUMS_CAP keys of at most RH_TARSUM_NAME_SLOT */
} rh_tarsum_ctx;

#define RH_TARSUM_SUMS_CAP 256
#define RH_TARSUM_NAME_MAX 256
#define RH_TARSUM_NAME_SLOT 257
#define RH_TARSUM_NAME_LONG 65535
#define RH_TARSUM_STATE_SIZE 902

#define RH_TARSUM_MODE_HEADER 0
#define RH_TARSUM_MODE_BODY 1
#define RH_TARSUM_MODE_META 2
#define RH_TARSUM_MODE_PAD 3
#define RH_TARSUM_MODE_DONE 4

/* Hash the mtime field (tarsum v0). */
#define RH_TARSUM_F_MTIME 1
/* Hand the next header to the caller even if it looks plain (set while
 * PAX records or GNU long names are pending, or after a zero block). */
#define RH_TARSUM_F_SLOW 2
/* Never use the C fast path (tests use it to exercise the caller's path). */
#define RH_TARSUM_F_NOFAST 4

/* rh_tarsum_feed results. */
#define RH_TARSUM_EV_NEED_MORE 0
#define RH_TARSUM_EV_HEADER 1
#define RH_TARSUM_EV_META 2
#define RH_TARSUM_EV_SUMS_FULL 3

/* Errors (negative). */
#define RH_TARSUM_E_STATE -1
#define RH_TARSUM_E_LENGTH -2
#define RH_TARSUM_E_INCONSISTENT -3
#define RH_TARSUM_E_SHA256 -4
#define RH_TARSUM_E_FULL -5

void rh_tarsum_init(rh_tarsum_ctx *ctx, uint32_t flags);

/* Consume data[0..n).  Returns an RH_TARSUM_EV_* code with *consumed set to
 * the bytes used:
 *   NEED_MORE  all n bytes consumed, nothing for the caller to do;
 *   HEADER     a header the C path did not handle is in hdr (it ends at
 *              offset); the caller must answer before feeding again;
 *   META       the *consumed bytes data[0..*consumed) are metadata body;
 *   SUMS_FULL  sums[] is full; drain it and feed again.
 * Draining: read nsums digests from sums and names_len bytes from names,
 * then set nsums = 0 (names[] starts afresh with the next key). */
int rh_tarsum_feed(rh_tarsum_ctx *ctx, const uint8_t *data, size_t n, size_t *consumed);

/* Start an entry's hash: init, then hash the selected header fields.  The
 * entry's name is recorded for names[] (RH_TARSUM_NAME_LONG if longer than
 * RH_TARSUM_NAME_MAX: the caller keeps it); a NUL ends it early. */
void rh_tarsum_file_begin(rh_tarsum_ctx *ctx, const uint8_t *fields, size_t n,
                          const uint8_t *name, size_t name_len);

/* Finish the entry's hash into sums[nsums++] and its key into names[].
 * 0 or RH_TARSUM_E_FULL. */
int rh_tarsum_file_end(rh_tarsum_ctx *ctx);

/* After a HEADER event (mode HEADER, hdr_fill 0): the next `size` bytes are
 * MODE_BODY (hashed into the entry begun with file_begin; size 0 ends the
 * entry at once) or MODE_META (returned as META events), followed by the
 * padding to a 512-byte boundary; or MODE_HEADER (size 0: another header
 * follows) or MODE_DONE (size 0: end of archive, the rest is ignored).
 * Returns 0 or a negative RH_TARSUM_E_* code (nothing changed). */
int rh_tarsum_expect(rh_tarsum_ctx *ctx, uint32_t mode, uint64_t size);

/* Sort n 32-byte digests in place, in memcmp order (the order of their hex
 * strings).  scratch must hold 32 * n bytes; its contents are undefined
 * afterwards.  No allocation. */
void rh_tarsum_sort_digests(uint8_t *digests, uint8_t *scratch, size_t n);

/* Writes RH_TARSUM_STATE_SIZE bytes.  0, or RH_TARSUM_E_STATE if sums are
 * waiting (drain first). */
int rh_tarsum_export(const rh_tarsum_ctx *ctx, uint8_t *out);

/* Validates and loads an exported state (a NUL in the name is refused);
 * ctx untouched on failure.
 * 0 or a negative RH_TARSUM_E_* code. */
int rh_tarsum_import(rh_tarsum_ctx *ctx, const uint8_t *in, size_t n);
