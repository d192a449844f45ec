"""Tests for ``registry.hashing``: the resumable SHA-256 of the C core.

Every test runs once per block function (``portable`` and ``shani``; the
latter is skipped only on a CPU without the SHA extensions), through the
module-scoped autouse ``implementation`` fixture.  Digests are checked
against ``hashlib``; state bytes against the published Go vectors and a
small pure-Python SHA-256 compression function written here as an oracle.
"""

from __future__ import annotations

import array
import hashlib
import os
import pickle
import random
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import registry
from registry import hashing
from registry.hashing import Sha256

VECTORS = Path(__file__).resolve().parent / "fixtures" / "vectors" / "sha256-go-states.txt"
GO_INPUT_SEED = 20261128

IMPLEMENTATIONS = ["portable", "shani"]


@pytest.fixture(scope="module", autouse=True, params=IMPLEMENTATIONS)
def implementation(request: pytest.FixtureRequest) -> Iterator[str]:
    """Select the block function for every test in this module, then restore ``auto``."""
    name: str = request.param
    if name == "shani" and not hashing.cpu_has_sha_extensions():
        pytest.skip("this CPU lacks the SHA extensions")
    assert hashing.set_implementation(name) == name
    yield name
    hashing.set_implementation("auto")


# --- A pure-Python SHA-256 compression function: the oracle for state words.

_K = [
    int(x, 16)
    for x in """
    428a2f98 71374491 b5c0fbcf e9b5dba5 3956c25b 59f111f1 923f82a4 ab1c5ed5
    d807aa98 12835b01 243185be 550c7dc3 72be5d74 80deb1fe 9bdc06a7 c19bf174
    e49b69c1 efbe4786 0fc19dc6 240ca1cc 2de92c6f 4a7484aa 5cb0a9dc 76f988da
    983e5152 a831c66d b00327c8 bf597fc7 c6e00bf3 d5a79147 06ca6351 14292967
    27b70a85 2e1b2138 4d2c6dfc 53380d13 650a7354 766a0abb 81c2c92e 92722c85
    a2bfe8a1 a81a664b c24b8b70 c76c51a3 d192e819 d6990624 f40e3585 106aa070
    19a4c116 1e376c08 2748774c 34b0bcb5 391c0cb3 4ed8aa4a 5b9cca4f 682e6ff3
    748f82ee 78a5636f 84c87814 8cc70208 90befffa a4506ceb bef9a3f7 c67178f2
    """.split()
]
_H0 = [0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19]
_M = 0xFFFFFFFF


def _ror(x: int, n: int) -> int:
    return ((x >> n) | (x << (32 - n))) & _M


def _compress(h: list[int], block: bytes) -> list[int]:
    """One SHA-256 compression of a 64-byte block (FIPS 180-4, section 6.2.2)."""
    w = list(struct.unpack(">16I", block))
    for i in range(16, 64):
        s0 = _ror(w[i - 15], 7) ^ _ror(w[i - 15], 18) ^ (w[i - 15] >> 3)
        s1 = _ror(w[i - 2], 17) ^ _ror(w[i - 2], 19) ^ (w[i - 2] >> 10)
        w.append((w[i - 16] + s0 + w[i - 7] + s1) & _M)
    a, b, c, d, e, f, g, hh = h
    for i in range(64):
        t1 = (hh + (_ror(e, 6) ^ _ror(e, 11) ^ _ror(e, 25)) + ((e & f) ^ (~e & g)) + _K[i] + w[i]) & _M
        t2 = ((_ror(a, 2) ^ _ror(a, 13) ^ _ror(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))) & _M
        a, b, c, d, e, f, g, hh = (t1 + t2) & _M, a, b, c, (d + t1) & _M, e, f, g
    return [(x + y) & _M for x, y in zip(h, [a, b, c, d, e, f, g, hh])]


def expected_state(data: bytes) -> bytes:
    """The Go MarshalBinary state after hashing ``data``, computed independently."""
    h = list(_H0)
    full = len(data) - len(data) % 64
    for off in range(0, full, 64):
        h = _compress(h, data[off : off + 64])
    tail = data[full:]
    return b"sha\x03" + struct.pack(">8I", *h) + tail + bytes(64 - len(tail)) + struct.pack(">Q", len(data))


def test_oracle_matches_hashlib() -> None:
    """The pure-Python oracle itself is right: its final digest equals hashlib's."""
    data = b"abc"
    block = data + b"\x80" + bytes(64 - 1 - 8 - len(data)) + struct.pack(">Q", len(data) * 8)
    assert struct.pack(">8I", *_compress(list(_H0), block)) == hashlib.sha256(data).digest()


# --- Implementation selection.


