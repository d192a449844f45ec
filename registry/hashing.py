"""The Python face of the C core's resumable SHA-256 (``registry._hashing``).

``Sha256`` behaves like ``hashlib.sha256`` (``update``, ``digest``,
``hexdigest``, ``copy``, ``digest_size``, ``block_size``, ``name``) and adds
what a resumable upload needs:

* ``bytes_hashed``: the total number of bytes fed so far;
* ``state()`` / ``Sha256.from_state(b)``: the hash state as 108 bytes in
  exactly the format of Go's ``crypto/sha256`` ``MarshalBinary`` (magic
  ``sha\\x03``, the eight state words big-endian, the 64-byte block buffer
  with its unused tail zeroed, the byte count as a big-endian uint64), so a
  state written by CNCF Distribution into ``hashstates/sha256/<offset>`` can
  be resumed here and the reverse.

The C call releases the GIL, so threads hashing different objects run in
parallel.  One object must not be updated from two threads at once: the C
core stays memory-safe under such a race, but the digest is then garbage.

``set_implementation`` chooses the block function process-wide (``"shani"``
for the x86 SHA extensions, ``"portable"`` for plain C, ``"auto"`` for the
best the CPU has); it exists so tests can exercise both.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Final

from registry._hashing import ffi, lib

if TYPE_CHECKING:
    from typing_extensions import Buffer  # any object with the buffer protocol

__all__ = [
    "STATE_SIZE",
    "Sha256",
    "cpu_has_sha_extensions",
    "implementation",
    "set_implementation",
]

#: Length of a marshalled state, in bytes.
STATE_SIZE: Final = lib.RH_SHA256_STATE_SIZE

_IMPLEMENTATIONS: Final = {
    "auto": lib.RH_SHA256_IMPL_AUTO,
    "portable": lib.RH_SHA256_IMPL_PORTABLE,
    "shani": lib.RH_SHA256_IMPL_SHANI,
}
_IMPLEMENTATION_NAMES: Final = {
    lib.RH_SHA256_IMPL_PORTABLE: "portable",
    lib.RH_SHA256_IMPL_SHANI: "shani",
}

_STATE_ERRORS: Final = {
    lib.RH_SHA256_E_LENGTH: "wrong length (a SHA-256 state is %d bytes)" % STATE_SIZE,
    lib.RH_SHA256_E_MAGIC: "wrong magic (a SHA-256 state starts with b'sha\\x03')",
    lib.RH_SHA256_E_INCONSISTENT: (
        "inconsistent buffer: non-zero bytes past the buffered count (byte count mod 64)"
    ),
    lib.RH_SHA256_E_TOO_LONG: "byte count of 2**61 or more is beyond SHA-256's message length",
}

# Module-level bindings keep attribute lookups off the per-call path.
_new = ffi.new
_from_buffer = ffi.from_buffer
_buffer = ffi.buffer
_memmove = ffi.memmove
_CTX_SIZE: Final = ffi.sizeof("rh_sha256_ctx")
# Pre-parsed C types: ffi.new / ffi.from_buffer skip the type-string parse.
_CTX_P = ffi.typeof("rh_sha256_ctx *")
_DIGEST_T = ffi.typeof("uint8_t[32]")
_STATE_T = ffi.typeof("uint8_t[%d]" % lib.RH_SHA256_STATE_SIZE)
_BYTES_T = ffi.typeof("uint8_t[]")
_init = lib.rh_sha256_init
_update = lib.rh_sha256_update
_final = lib.rh_sha256_final
_marshal = lib.rh_sha256_marshal
_unmarshal = lib.rh_sha256_unmarshal
_object_new = object.__new__


class _OutBuffers(threading.local):
    """Per-thread C output buffers for ``state()`` and ``digest()``.

    Allocating a fresh C array and a ``ffi.buffer`` over it costs more than
    the C call itself; reusing one per thread leaves a marshal call plus one
    bytes copy.  Per thread, because the C call releases the GIL: a buffer
    shared between threads could be overwritten between the C call and the
    copy.  (On one thread only a signal handler that itself exported a state
    between those two steps could interleave; the registry installs none.)
    """

    def __init__(self) -> None:
        self.state = _new(_STATE_T)
        self.state_bytes = _buffer(self.state)
        self.digest = _new(_DIGEST_T)
        self.digest_bytes = _buffer(self.digest)


_out = _OutBuffers()


class Sha256:
    """A resumable SHA-256 hash; see the module docstring.

    ``Sha256(data)`` is ``Sha256()`` followed by ``update(data)``.
    """

    __slots__ = ("_ctx",)

    digest_size: Final = 32
    block_size: Final = 64
    name: Final = "sha256"

    def __init__(self, data: Buffer = b"") -> None:
        ctx = _new(_CTX_P)
        _init(ctx)
        self._ctx = ctx
        if data or type(data) is not bytes:  # type-check every non-bytes value
            self.update(data)

    def update(self, data: Buffer) -> None:
        """Feed ``data`` into the hash without copying it.

        Accepts bytes, bytearray, memoryview and any other C-contiguous
        buffer (hashed as its raw bytes, like hashlib).  Raises TypeError
        for str or any non-buffer, BufferError for a non-contiguous view.
        """
        if type(data) is bytes:
            # cffi passes a bytes object's own storage: no copy.
            _update(self._ctx, data, len(data))
            return
        try:
            view = _from_buffer(_BYTES_T, data)
        except TypeError:
            if isinstance(data, str):
                raise TypeError("Strings must be encoded before hashing") from None
            raise TypeError(
                "object supporting the buffer API required, not %s" % type(data).__name__
            ) from None
        _update(self._ctx, view, len(view))

    def digest(self) -> bytes:
        """Return the 32-byte digest of everything fed so far; the hash can continue."""
        out = _out
        _final(self._ctx, out.digest)
        digest: bytes = out.digest_bytes[:]
        return digest

    def hexdigest(self) -> str:
        """Return the digest as 64 lowercase hex characters."""
        return self.digest().hex()

    def copy(self) -> Sha256:
        """Return an independent copy of this hash (a memmove of the C context)."""
        other = _object_new(Sha256)
        ctx = _new(_CTX_P)
        _memmove(ctx, self._ctx, _CTX_SIZE)
        other._ctx = ctx
        return other

    @property
    def bytes_hashed(self) -> int:
        """The total number of bytes fed so far."""
        return int(self._ctx.len)

    def state(self) -> bytes:
        """Return the hash state: 108 bytes in Go's ``crypto/sha256`` MarshalBinary format."""
        out = _out
        _marshal(self._ctx, out.state)
        state: bytes = out.state_bytes[:]
        return state

    @classmethod
    def from_state(cls, state: Buffer) -> Sha256:
        """Return a hash resumed from ``state`` (as written by ``state()`` or by Go).

        Raises ValueError naming the problem when ``state`` is the wrong
        length, has the wrong magic, is inconsistent (non-zero bytes past
        the buffered count) or claims 2**61 bytes or more; TypeError when it
        is not a buffer.
        """
        ctx = _new(_CTX_P)
        if type(state) is bytes:
            rc = _unmarshal(ctx, state, len(state))
        else:
            if isinstance(state, str):
                raise TypeError("a SHA-256 state is bytes, not str")
            try:
                view = _from_buffer(_BYTES_T, state)
            except TypeError:
                raise TypeError(
                    "a SHA-256 state is bytes, not %s" % type(state).__name__
                ) from None
            rc = _unmarshal(ctx, view, len(view))
        if rc:
            raise ValueError(
                "invalid SHA-256 state: " + _STATE_ERRORS.get(rc, "error %d" % rc)
            )
        self = _object_new(cls)
        self._ctx = ctx
        return self

    def __reduce__(self) -> tuple[object, tuple[bytes]]:
        """Pickle through the portable state format."""
        return (_from_state, (self.state(),))

    def __repr__(self) -> str:
        return "<Sha256 bytes_hashed=%d>" % self.bytes_hashed


