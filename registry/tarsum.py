"""Docker's tarsum, computed incrementally over an uncompressed tar stream.

``TarSum(version, extra)`` takes the tar bytes in any chunking through
``update``; ``finish()`` returns the label and digest, for example
``tarsum.v1+sha256:<hex>``.  ``state()`` / ``TarSum.from_state(b)`` carry the
whole computation across processes.

What is hashed follows moby's ``pkg/tarsum`` (as shipped with Docker 20.10)
reading through Go's ``archive/tar``:

* for every entry Go's reader returns (PAX global headers included), SHA-256
  over ``name``, ``mode``, ``uid``, ``gid``, ``size``, ``mtime`` (v0 only),
  ``typeflag``, ``linkname``, ``uname``, ``gname``, ``devmajor``,
  ``devminor`` -- each key followed by its value, numbers in decimal, uname
  and gname always empty -- then for v1/dev the ``SCHILY.xattr.*`` PAX
  records (prefix stripped, empty values skipped) sorted by key, then the
  entry's body;
* names as Go's reader builds them: ustar prefix joined with ``/``, PAX
  ``path``/``linkpath`` overrides, GNU long names and long links; no
  normalisation; duplicate paths each count;
* the final SHA-256 over ``extra`` and the lower-case hex sums sorted the
  way moby sorts them: by sum, except that when two entries share a
  (cleaned) path they compare by position in the archive.  That comparison
  is not a consistent order, so the result depends on the sorting
  algorithm; with duplicate paths we replay Go's ``sort.Sort`` (pdqsort,
  Go 1.19 and later) step by step to get the same order.

The stream ends where Go's reader ends it: two zero blocks (anything after
is ignored), or the data simply stopping at a header boundary, after one
zero block, or inside the last entry's padding.  Data that stops inside a
header or a body, or that Go's reader rejects (bad checksum, bad numeric
field, bad PAX record, a zero block followed by data), raises
``TarSumError`` naming the byte offset.  Sparse files, which Go expands
while reading, are refused with ``TarSumError``.

Division of labour: the C core (``rh_tarsum_*``) frames 512-byte blocks
across chunk boundaries, hashes bodies straight from the caller's buffer,
and handles plain ustar/GNU headers itself; every other header and every
PAX / long-name body comes back here once, is parsed with Go's rules, and
its selected fields are handed to C to hash.  C also records each entry's
duplicate key (its cleaned name) next to its digest, in batches of up to
256 that are copied here as two buffers, and sorts the digests for
``finish()``, so the per-entry work in Python is one ``split`` and a set.
"""

from __future__ import annotations

import binascii
import hashlib
import re
import struct
from typing import Callable, Final, TypeVar

from registry._hashing import ffi, lib

__all__ = [
    "VERSIONS",
    "TarSum",
    "TarSumError",
    "format_tarsum",
    "parse_tarsum",
]

#: Version name -> label before ``+`` in the tarsum string.
VERSIONS: Final = {"v0": "tarsum", "v1": "tarsum.v1", "dev": "tarsum.dev"}
_LABEL_TO_VERSION: Final = {label: v for v, label in VERSIONS.items()}
_VERSION_CODES: Final = {"v0": 0, "v1": 1, "dev": 2}
_CODE_VERSIONS: Final = {c: v for v, c in _VERSION_CODES.items()}
_HEX_LENGTHS: Final = {"sha256": 64, "sha512": 128}

_BLOCK: Final = 512
_ZERO_BLOCK: Final = bytes(_BLOCK)
_MAX_SPECIAL: Final = 1 << 20  # Go's maxSpecialFileSize for PAX / long-name bodies
_HEADER_ONLY: Final = frozenset(b"123456")  # link, symlink, char, block, dir, fifo
_META_TYPES: Final = frozenset(b"xgLK")
_ZERO_TIME_UNIX: Final = -62135596800  # Go's time.Time{}.Unix()
_XATTR: Final = b"SCHILY.xattr."

_STATE_MAGIC: Final = b"RHTS"
_STATE_FORMAT: Final = 1
_C_STATE: Final = lib.RH_TARSUM_STATE_SIZE
_NAME_MAX: Final = lib.RH_TARSUM_NAME_MAX
_NAME_LONG: Final = lib.RH_TARSUM_NAME_LONG

_EV_NEED_MORE: Final = lib.RH_TARSUM_EV_NEED_MORE
_EV_HEADER: Final = lib.RH_TARSUM_EV_HEADER
_EV_META: Final = lib.RH_TARSUM_EV_META
_EV_SUMS_FULL: Final = lib.RH_TARSUM_EV_SUMS_FULL
_MODE_HEADER: Final = lib.RH_TARSUM_MODE_HEADER
_MODE_BODY: Final = lib.RH_TARSUM_MODE_BODY
_MODE_META: Final = lib.RH_TARSUM_MODE_META
_MODE_DONE: Final = lib.RH_TARSUM_MODE_DONE
_F_MTIME: Final = lib.RH_TARSUM_F_MTIME
_F_SLOW: Final = lib.RH_TARSUM_F_SLOW
_F_NOFAST: Final = lib.RH_TARSUM_F_NOFAST