def test_implementation_is_the_selected_one(implementation: str) -> None:
    assert hashing.implementation() == implementation


def test_cpu_detection_agrees_with_the_kernel() -> None:
    cpuinfo = Path("/proc/cpuinfo")
    if sys.platform != "linux" or os.uname().machine != "x86_64" or not cpuinfo.exists():
        pytest.skip("needs x86-64 Linux to compare with /proc/cpuinfo")
    flags = next(line for line in cpuinfo.read_text().splitlines() if line.startswith("flags"))
    assert hashing.cpu_has_sha_extensions() is ("sha_ni" in flags.split())


def test_unknown_implementation_is_refused(implementation: str) -> None:
    with pytest.raises(ValueError, match="unknown SHA-256 implementation"):
        hashing.set_implementation("openssl")
    assert hashing.implementation() == implementation


def test_shani_refused_without_sha_extensions(implementation: str) -> None:
    if hashing.cpu_has_sha_extensions():
        with pytest.raises(ValueError):
            hashing.set_implementation("bogus")
        return
    with pytest.raises(ValueError, match="not supported on this CPU"):
        hashing.set_implementation("shani")
    assert hashing.implementation() == implementation


# --- NIST vectors (FIPS 180-2 appendix B).

NIST = [
    (b"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    (b"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
    (
        b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
    ),
    (b"a" * 1_000_000, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"),
]


@pytest.mark.parametrize("message,hexdigest", NIST, ids=["empty", "abc", "448-bit", "million-a"])
def test_nist_vectors(message: bytes, hexdigest: str) -> None:
    assert Sha256(message).hexdigest() == hexdigest
    h = Sha256()
    for off in range(0, len(message), 4093):
        h.update(message[off : off + 4093])
    assert h.hexdigest() == hexdigest
    assert h.digest() == bytes.fromhex(hexdigest)
    assert h.bytes_hashed == len(message)


def test_million_a_one_byte_at_a_time_for_a_while() -> None:
    """Byte-wise feeding exercises the buffering path at every fill level."""
    h = Sha256()
    for _ in range(1000):
        h.update(b"a")
    h.update(b"a" * 999_000)
    assert h.hexdigest() == NIST[3][1]


# --- Attributes and basic behaviour.


def test_attributes() -> None:
    h = Sha256()
    ref = hashlib.sha256()
    assert (h.digest_size, h.block_size, h.name) == (ref.digest_size, ref.block_size, ref.name)
    assert (Sha256.digest_size, Sha256.block_size, Sha256.name) == (32, 64, "sha256")
    assert h.bytes_hashed == 0
    h.update(b"x" * 100)
    assert h.bytes_hashed == 100


def test_digest_does_not_end_the_hash() -> None:
    h = Sha256(b"hello ")
    first = h.digest()
    assert h.digest() == first == hashlib.sha256(b"hello ").digest()
    h.update(b"world")
    assert h.hexdigest() == hashlib.sha256(b"hello world").hexdigest()


def test_update_accepts_buffers_without_changing_the_result() -> None:
    data = bytes(range(256)) * 40
    expected = hashlib.sha256(data).hexdigest()

    class Subbytes(bytes):
        pass

    for form in (
        bytearray(data),
        memoryview(data),
        memoryview(bytearray(data)),
        Subbytes(data),
        array.array("B", data),
        array.array("I", data),  # hashed as its raw bytes, like hashlib
    ):
        assert Sha256(form).hexdigest() == expected, type(form)
    big = bytearray(b"\xff" * 10) + bytearray(data) + bytearray(b"\xee" * 10)
    assert Sha256(memoryview(big)[10:-10]).hexdigest() == expected


def test_update_hashes_the_buffer_contents_at_call_time() -> None:
    buf = bytearray(b"before")
    h = Sha256(buf)
    buf[:] = b"AFTER!"
    assert h.hexdigest() == hashlib.sha256(b"before").hexdigest()


@pytest.mark.parametrize("bad", ["text", 42, None, [1, 2, 3], (1, 2), 3.0, object()])
def test_update_rejects_non_buffers(bad: object) -> None:
    h = Sha256(b"abc")
    with pytest.raises(TypeError):
        h.update(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Sha256(bad)  # type: ignore[arg-type]
    assert h.hexdigest() == hashlib.sha256(b"abc").hexdigest()


def test_update_rejects_non_contiguous_views() -> None:
    h = Sha256()
    with pytest.raises(BufferError):
        h.update(memoryview(b"abcdef")[::2])
    assert h.bytes_hashed == 0


def test_copy_is_independent() -> None:
    h = Sha256(b"common prefix " * 7)
    ref = hashlib.sha256(b"common prefix " * 7)
    c = h.copy()
    rc = ref.copy()
    h.update(b"left")
    ref.update(b"left")
    c.update(b"right branch that is longer than one block" * 3)
    rc.update(b"right branch that is longer than one block" * 3)
    cc = c.copy()
    c.update(b"!")
    rc2 = rc.copy()
    rc.update(b"!")
    assert h.hexdigest() == ref.hexdigest()
    assert c.hexdigest() == rc.hexdigest()
    assert cc.hexdigest() == rc2.hexdigest()
    assert cc.bytes_hashed == c.bytes_hashed - 1
    assert type(c) is Sha256


def test_pickle_round_trip_uses_the_state() -> None:
    h = Sha256(b"z" * 77)
    restored = pickle.loads(pickle.dumps(h))
    assert restored.state() == h.state()
    restored.update(b"tail")
    assert restored.hexdigest() == hashlib.sha256(b"z" * 77 + b"tail").hexdigest()


# --- State round trip at every split point.


def test_state_round_trip_at_every_split_point() -> None:
    data = random.Random(7).randbytes(300)
    expected = hashlib.sha256(data).hexdigest()
    for split in range(len(data) + 1):
        h = Sha256(data[:split])
        state = h.state()
        assert len(state) == hashing.STATE_SIZE == 108
        assert state == expected_state(data[:split]), split
        resumed = Sha256.from_state(state)
        assert resumed.bytes_hashed == split
        assert resumed.state() == state
        # The resumed hash and the original continue identically.
        resumed.update(data[split:])
        h.update(data[split:])
        assert resumed.hexdigest() == h.hexdigest() == expected, split


def test_state_accepts_bytearray_and_memoryview() -> None:
    state = Sha256(b"abcdef").state()
    for form in (bytearray(state), memoryview(state), memoryview(b"\0" + state)[1:]):
        assert Sha256.from_state(form).state() == state


def test_known_abc_state() -> None:
    """The vector given in issue 2: the state after hashing 'abc'."""
    known = bytes.fromhex(
        "73686103"
        "6a09e667bb67ae853c6ef372a54ff53a510e527f9b05688c1f83d9ab5be0cd19"
        "616263" + "00" * 61 + "0000000000000003"
    )
    assert Sha256(b"abc").state() == known
    assert Sha256.from_state(known).hexdigest() == hashlib.sha256(b"abc").hexdigest()


def _go_vectors() -> list[tuple[int, bytes, str]]:
    rows = []
    for line in VECTORS.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        offset, state_hex, digest_hex = line.split()
        rows.append((int(offset), bytes.fromhex(state_hex), digest_hex))
    return rows


def test_go_marshal_binary_vectors() -> None:
    """States written by Go's crypto/sha256 MarshalBinary: we write the same bytes and resume theirs."""
    data = random.Random(GO_INPUT_SEED).randbytes(1000)
    rows = _go_vectors()
    assert len(rows) == 13
    for offset, go_state, digest_hex in rows:
        assert Sha256(data[:offset]).state() == go_state, offset
        resumed = Sha256.from_state(go_state)
        assert resumed.bytes_hashed == offset
        resumed.update(data[offset:])
        assert resumed.hexdigest() == digest_hex == hashlib.sha256(data).hexdigest()


# --- Malformed states.


def _valid_state() -> bytes:
    return Sha256(b"0123456789" * 13).state()  # 130 bytes: 2 buffered


@pytest.mark.parametrize("length", [n for n in range(201) if n != 108])
def test_state_of_wrong_length_is_refused(length: int) -> None:
    base = (_valid_state() * 2)[:length]
    with pytest.raises(ValueError, match="wrong length"):
        Sha256.from_state(base)
    with pytest.raises(ValueError, match="wrong length"):
        Sha256.from_state(bytearray(base))


@pytest.mark.parametrize(
    "magic", [b"sha\x02", b"sha\x04", b"sha\x00", b"SHA\x03", b"shb\x03", b"\0\0\0\0", b"md5\x01", b"sha\x83"]
)
def test_state_with_wrong_magic_is_refused(magic: bytes) -> None:
    with pytest.raises(ValueError, match="wrong magic"):
        Sha256.from_state(magic + _valid_state()[4:])


def test_state_with_bytes_past_the_buffered_count_is_refused() -> None:
    data = random.Random(3).randbytes(64 * 3)
    for used in range(64):
        state = bytearray(Sha256(data[: 128 + used]).state())
        for pos in range(used, 64):
            bad = bytearray(state)
            bad[36 + pos] = 0x01 + pos % 255
            with pytest.raises(ValueError, match="inconsistent"):
                Sha256.from_state(bytes(bad))
        Sha256.from_state(bytes(state))  # the untouched state is fine


@pytest.mark.parametrize("count", [2**61, 2**61 + 5, 2**62, 2**63, 2**64 - 64, 2**64 - 1])
def test_state_with_huge_byte_count_is_refused(count: int) -> None:
    state = _valid_state()[:36] + bytes(64) + struct.pack(">Q", count - count % 64)
    with pytest.raises(ValueError, match="2\\*\\*61"):
        Sha256.from_state(state)


def test_largest_byte_count_is_accepted_and_digestible() -> None:
    count = 2**61 - 64
    state = _valid_state()[:36] + bytes(64) + struct.pack(">Q", count)
    h = Sha256.from_state(state)
    assert h.bytes_hashed == count
    assert len(h.digest()) == 32
    assert h.state() == state


@pytest.mark.parametrize("bad", ["sha\x03" + "\0" * 104, None, 108, [0] * 108])
def test_state_of_wrong_type_is_refused(bad: object) -> None:
    with pytest.raises(TypeError):
        Sha256.from_state(bad)  # type: ignore[arg-type]


# --- Another process.


def _run_child(code: str, stdin: bytes, impl: str) -> bytes:
    """Run ``code`` in a fresh interpreter importing this same ``registry`` package."""
    package_root = str(Path(registry.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = package_root + os.pathsep + env.get("PYTHONPATH", "")
    env["RH_TEST_IMPL"] = impl
    proc = subprocess.run(
        [sys.executable, "-c", code], input=stdin, capture_output=True, env=env, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


WRITER = """
import os, sys
from registry import hashing
hashing.set_implementation(os.environ["RH_TEST_IMPL"])
h = hashing.Sha256(sys.stdin.buffer.read())
sys.stdout.buffer.write(h.state())
"""

FINISHER = """
import os, sys
from registry import hashing
hashing.set_implementation(os.environ["RH_TEST_IMPL"])
blob = sys.stdin.buffer.read()
h = hashing.Sha256.from_state(blob[:108])
h.update(blob[108:])
sys.stdout.write(h.hexdigest())
"""


def test_state_written_by_one_process_finished_by_another(implementation: str) -> None:
    """A writer process hashes a prefix and exits; a second process resumes from its state."""
    data = random.Random(11).randbytes(100_000 + 37)
    split = 65_536 + 29
    other = "portable" if implementation == "shani" else ("shani" if hashing.cpu_has_sha_extensions() else "portable")
    state = _run_child(WRITER, data[:split], implementation)
    assert state == Sha256(data[:split]).state()
    digest = _run_child(FINISHER, state + data[split:], other).decode()
    assert digest == hashlib.sha256(data).hexdigest()


# --- Threads.


def test_two_threads_hash_correctly_at_the_same_time() -> None:
    rng = random.Random(5)
    inputs = [rng.randbytes(3 * 1024 * 1024 + 17), rng.randbytes(2 * 1024 * 1024 + 3)]
    results: dict[int, str] = {}
    barrier = threading.Barrier(2)

    def work(i: int) -> None:
        h = Sha256()
        barrier.wait()
        view = memoryview(inputs[i])
        for off in range(0, len(view), 65_536 + i):
            h.update(view[off : off + 65_536 + i])
            if off % (1 << 20) < 65_536:
                h = Sha256.from_state(h.state())  # export/import under contention too
        results[i] = h.hexdigest()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: hashlib.sha256(inputs[i]).hexdigest() for i in range(2)}


def test_update_releases_the_gil() -> None:
    """Another thread runs Python code while one thread is inside update calls.

    The switch interval is raised to one second, so a thread holding the GIL
    is not asked to give it up in the time this test takes.  If update held
    the GIL, the worker would run from ``started.set()`` through all its
    calls to ``done.append`` without the main thread getting in, and the main
    loop would see ``done`` at once (zero spins).  With the GIL released, the
    main thread takes it during one of the C calls (64 of them, so a main
    thread slow to be scheduled on a busy machine still finds one) and keeps
    it: it spins to the limit before ``join`` lets the worker go on.  No
    clock is read.
    """
    data = bytes(64 * 1024 * 1024)  # calloc'd zero pages: cheap to make and to read
    started = threading.Event()
    done: list[str] = []
    limit = 200_000

    def work() -> None:
        h = Sha256()
        view = memoryview(data)
        chunks = [view[off : off + (1 << 20)] for off in range(0, len(data), 1 << 20)]
        started.set()
        for chunk in chunks:
            h.update(chunk)
        done.append(h.hexdigest())

    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1.0)
    try:
        worker = threading.Thread(target=work)
        worker.start()
        started.wait()
        spins = 0
        while not done and spins < limit:
            spins += 1
        worker.join()
    finally:
        sys.setswitchinterval(old_interval)
    assert done == [hashlib.sha256(data).hexdigest()]
    assert spins > 0