def _from_state(state: bytes) -> Sha256:
    """Unpickling helper: ``Sha256.from_state``."""
    return Sha256.from_state(state)


def cpu_has_sha_extensions() -> bool:
    """Return True when this CPU has the x86 SHA extensions (SHA-NI)."""
    return bool(lib.rh_sha256_cpu_has_shani())


def implementation() -> str:
    """Return the name of the active block function: ``"shani"`` or ``"portable"``."""
    return _IMPLEMENTATION_NAMES[lib.rh_sha256_get_impl()]


def set_implementation(name: str) -> str:
    """Choose the block function process-wide and return the name now active.

    ``name`` is ``"auto"`` (SHA-NI when the CPU has it), ``"portable"`` or
    ``"shani"``.  Raises ValueError for an unknown name or for ``"shani"``
    on a CPU without the SHA extensions (nothing changes then).
    """
    try:
        code = _IMPLEMENTATIONS[name]
    except KeyError:
        raise ValueError(
            "unknown SHA-256 implementation %r (choose from %s)"
            % (name, ", ".join(sorted(_IMPLEMENTATIONS)))
        ) from None
    active = lib.rh_sha256_set_impl(code)
    if active < 0:
        raise ValueError("SHA-256 implementation %r is not supported on this CPU" % name)
    return _IMPLEMENTATION_NAMES[active]