_feed = lib.rh_tarsum_feed
_expect = lib.rh_tarsum_expect
_file_begin = lib.rh_tarsum_file_begin
_file_end = lib.rh_tarsum_file_end
_sort_digests = lib.rh_tarsum_sort_digests
_from_buffer = ffi.from_buffer
_buffer = ffi.buffer
_CTX_P = ffi.typeof("rh_tarsum_ctx *")
_BYTES_T = ffi.typeof("uint8_t[]")
_SIZE_P = ffi.typeof("size_t *")

_OCTAL = re.compile(rb"[0-7]+")
_GO_INT = re.compile(rb"[+-]?[0-9]+")
_DIGITS = re.compile(rb"[0-9]*")
_TARSUM_RE = re.compile(r"(tarsum(?:\.v1|\.dev)?)\+(sha256|sha512):([0-9a-f]+)")


class TarSumError(ValueError):
    """Tar data that Docker's tarsum (Go's archive/tar) would reject, or data
    that stops inside a header or body.  ``offset`` is the byte offset in the
    tar stream where the problem lies."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__("%s (at byte offset %d)" % (message, offset))
        self.offset = offset


#: What the C core's negative return codes mean (``RH_TARSUM_E_*``).
_C_ERRORS: Final = {
    lib.RH_TARSUM_E_STATE: "call not valid in the parser's current state, or size out of range",
    lib.RH_TARSUM_E_LENGTH: "wrong state length",
    lib.RH_TARSUM_E_INCONSISTENT: "inconsistent state",
    lib.RH_TARSUM_E_SHA256: "SHA-256 state rejected",
    lib.RH_TARSUM_E_FULL: "finished-entry buffer full (sums not drained)",
}


def _c_failed(call: str, rc: int, offset: int) -> TarSumError:
    """The exception for C core function ``call`` returning error code ``rc``."""
    meaning = _C_ERRORS.get(rc, "unknown error code")
    return TarSumError("tarsum C core: %s returned %d (%s)" % (call, rc, meaning), offset)


class _Bad(Exception):
    """A header parse error; the caller adds the offset."""


# --- Go's number parsing -----------------------------------------------------


def _go_int(s: bytes) -> int:
    """strconv.ParseInt(s, 10, 64)."""
    if not _GO_INT.fullmatch(s):
        raise _Bad("not a decimal integer: %r" % s[:40])
    v = int(s)
    if not -(1 << 63) <= v < (1 << 63):
        raise _Bad("integer out of range: %r" % s[:40])
    return v


def _wrap64(v: int) -> int:
    return ((v + (1 << 63)) & ((1 << 64) - 1)) - (1 << 63)


def _pax_time_unix(s: bytes) -> int:
    """parsePAXTime(s).Unix(): whole seconds, rounded toward minus infinity."""
    ss, dot, sn = s.partition(b".")
    secs = _go_int(ss)
    if not sn:
        return secs
    if not _DIGITS.fullmatch(sn):
        raise _Bad("bad PAX time: %r" % s[:40])
    if ss.startswith(b"-") and int(sn[:9]) > 0:
        return _wrap64(secs - 1)
    return secs


def _cstr(b: bytes) -> bytes:
    z = b.find(0)
    return b if z < 0 else b[:z]


def _octal(b: bytes, what: str) -> int:
    """Go's parseOctal: trim spaces/NULs, stop at a NUL, octal, int64 wrap."""
    t = b.strip(b" \x00")
    if not t:
        return 0
    t = _cstr(t)
    if not _OCTAL.fullmatch(t):
        raise _Bad("bad octal number in the %s field: %r" % (what, b))
    x = int(t, 8)
    if x >> 64:
        raise _Bad("octal number out of range in the %s field" % what)
    return _wrap64(x)


def _numeric(b: bytes, what: str) -> int:
    """Go's parseNumeric: base-256 when the top bit is set, else octal."""
    if b and b[0] & 0x80:
        inv = 0xFF if b[0] & 0x40 else 0
        x = 0
        for i, c in enumerate(b):
            c ^= inv
            if i == 0:
                c &= 0x7F
            if x >> 56:
                raise _Bad("base-256 number out of range in the %s field" % what)
            x = (x << 8) | c
        if x >> 63:
            raise _Bad("base-256 number out of range in the %s field" % what)
        return ~x if inv else x
    return _octal(b, what)


# --- headers and PAX records ---------------------------------------------------


class _Header:
    """The fields of one header block as Go's readHeader returns them."""

    __slots__ = ("name", "linkname", "mode", "uid", "gid", "size", "mtime", "typeflag",
                 "devmajor", "devminor")

    def __init__(self, blk: bytes) -> None:
        chk = _octal(blk[148:156], "checksum")
        unsigned = sum(blk) - sum(blk[148:156]) + 8 * 0x20
        high = sum(1 for c in blk[:148] if c & 0x80) + sum(1 for c in blk[156:] if c & 0x80)
        if chk != unsigned and chk != unsigned - 256 * high:
            raise _Bad("header checksum mismatch (stored %d, computed %d)" % (chk, unsigned))
        magic, version, trailer = blk[257:263], blk[263:265], blk[508:512]
        self.typeflag = blk[156]
        self.name = _cstr(blk[0:100])
        self.linkname = _cstr(blk[157:257])
        self.size = _numeric(blk[124:136], "size")
        self.mode = _numeric(blk[100:108], "mode")
        self.uid = _numeric(blk[108:116], "uid")
        self.gid = _numeric(blk[116:124], "gid")
        self.mtime = _numeric(blk[136:148], "mtime")
        self.devmajor = self.devminor = 0
        if magic == b"ustar\x00" or (magic == b"ustar " and version == b" \x00"):
            self.devmajor = _numeric(blk[329:337], "devmajor")
            self.devminor = _numeric(blk[337:345], "devminor")
            prefix = b""
            if magic == b"ustar\x00" and trailer == b"tar\x00":  # star
                prefix = _cstr(blk[345:476])
                _numeric(blk[476:488], "atime")
                _numeric(blk[488:500], "ctime")
            elif magic == b"ustar\x00":
                prefix = _cstr(blk[345:500])
            else:  # GNU: atime/ctime; pre-Go1.8 writers put a prefix there
                try:
                    if blk[345]:
                        _numeric(blk[345:357], "atime")
                    if blk[357]:
                        _numeric(blk[357:369], "ctime")
                except _Bad:
                    s = _cstr(blk[345:500])
                    if all(c < 0x80 for c in s):
                        prefix = s
            if prefix:
                self.name = prefix + b"/" + self.name


def _parse_pax(body: bytes) -> dict[bytes, bytes]:
    """Go's parsePAX: the records of a PAX extended header body."""
    recs: dict[bytes, bytes] = {}
    sparse: list[bytes] = []
    s = body
    while s:
        sp = s.find(b" ")
        if sp < 0:
            raise _Bad("PAX record without a length")
        n = _go_int(s[:sp])
        if n < 5 or n > len(s):
            raise _Bad("PAX record length %d out of range" % n)
        n -= sp + 1
        if n <= 0:
            raise _Bad("PAX record length too short")
        rest = s[sp + 1:]
        rec, nl, s = rest[: n - 1], rest[n - 1: n], rest[n:]
        if nl != b"\n":
            raise _Bad("PAX record not terminated by a newline")
        k, eq, v = rec.partition(b"=")
        if not eq or not k:
            raise _Bad("PAX record without a key")
        if k in (b"path", b"linkpath", b"uname", b"gname"):
            if 0 in v:
                raise _Bad("NUL in PAX %s" % k.decode())
        elif 0 in k:
            raise _Bad("NUL in a PAX key")
        if k in (b"GNU.sparse.offset", b"GNU.sparse.numbytes"):
            want = b"GNU.sparse.offset" if len(sparse) % 2 == 0 else b"GNU.sparse.numbytes"
            if k != want or b"," in v:
                raise _Bad("bad GNU sparse PAX records")
            sparse.append(v)
        else:
            recs[k] = v
    if sparse:
        recs[b"GNU.sparse.map"] = b",".join(sparse)
    return recs


def _pax_is_sparse(pax: dict[bytes, bytes]) -> bool:
    major, minor = pax.get(b"GNU.sparse.major", b""), pax.get(b"GNU.sparse.minor", b"")
    if (major, minor) in ((b"0", b"0"), (b"0", b"1"), (b"1", b"0")):
        return True
    if major or minor:
        return False
    return bool(pax.get(b"GNU.sparse.map"))


def _fields(name: bytes, mode: int, uid: int, gid: int, size: int, mtime: int, typeflag: int,
            linkname: bytes, devmajor: int, devminor: int, xattrs: dict[bytes, bytes],
            v0: bool) -> bytes:
    """The bytes tarsum hashes for one entry's header."""
    parts = [b"name", name, b"mode%duid%dgid%dsize%d" % (mode, uid, gid, size)]
    if v0:
        parts.append(b"mtime%d" % mtime)
    parts += [b"typeflag", bytes((typeflag,)), b"linkname", linkname,
              b"unamegnamedevmajor%ddevminor%d" % (devmajor, devminor)]
    if not v0:
        for k in sorted(xattrs):
            parts += [k, xattrs[k]]
    return b"".join(parts)


def _merge_pax(pax: dict[bytes, bytes], h: _Header, xattrs: dict[bytes, bytes]) -> None:
    """Go's mergePAX onto ``h`` (and ``xattrs``); raises _Bad on a bad value."""
    for k, v in pax.items():
        if not v:
            continue
        if k == b"path":
            h.name = v
        elif k == b"linkpath":
            h.linkname = v
        elif k == b"uid":
            h.uid = _go_int(v)
        elif k == b"gid":
            h.gid = _go_int(v)
        elif k == b"mtime":
            h.mtime = _pax_time_unix(v)
        elif k in (b"atime", b"ctime"):
            _pax_time_unix(v)
        elif k == b"size":
            h.size = _go_int(v)
        elif k.startswith(_XATTR):
            xattrs[k[len(_XATTR):]] = v


# --- the incremental tarsum --------------------------------------------------


class TarSum:
    """Docker's tarsum over a tar stream fed in chunks; see the module docstring.

    ``version`` is ``"v0"``, ``"v1"`` or ``"dev"``; ``extra`` is the payload
    hashed before the per-file sums (Docker passes the image JSON).
    """

    __slots__ = ("_ctx", "_consumed", "_version", "_extra", "_sums", "_keys", "_long_keys",
                 "_cur_long_name", "_zero_seen",
                 "_meta_kind", "_meta_header", "_meta_expected", "_meta_buf", "_pax",
                 "_pax_raw", "_long_name", "_long_link", "_failed")

    def __init__(self, version: str = "v1", extra: bytes = b"", *, _fast: bool = True) -> None:
        if version not in VERSIONS:
            raise ValueError("unknown tarsum version %r (one of v0, v1, dev)" % (version,))
        self._version = version
        self._extra = bytes(extra)
        self._ctx = ffi.new(_CTX_P)
        self._consumed = ffi.new(_SIZE_P)
        flags = (_F_MTIME if version == "v0" else 0) | (0 if _fast else _F_NOFAST)
        lib.rh_tarsum_init(self._ctx, flags)
        # Per finished entry: its digest (32 bytes each) in _sums, and its
        # duplicate key (cleaned name) NUL-terminated in _keys, as the C core
        # leaves them; an entry whose name was too long for the C core has
        # an empty key there and its real key in _long_keys[entry index].
        self._sums = bytearray()
        self._keys = bytearray()
        self._long_keys: dict[int, bytes] = {}
        self._cur_long_name = b""
        self._zero_seen = False
        self._meta_kind = 0
        self._meta_header = b""
        self._meta_expected = 0
        self._meta_buf = bytearray()
        self._pax: dict[bytes, bytes] = {}
        self._pax_raw = b""
        self._long_name = b""
        self._long_link = b""
        self._failed: TarSumError | None = None

    @property
    def version(self) -> str:
        """``"v0"``, ``"v1"`` or ``"dev"``."""
        return self._version

    @property
    def offset(self) -> int:
        """Tar bytes consumed so far."""
        return int(self._ctx.offset)

    # -- feeding --

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Feed the next tar bytes (any chunking; the buffer is not copied).

        Raises TarSumError for malformed tar data; the object is then
        unusable and every later call raises the same error.
        """
        if self._failed is not None:
            raise self._failed
        if isinstance(data, str):
            raise TypeError("tar data must be bytes-like, not str")
        view = _from_buffer(_BYTES_T, data)
        n = len(view)
        ctx = self._ctx
        consumed = self._consumed
        pos = 0
        try:
            while True:
                ev = _feed(ctx, view + pos, n - pos, consumed)
                c = consumed[0]
                pos += c
                if ev == _EV_NEED_MORE:
                    break
                if ev == _EV_HEADER:
                    self._drain()
                    self._header()
                elif ev == _EV_META:
                    self._meta_buf += _buffer(view + (pos - c), c)
                    if len(self._meta_buf) == self._meta_expected:
                        self._meta_complete()
                elif ev == _EV_SUMS_FULL:
                    self._drain()
                else:  # no such event: an error code (or a core this code does not know)
                    raise _c_failed("rh_tarsum_feed", ev, int(ctx.offset))
        except TarSumError as e:
            self._failed = e
            raise

    def _drain(self) -> None:
        ctx = self._ctx
        k = ctx.nsums
        if k:
            self._sums += _buffer(ctx.sums, 32 * k)
            self._keys += _buffer(ctx.names, ctx.names_len)
            ctx.nsums = 0
            ctx.names_len = 0

    def _sync_slow(self) -> None:
        ctx = self._ctx
        if self._zero_seen or self._pax_raw or self._long_name or self._long_link:
            ctx.flags |= _F_SLOW
        else:
            ctx.flags &= ~_F_SLOW

    def _fail(self, message: str, offset: int) -> TarSumError:
        return TarSumError(message, offset)

    def _header(self) -> None:
        """A header the C fast path left to us; it ends at ctx.offset."""
        ctx = self._ctx
        start = int(ctx.offset) - _BLOCK
        blk = _buffer(ctx.hdr, _BLOCK)[:]
        if blk == _ZERO_BLOCK:
            if self._zero_seen:
                rc = _expect(ctx, _MODE_DONE, 0)
                if rc:
                    raise _c_failed("rh_tarsum_expect(DONE)", rc, start)
            else:
                # Go's reader ends the archive here; pending metadata is moot.
                self._zero_seen = True
                self._pax, self._pax_raw, self._long_name, self._long_link = {}, b"", b"", b""
                self._sync_slow()
            return
        if self._zero_seen:
            raise self._fail("a zero block followed by a non-zero block", start)
        try:
            h = _Header(blk)
        except _Bad as e:
            raise self._fail("invalid tar header: %s" % e, start) from None
        t = h.typeflag
        if h.size < 0 and t not in _HEADER_ONLY:
            raise self._fail("negative entry size %d" % h.size, start)
        if t in _META_TYPES:
            if h.size > _MAX_SPECIAL:
                raise self._fail("%r header body of %d bytes exceeds 1 MiB" % (chr(t), h.size),
                                 start)
            self._meta_kind = t
            self._meta_header = blk
            self._meta_expected = h.size
            self._meta_buf = bytearray()
            rc = _expect(ctx, _MODE_META, h.size)
            if rc:
                raise _c_failed("rh_tarsum_expect(META, %d)" % h.size, rc, start)
            if h.size == 0:
                self._meta_complete()
            return
        xattrs: dict[bytes, bytes] = {}
        try:
            _merge_pax(self._pax, h, xattrs)
        except _Bad as e:
            raise self._fail("invalid PAX value: %s" % e, start) from None
        if self._long_name:
            h.name = self._long_name
        if self._long_link:
            h.linkname = self._long_link
        if t == 0:  # legacy regular file; trailing slash means directory
            t = h.typeflag = 0x35 if h.name.endswith(b"/") else 0x30
        body = 0 if t in _HEADER_ONLY else h.size
        if body < 0:
            raise self._fail("negative entry size %d" % body, start)
        if t == 0x53 or _pax_is_sparse(self._pax):
            raise self._fail("sparse files are not supported", start)
        fields = _fields(h.name, h.mode, h.uid, h.gid, h.size, h.mtime, t, h.linkname,
                         h.devmajor, h.devminor, xattrs, self._version == "v0")
        self._begin(fields, h.name)
        self._pax, self._pax_raw, self._long_name, self._long_link = {}, b"", b"", b""
        self._sync_slow()
        rc = _expect(ctx, _MODE_BODY, body)
        if rc == lib.RH_TARSUM_E_STATE:
            raise self._fail("entry size %d out of range" % body, start)
        if rc:
            raise _c_failed("rh_tarsum_expect(BODY, %d)" % body, rc, start)

    def _begin(self, fields: bytes, name: bytes) -> None:
        """Start an entry handled here (sums already drained)."""
        if len(name) > _NAME_MAX:
            self._cur_long_name = name
            self._long_keys[len(self._sums) // 32 + self._ctx.nsums] = _clean_name(name)
        _file_begin(self._ctx, fields, len(fields), name, len(name))

    def _meta_complete(self) -> None:
        """A PAX or GNU long-name body is complete."""
        ctx = self._ctx
        kind, body = self._meta_kind, bytes(self._meta_buf)
        start = int(ctx.offset) - len(body)
        self._meta_kind, self._meta_expected, self._meta_buf = 0, 0, bytearray()
        header, self._meta_header = self._meta_header, b""
        if kind in b"LK":
            name = _cstr(body)
            if kind == 0x4C:
                self._long_name = name
            else:
                self._long_link = name
            self._sync_slow()
            return
        try:
            pax = _parse_pax(body)
        except _Bad as e:
            raise self._fail("invalid PAX header: %s" % e, start) from None
        if kind == 0x78:  # 'x': applies to the next entry
            self._pax, self._pax_raw = pax, body
            self._sync_slow()
            return
        # 'g': Go's reader returns a global header as an entry of its own.
        h = _Header(header)
        xattrs: dict[bytes, bytes] = {}
        try:
            _merge_pax(pax, h, xattrs)
        except _Bad as e:
            raise self._fail("invalid PAX value: %s" % e, start) from None
        fields = _fields(h.name, 0, 0, 0, 0, _ZERO_TIME_UNIX, 0x67, b"", 0, 0, xattrs,
                         self._version == "v0")
        self._drain()
        self._begin(fields, h.name)
        rc = _file_end(ctx)
        if rc:
            raise _c_failed("rh_tarsum_file_end", rc, int(ctx.offset))
        self._pax, self._pax_raw, self._long_name, self._long_link = {}, b"", b"", b""
        self._sync_slow()

    # -- results --

    def finish(self) -> str:
        """The tarsum of everything fed so far, e.g. ``tarsum.v1+sha256:<hex>``.

        Raises TarSumError if the data stops inside a header or an entry's
        body.  Does not change the object (more data may follow).
        """
        if self._failed is not None:
            raise self._failed
        ctx = self._ctx
        mode = ctx.mode
        if mode == _MODE_BODY or mode == _MODE_META:
            raise TarSumError("tar data ends %d bytes before the end of an entry's body"
                              % ctx.remaining, int(ctx.offset))
        if mode == _MODE_HEADER and ctx.hdr_fill:
            raise TarSumError("tar data ends inside a header", int(ctx.offset - ctx.hdr_fill))
        self._drain()
        keys = self._entry_keys()
        sums = bytearray(self._sums)  # sorted below; the object stays as it is
        n = len(keys)
        if len(set(keys)) == n:
            # No duplicate paths: moby's order is plain order by sum, and raw
            # digests sort as their hex strings do.
            if n > 1:
                _sort_digests(_from_buffer(_BYTES_T, sums), _from_buffer(_BYTES_T, bytearray(32 * n)), n)
            text = binascii.hexlify(sums)
        else:
            text = "".join(_moby_order(sums, keys)).encode()
        h = hashlib.sha256(self._extra)
        h.update(text)
        return "%s+sha256:%s" % (VERSIONS[self._version], h.hexdigest())

    def _entry_keys(self) -> list[bytes]:
        """Each finished entry's duplicate key, in archive order (sums drained)."""
        keys = bytes(self._keys).split(b"\0")
        keys.pop()  # the empty piece after the last NUL (or of no keys at all)
        n = len(keys)
        for i, key in self._long_keys.items():
            if i < n:  # else the entry is still in progress
                keys[i] = key
        if n != len(self._sums) // 32:
            raise AssertionError("tarsum: %d keys for %d sums" % (n, len(self._sums) // 32))  # pragma: no cover
        return keys

    # -- state --

    def state(self) -> bytes:
        """The whole computation as bytes, for ``TarSum.from_state``.

        Format (big-endian): ``RHTS``, u8 format 1, u8 version (0 v0, 1 v1,
        2 dev), the C core's state (RH_TARSUM_STATE_SIZE bytes, see
        rh_tarsum.h), u8 zero-block-seen, u8 metadata kind (0 or the
        typeflag of the PAX/long-name body being gathered), u32 its size,
        u32 + bytes gathered so far, its 512-byte header when the kind is
        not 0, u32 + bytes of the pending PAX body, u32 + bytes of the
        pending GNU long name, the same for the long link, u32 + extra,
        u32 + the current entry's name when it is too long for the C
        state, u32 count + the 32-byte sums so far, then each entry's name
        as u32 + bytes.  The names are stored as duplicate keys (cleaned the
        way moby cleans them); cleaning is idempotent, so a state holding the
        names as in the archive restores to the same result.
        """
        if self._failed is not None:
            raise self._failed
        self._drain()
        cpart = ffi.new("uint8_t[]", _C_STATE)
        rc = lib.rh_tarsum_export(self._ctx, cpart)
        if rc:
            raise _c_failed("rh_tarsum_export", rc, int(self._ctx.offset))
        out = [_STATE_MAGIC, struct.pack(">BB", _STATE_FORMAT, _VERSION_CODES[self._version]),
               _buffer(cpart)[:],
               struct.pack(">BBI", self._zero_seen, self._meta_kind, self._meta_expected)]
        for b in (bytes(self._meta_buf),):
            out += [struct.pack(">I", len(b)), b]
        if self._meta_kind:
            out.append(self._meta_header)
        for b in (self._pax_raw, self._long_name, self._long_link, self._extra):
            out += [struct.pack(">I", len(b)), b]
        cur_long = self._cur_long_name if self._ctx.name_len == _NAME_LONG else b""
        out += [struct.pack(">I", len(cur_long)), cur_long]
        out += [struct.pack(">I", len(self._sums) // 32), bytes(self._sums)]
        for key in self._entry_keys():
            out += [struct.pack(">I", len(key)), key]
        return b"".join(out)

    @classmethod
    def from_state(cls, state: bytes | bytearray | memoryview) -> TarSum:
        """Restore a ``TarSum`` from ``state()``; ValueError if malformed."""
        b = bytes(state)
        r = _Reader(b)
        if r.take(4) != _STATE_MAGIC:
            raise ValueError("not a tarsum state (wrong magic)")
        fmt, vcode = r.unpack(">BB")
        if fmt != _STATE_FORMAT:
            raise ValueError("unsupported tarsum state format %d" % fmt)
        if vcode not in _CODE_VERSIONS:
            raise ValueError("unknown tarsum version code %d" % vcode)
        version = _CODE_VERSIONS[vcode]
        self = cls(version)
        ctx = self._ctx
        rc = lib.rh_tarsum_import(ctx, r.take(_C_STATE), _C_STATE)
        if rc:
            raise ValueError("invalid tarsum state: C core state rejected (%d)" % rc)
        zero_seen, kind, expected = r.unpack(">BBI")
        meta_buf = r.chunk()
        meta_header = r.take(_BLOCK) if kind else b""
        pax_raw, long_name, long_link, extra = r.chunk(), r.chunk(), r.chunk(), r.chunk()
        cur_long = r.chunk()
        (nsums,) = r.unpack(">I")
        sums = r.take(32 * nsums)
        names = [r.chunk() for _ in range(nsums)]
        if r.left():
            raise ValueError("invalid tarsum state: %d trailing bytes" % r.left())
        mode = ctx.mode
        if zero_seen > 1:
            raise ValueError("invalid tarsum state: bad zero-block flag")
        if bool(ctx.flags & _F_MTIME) != (version == "v0"):
            raise ValueError("invalid tarsum state: mtime flag disagrees with the version")
        if kind:
            if kind not in _META_TYPES or mode != _MODE_META:
                raise ValueError("invalid tarsum state: bad metadata kind")
            if not 0 < expected <= _MAX_SPECIAL or len(meta_buf) + ctx.remaining != expected:
                raise ValueError("invalid tarsum state: metadata sizes disagree")
            try:
                h = _Header(meta_header)
            except _Bad as e:
                raise ValueError("invalid tarsum state: metadata header: %s" % e) from None
            if h.typeflag != kind or h.size != expected:
                raise ValueError("invalid tarsum state: metadata header disagrees")
        elif mode == _MODE_META or expected or meta_buf:
            raise ValueError("invalid tarsum state: metadata without a kind")
        if (ctx.name_len == _NAME_LONG) != (len(cur_long) > _NAME_MAX) or (
                cur_long and ctx.name_len != _NAME_LONG):
            raise ValueError("invalid tarsum state: current long name disagrees")
        if 0 in long_name or 0 in long_link:
            raise ValueError("invalid tarsum state: NUL in a GNU long name")
        try:
            pax = _parse_pax(pax_raw)
        except _Bad as e:
            raise ValueError("invalid tarsum state: pending PAX header: %s" % e) from None
        if zero_seen and (kind or pax_raw or long_name or long_link
                          or mode not in (_MODE_HEADER, _MODE_DONE)):
            raise ValueError("invalid tarsum state: data pending after a zero block")
        self._zero_seen = bool(zero_seen)
        self._meta_kind, self._meta_expected, self._meta_buf = kind, expected, bytearray(meta_buf)
        self._meta_header = meta_header
        self._pax, self._pax_raw = pax, pax_raw
        self._long_name, self._long_link = long_name, long_link
        self._extra = extra
        self._sums = bytearray(sums)
        inline: list[bytes] = []
        for i, name in enumerate(names):
            key = _clean_name(name)
            if 0 in key:  # cannot sit in the NUL-separated keys
                self._long_keys[i] = key
                key = b""
            inline.append(key)
        self._keys = bytearray(b"".join(k + b"\0" for k in inline))
        if mode == _MODE_BODY and ctx.name_len == _NAME_LONG:  # that entry is in progress
            self._long_keys[nsums] = _clean_name(cur_long)
        self._cur_long_name = cur_long
        slow = bool(ctx.flags & _F_SLOW)
        self._sync_slow()
        if slow != bool(ctx.flags & _F_SLOW):
            raise ValueError("invalid tarsum state: slow-path flag disagrees with pending data")
        return self

    def __repr__(self) -> str:
        return "<TarSum %s at offset %d>" % (self._version, self.offset)


def _clean_name(name: bytes) -> bytes:
    """moby's path.Join(".", path.Join("/", name)): the key for duplicates.

    The C core computes the same (``clean_name`` in rh_tarsum.c) for the
    names it records; this one serves names too long for it and states.
    """
    out: list[bytes] = []
    for c in name.split(b"/"):
        if c == b"..":
            if out:
                out.pop()
        elif c and c != b".":
            out.append(c)
    return b"/".join(out) or b"."


def _moby_order(sums: bytes | bytearray, keys: list[bytes]) -> list[str]:
    """The per-entry hex sums (``sums``: 32 bytes each) in the order moby's
    SortBySums leaves them, given each entry's key (cleaned name)."""
    hexes = [sums[i:i + 32].hex() for i in range(0, len(sums), 32)]
    if len(set(keys)) == len(keys):
        return sorted(hexes)
    items = list(zip(hexes, keys, range(len(hexes))))

    def less(i: int, j: int) -> bool:
        a, b = items[i], items[j]
        if a[1] == b[1]:
            return a[2] < b[2]
        return a[0] < b[0]

    _go_sort(items, less)
    return [it[0] for it in items]


class _Reader:
    """Bounds-checked reads from a state blob; ValueError past the end."""

    def __init__(self, b: bytes) -> None:
        self._b = b
        self._pos = 0

    def take(self, n: int) -> bytes:
        if n > len(self._b) - self._pos:
            raise ValueError("invalid tarsum state: truncated")
        out = self._b[self._pos:self._pos + n]
        self._pos += n
        return out

    def unpack(self, fmt: str) -> tuple[int, ...]:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def chunk(self) -> bytes:
        (n,) = self.unpack(">I")
        return self.take(n)

    def left(self) -> int:
        return len(self._b) - self._pos


# --- Go's sort.Sort, replayed --------------------------------------------------
# moby's comparator is not a consistent order when paths repeat, so only the
# exact sequence of Less/Swap calls of Go's pdqsort (Go >= 1.19) reproduces
# its result.  This follows that algorithm operation for operation.

_T = TypeVar("_T")
_Less = Callable[[int, int], bool]  # Go's Less(i, j) over indices into data


def _go_sort(data: list[_T], less: _Less) -> None:
    n = len(data)
    if n > 1:
        _pdqsort(data, less, 0, n, n.bit_length())


def _swap(data: list[_T], i: int, j: int) -> None:
    data[i], data[j] = data[j], data[i]


def _insertion_sort(data: list[_T], less: _Less, a: int, b: int) -> None:
    for i in range(a + 1, b):
        j = i
        while j > a and less(j, j - 1):
            _swap(data, j, j - 1)
            j -= 1


def _sift_down(data: list[_T], less: _Less, lo: int, hi: int, first: int) -> None:
    root = lo
    while True:
        child = 2 * root + 1
        if child >= hi:
            return
        if child + 1 < hi and less(first + child, first + child + 1):
            child += 1
        if not less(first + root, first + child):
            return
        _swap(data, first + root, first + child)
        root = child


def _heap_sort(data: list[_T], less: _Less, a: int, b: int) -> None:
    hi = b - a
    for i in range((hi - 1) // 2, -1, -1):
        _sift_down(data, less, i, hi, a)
    for i in range(hi - 1, -1, -1):
        _swap(data, a, a + i)
        _sift_down(data, less, 0, i, a)


_UNKNOWN, _INCREASING, _DECREASING = 0, 1, 2
_MASK64 = (1 << 64) - 1


def _pdqsort(data: list[_T], less: _Less, a: int, b: int, limit: int) -> None:
    was_balanced = was_partitioned = True
    while True:
        length = b - a
        if length <= 12:
            _insertion_sort(data, less, a, b)
            return
        if limit == 0:
            _heap_sort(data, less, a, b)
            return
        if not was_balanced:
            _break_patterns(data, a, b)
            limit -= 1
        pivot, hint = _choose_pivot(less, a, b)
        if hint == _DECREASING:
            i, j = a, b - 1
            while i < j:
                _swap(data, i, j)
                i += 1
                j -= 1
            pivot = (b - 1) - (pivot - a)
            hint = _INCREASING
        if was_balanced and was_partitioned and hint == _INCREASING:
            if _partial_insertion_sort(data, less, a, b):
                return
        if a > 0 and not less(a - 1, pivot):
            a = _partition_equal(data, less, a, b, pivot)
            continue
        mid, was_partitioned = _partition(data, less, a, b, pivot)
        left, right = mid - a, b - mid
        threshold = length // 8
        if left < right:
            was_balanced = left >= threshold
            _pdqsort(data, less, a, mid, limit)
            a = mid + 1
        else:
            was_balanced = right >= threshold
            _pdqsort(data, less, mid + 1, b, limit)
            b = mid


def _partition(data: list[_T], less: _Less, a: int, b: int, pivot: int) -> tuple[int, bool]:
    _swap(data, a, pivot)
    i, j = a + 1, b - 1
    while i <= j and less(i, a):
        i += 1
    while i <= j and not less(j, a):
        j -= 1
    if i > j:
        _swap(data, j, a)
        return j, True
    _swap(data, i, j)
    i += 1
    j -= 1
    while True:
        while i <= j and less(i, a):
            i += 1
        while i <= j and not less(j, a):
            j -= 1
        if i > j:
            break
        _swap(data, i, j)
        i += 1
        j -= 1
    _swap(data, j, a)
    return j, False


def _partition_equal(data: list[_T], less: _Less, a: int, b: int, pivot: int) -> int:
    _swap(data, a, pivot)
    i, j = a + 1, b - 1
    while True:
        while i <= j and not less(a, i):
            i += 1
        while i <= j and less(a, j):
            j -= 1
        if i > j:
            return i
        _swap(data, i, j)
        i += 1
        j -= 1


def _partial_insertion_sort(data: list[_T], less: _Less, a: int, b: int) -> bool:
    i = a + 1
    for _ in range(5):
        while i < b and not less(i, i - 1):
            i += 1
        if i == b:
            return True
        if b - a < 50:
            return False
        _swap(data, i, i - 1)
        if i - a >= 2:
            j = i - 1
            while j >= 1:
                if not less(j, j - 1):
                    break
                _swap(data, j, j - 1)
                j -= 1
        if b - i >= 2:
            j = i + 1
            while j < b:
                if not less(j, j - 1):
                    break
                _swap(data, j, j - 1)
                j += 1
    return False


def _break_patterns(data: list[_T], a: int, b: int) -> None:
    length = b - a
    if length >= 8:
        r = length
        modulus = 1 << length.bit_length()
        for idx in range(a + (length // 4) * 2 - 1, a + (length // 4) * 2 + 2):
            r ^= (r << 13) & _MASK64
            r ^= r >> 7
            r ^= (r << 17) & _MASK64
            other = r & (modulus - 1)
            if other >= length:
                other -= length
            _swap(data, idx, a + other)


def _choose_pivot(less: _Less, a: int, b: int) -> tuple[int, int]:
    n = b - a
    swaps = [0]
    i, j, k = a + n // 4, a + n // 4 * 2, a + n // 4 * 3

    def order2(x: int, y: int) -> tuple[int, int]:
        if less(y, x):
            swaps[0] += 1
            return y, x
        return x, y

    def median(x: int, y: int, z: int) -> int:
        x, y = order2(x, y)
        y, z = order2(y, z)
        x, y = order2(x, y)
        return y

    if n >= 8:
        if n >= 50:
            i = median(i - 1, i, i + 1)
            j = median(j - 1, j, j + 1)
            k = median(k - 1, k, k + 1)
        j = median(i, j, k)
    if swaps[0] == 0:
        return j, _INCREASING
    if swaps[0] == 12:
        return j, _DECREASING
    return j, _UNKNOWN


# --- the string form -----------------------------------------------------------


def parse_tarsum(s: str) -> tuple[str, str, str]:
    """Split ``tarsum.v1+sha256:<hex>`` into ``("v1", "sha256", "<hex>")``.

    Versions: ``tarsum`` (v0), ``tarsum.v1``, ``tarsum.dev``; algorithms
    sha256 and sha512 with lower-case hex of the right length.  Raises
    ValueError otherwise.
    """
    if not isinstance(s, str):
        raise TypeError("tarsum must be a str")
    m = _TARSUM_RE.fullmatch(s)
    if m is None:
        raise ValueError("not a tarsum string: %r" % (s[:100],))
    label, alg, hexdigest = m.groups()
    if len(hexdigest) != _HEX_LENGTHS[alg]:
        raise ValueError("%s digest must be %d hex digits" % (alg, _HEX_LENGTHS[alg]))
    return _LABEL_TO_VERSION[label], alg, hexdigest


def format_tarsum(version: str, algorithm: str, hexdigest: str) -> str:
    """The string form of a tarsum; the inverse of ``parse_tarsum``."""
    if version not in VERSIONS:
        raise ValueError("unknown tarsum version %r" % (version,))
    if algorithm not in _HEX_LENGTHS:
        raise ValueError("unknown tarsum algorithm %r" % (algorithm,))
    s = "%s+%s:%s" % (VERSIONS[version], algorithm, hexdigest)
    parse_tarsum(s)
    return s
