"""Tests for registry.tarsum: moby's published vectors, an independent
reference built on the ``tarfile`` module, every chunking, state round trips
(in this process and through another one), and hostile input."""

from __future__ import annotations

import hashlib
import io
import random
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registry.tarsum import TarSum, TarSumError, format_tarsum, parse_tarsum

VECTORS = Path(__file__).resolve().parent / "fixtures" / "vectors" / "tarsum-moby"
LABELS = {"tarsum": "v0", "tarsum.v1": "v1", "tarsum.dev": "dev"}


def _expected() -> list[tuple[str, str, str]]:
    out = []
    for line in (VECTORS / "EXPECTED").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            out.append(tuple(line.split()))  # type: ignore[arg-type]
    return out  # type: ignore[return-value]


def tarsum(data: bytes, version: str = "v1", extra: bytes = b"", fast: bool = True,
           chunk: int | None = None) -> str:
    t = TarSum(version, extra, _fast=fast)
    if chunk is None:
        t.update(data)
    else:
        for i in range(0, len(data), chunk):
            t.update(memoryview(data)[i:i + chunk])
    return t.finish()


# --- published vectors ---------------------------------------------------------


@pytest.mark.parametrize("fast", [True, False], ids=["c-fast-path", "python-path"])
@pytest.mark.parametrize("case", _expected(), ids=lambda c: "%s-%s" % (c[0].split("+")[0], c[1]))
def test_moby_vectors(case: tuple[str, str, str], fast: bool) -> None:
    expected, tar, extra = case
    version = LABELS[expected.split("+")[0]]
    data = (VECTORS / tar).read_bytes()
    payload = (VECTORS / extra).read_bytes() if extra != "-" else b""
    assert tarsum(data, version, payload, fast=fast) == expected
    assert tarsum(data, version, payload, fast=fast, chunk=97) == expected


# --- an independent reference ----------------------------------------------------


def _b(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


def reference_tarsum(data: bytes, version: str, extra: bytes = b"") -> str:
    """Docker's tarsum computed from ``tarfile``'s view of the archive."""
    entries = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        for pos, ti in enumerate(tf.getmembers()):
            name = ti.name + ("/" if ti.isdir() else "")
            h = hashlib.sha256()
            fields = [("name", _b(name)), ("mode", b"%d" % ti.mode), ("uid", b"%d" % ti.uid),
                      ("gid", b"%d" % ti.gid), ("size", b"%d" % ti.size)]
            if version == "v0":
                fields.append(("mtime", b"%d" % int(ti.mtime // 1)))
            fields += [("typeflag", ti.type), ("linkname", _b(ti.linkname)), ("uname", b""),
                       ("gname", b""), ("devmajor", b"%d" % ti.devmajor),
                       ("devminor", b"%d" % ti.devminor)]
            if version != "v0":
                xattrs = sorted((_b(k[len("SCHILY.xattr."):]), _b(v))
                                for k, v in ti.pax_headers.items()
                                if k.startswith("SCHILY.xattr.") and v)
                fields += [(k.decode("latin-1"), v) for k, v in xattrs]
            for k, v in fields:
                h.update(k.encode("latin-1") + v)
            if ti.isreg():
                f = tf.extractfile(ti)
                assert f is not None
                h.update(f.read())
            key = "/".join(p for p in name.split("/") if p not in ("", ".")) or "."
            entries.append((h.hexdigest(), key, pos))
    if len({e[1] for e in entries}) == len(entries):
        entries.sort()
    else:
        # moby compares same-path entries by position and others by sum; for
        # up to 12 entries Go's sort.Sort is a plain insertion sort.
        assert len(entries) <= 12, "reference handles duplicates only in small tars"

        def less(a: tuple[str, str, int], b: tuple[str, str, int]) -> bool:
            return a[2] < b[2] if a[1] == b[1] else a[0] < b[0]

        for i in range(1, len(entries)):
            j = i
            while j > 0 and less(entries[j], entries[j - 1]):
                entries[j], entries[j - 1] = entries[j - 1], entries[j]
                j -= 1
    final = hashlib.sha256(extra)
    for e in entries:
        final.update(e[0].encode())
    label = {"v0": "tarsum", "v1": "tarsum.v1", "dev": "tarsum.dev"}[version]
    return "%s+sha256:%s" % (label, final.hexdigest())


def make_tar(fmt: int, seed: int = 0, dup: bool = False) -> bytes:
    """A tar with every header kind ``fmt`` can express."""
    rnd = random.Random(seed)
    buf = io.BytesIO()
    long_dir = "d" * 60 + "/" + "e" * 70  # > 100 bytes: prefix / long name / PAX path
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        def add(name: str, type_: bytes = tarfile.REGTYPE, size: int = 0, **kw: object) -> None:
            ti = tarfile.TarInfo(name)
            ti.type = type_
            ti.mtime = 1_600_000_000 + rnd.randrange(1000)
            ti.mode = 0o644
            ti.uid, ti.gid, ti.uname, ti.gname = 1000, 1000, "user", "group"
            for k, v in kw.items():
                setattr(ti, k, v)
            body = rnd.randbytes(size) if type_ == tarfile.REGTYPE else b""
            ti.size = len(body)
            tf.addfile(ti, io.BytesIO(body) if body else None)

        add("dir", tarfile.DIRTYPE, mode=0o755)
        for size in (0, 1, 511, 512, 513, 5000):
            add("dir/file%d" % size, size=size)
        add("dir/link", tarfile.SYMTYPE, linkname="file1")
        add("dir/hard", tarfile.LNKTYPE, linkname="dir/file1")
        add("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3)
        add("dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0)
        add("fifo", tarfile.FIFOTYPE)
        add(long_dir + "/file", size=7)
        if fmt != tarfile.USTAR_FORMAT:
            add("x" * 150 + "/very-long-name-" + "y" * 40, size=3)
            add("dir/longlink", tarfile.SYMTYPE, linkname="z" * 180)
            add("dir/big-ids", size=2, uid=3_000_000, gid=4_000_000)
        if fmt == tarfile.PAX_FORMAT:
            add("dir/xattrs", size=4, pax_headers={"SCHILY.xattr.user.b": "2",
                                                   "SCHILY.xattr.security.a": "1",
                                                   "SCHILY.xattr.user.empty": ""})
            add("dir/ünïcode", size=5, mtime=1_600_000_000.75)
        if dup:
            add("dir/file1", size=9)
            add("./dir/file1", size=1)
    return buf.getvalue()


def make_dup_tar(seed: int) -> bytes:
    """At most 12 entries, several sharing a path (moby's collision case)."""
    rnd = random.Random(seed)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for i in range(rnd.randrange(2, 13)):
            body = rnd.randbytes(rnd.randrange(0, 40))
            ti = tarfile.TarInfo(rnd.choice(["a", "b", "./a", "c/d", "c//d"]))
            ti.size, ti.mtime = len(body), i
            tf.addfile(ti, io.BytesIO(body))
    return buf.getvalue()


FORMATS = {"gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT, "ustar": tarfile.USTAR_FORMAT}


@pytest.mark.parametrize("fast", [True, False], ids=["c-fast-path", "python-path"])
@pytest.mark.parametrize("version", ["v0", "v1", "dev"])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_matches_reference(fmt: str, version: str, fast: bool) -> None:
    data = make_tar(FORMATS[fmt], seed=len(fmt))
    assert tarsum(data, version, b"{json}", fast=fast) == reference_tarsum(data, version, b"{json}")


@pytest.mark.parametrize("seed", range(40))
def test_duplicate_paths_match_reference(seed: int) -> None:
    data = make_dup_tar(seed)
    for version in ("v0", "v1"):
        assert tarsum(data, version) == reference_tarsum(data, version)
        assert tarsum(data, version, fast=False) == reference_tarsum(data, version)


def test_order_matters_only_with_duplicate_paths() -> None:
    def tar(entries: list[tuple[str, bytes]]) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
            for name, body in entries:
                ti = tarfile.TarInfo(name)
                ti.size = len(body)
                tf.addfile(ti, io.BytesIO(body))
        return buf.getvalue()

    assert tarsum(tar([("a", b"1"), ("b", b"2")])) == tarsum(tar([("b", b"2"), ("a", b"1")]))
    assert tarsum(tar([("a", b"1"), ("a", b"2")])) != tarsum(tar([("a", b"2"), ("a", b"1")]))


def test_global_pax_header_is_an_entry() -> None:
    """Go's reader returns a 'g' header as an entry with zero fields."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT,
                      pax_headers={"comment": "hi", "SCHILY.xattr.user.k": "v"}) as tf:
        ti = tarfile.TarInfo("f")
        tf.addfile(ti)
    data = buf.getvalue()
    assert data[156:157] == b"g"
    gname = data[:100].rstrip(b"\0")
    without_g = data[1024:]
    for version in ("v0", "v1"):
        g = hashlib.sha256(b"name" + gname + b"mode0uid0gid0size0"
                           + (b"mtime-62135596800" if version == "v0" else b"")
                           + b"typeflaggLinkname".replace(b"L", b"l")
                           + b"unamegnamedevmajor0devminor0"
                           + (b"user.kv" if version != "v0" else b"")).hexdigest()
        rest = TarSum(version)
        rest.update(without_g)
        # The final sum covers both entries; recompute it from the parts.
        f_only = hashlib.sha256(b"name" + b"f" + b"mode420uid0gid0size0"
                                + (b"mtime0" if version == "v0" else b"")
                                + b"typeflag0linknameunamegnamedevmajor0devminor0").hexdigest()
        want = hashlib.sha256("".join(sorted([g, f_only])).encode()).hexdigest()
        assert tarsum(data, version).split(":")[1] == want
        assert tarsum(data, version, fast=False).split(":")[1] == want


# --- chunking -------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 13, 511, 512, 513, 4099])
def test_every_chunk_size(chunk: int) -> None:
    data = make_tar(tarfile.PAX_FORMAT, seed=3)
    whole = tarsum(data, "v1")
    assert tarsum(data, "v1", chunk=chunk) == whole
    if chunk in (1, 7):
        assert tarsum(data, "v0", fast=False, chunk=chunk) == tarsum(data, "v0")


TAR_FOR_SPLITS = make_tar(tarfile.GNU_FORMAT, seed=9, dup=True)
WHOLE_SPLITS = tarsum(TAR_FOR_SPLITS, "v1")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, len(TAR_FOR_SPLITS)), max_size=30),
       st.sampled_from([bytes, bytearray, memoryview]))
def test_random_splits(cuts: list[int], kind: type) -> None:
    points = sorted(set(cuts))
    t = TarSum("v1")
    prev = 0
    for p in points + [len(TAR_FOR_SPLITS)]:
        t.update(kind(TAR_FOR_SPLITS[prev:p]))
        prev = p
    assert t.finish() == WHOLE_SPLITS


def test_many_small_files_drain_sums() -> None:
    """Several times the C core's sum buffer, in one update and in pieces;
    names the core cleans (./, //, trailing /) and names only Python holds."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for i in range(900):
            if i % 50 == 7:
                ti = tarfile.TarInfo(".//d%d" % i)  # written with a trailing /
                ti.type = tarfile.DIRTYPE
            else:
                ti = tarfile.TarInfo(("l" * 300 if i % 100 == 3 else "./x//f") + "%d" % i)
                ti.size = i % 3
            tf.addfile(ti, io.BytesIO(b"ab"[: ti.size]) if ti.size else None)
    data = buf.getvalue()
    want = reference_tarsum(data, "v1")
    assert tarsum(data) == want
    assert tarsum(data, chunk=100_000) == want
    assert tarsum(data, fast=False) == want


def test_duplicate_long_names_use_position() -> None:
    """Names past the C core's name buffer still count as duplicates."""
    long = "q" * 280
    for names in ([long, "./" + long, long + "/."], [long, "a", long], ["a/" + long, "a//" + long]):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for i, name in enumerate(names):
                ti = tarfile.TarInfo(name)
                ti.size, ti.mtime = 1, i
                tf.addfile(ti, io.BytesIO(b"%d" % i))
        data = buf.getvalue()
        for fast in (True, False):
            assert tarsum(data, fast=fast) == reference_tarsum(data, "v1"), names


# --- the C core's pieces ----------------------------------------------------------


def _c_keys(names: list[bytes]) -> list[bytes]:
    """The keys the C core records for entries begun with these names."""
    from registry._hashing import ffi, lib
    ctx = ffi.new("rh_tarsum_ctx *")
    lib.rh_tarsum_init(ctx, 0)
    for name in names:
        lib.rh_tarsum_file_begin(ctx, b"f", 1, name, len(name))
        assert lib.rh_tarsum_file_end(ctx) == 0
    assert ctx.nsums == len(names)
    raw = ffi.buffer(ctx.names, ctx.names_len)[:]
    assert raw.endswith(b"\0") or not names
    return raw.split(b"\0")[:-1]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text("ab./", max_size=24).map(str.encode), min_size=1, max_size=40))
def test_c_keys_match_clean_name(names: list[bytes]) -> None:
    from registry.tarsum import _clean_name
    assert _c_keys(names) == [_clean_name(n) for n in names]


def test_c_keys_edges() -> None:
    from registry.tarsum import _clean_name
    names = [b"", b".", b"..", b"/", b"//", b"./", b"/..", b"a/../..", b"a/b/../../c", b"./a/./b/",
             b".a", b"a/.b", b"a/..b", b"a..", b"...", b"x" * 256, b"/" + b"y" * 255, b"a/" * 128]
    assert _c_keys(names) == [_clean_name(n) for n in names]
    assert _c_keys([b"z" * 257, b"ok"]) == [b"", b"ok"]  # too long: the caller holds it
    assert _c_keys([b"ab\0cd"]) == [b"ab"]  # a NUL ends the name
    assert _c_keys([b"n%d" % i for i in range(256)]) == [b"n%d" % i for i in range(256)]


@pytest.mark.parametrize("n", [0, 1, 2, 3, 8, 9, 255, 256, 257, 3000])
def test_sort_digests_matches_sorted(n: int) -> None:
    from registry._hashing import ffi, lib
    rnd = random.Random(n)
    shapes = [[rnd.randbytes(32) for _ in range(n)],
              # shared 8-byte prefixes, equal digests, bytes all alike (skipped passes)
              [b"\x00" * 7 + bytes([rnd.randrange(3)]) + rnd.randbytes(24)[: rnd.randrange(1, 3)] * 12
               for _ in range(n)],
              [bytes([rnd.randrange(2)]) * 32 for _ in range(n)],
              sorted(rnd.randbytes(32) for _ in range(n))[::-1]]
    for digests in shapes:
        digests = [d[:32].ljust(32, b"\x01") for d in digests]
        buf = bytearray(b"".join(digests))
        lib.rh_tarsum_sort_digests(ffi.from_buffer(buf), ffi.from_buffer(bytearray(32 * n)), n)
        assert bytes(buf) == b"".join(sorted(digests))


# --- state ------------------------------------------------------------------------


def test_state_round_trip_at_every_offset() -> None:
    data = make_tar(tarfile.PAX_FORMAT, seed=5)
    want = tarsum(data, "dev", b"x")
    for cut in range(0, len(data), 37):
        t = TarSum("dev", b"x")
        t.update(data[:cut])
        s = t.state()
        u = TarSum.from_state(s)
        assert u.state() == s
        u.update(data[cut:])
        assert u.finish() == want, cut


def test_state_round_trip_mid_long_name_entry() -> None:
    """Stop inside the body of an entry whose name only Python holds."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name in ("p" * 300, "p" * 300):
            ti = tarfile.TarInfo(name)
            ti.size = 2000
            tf.addfile(ti, io.BytesIO(bytes(2000)))
    data = buf.getvalue()
    want = tarsum(data, "v1")
    for cut in range(0, len(data), 101):
        t = TarSum("v1")
        t.update(data[:cut])
        u = TarSum.from_state(t.state())
        u.update(data[cut:])
        assert u.finish() == want


def test_state_finished_by_another_process() -> None:
    data = make_tar(tarfile.GNU_FORMAT, seed=2)
    cut = 512 * 3 + 100  # inside a body
    for c in (cut, 512 * 5 + 7):  # and inside a header
        t = TarSum("v0", b"json")
        t.update(data[:c])
        code = ("import sys; from registry.tarsum import TarSum; s = sys.stdin.buffer.read();"
                "n = int.from_bytes(s[:4], 'big'); t = TarSum.from_state(s[4:4 + n]);"
                "t.update(s[4 + n:]); print(t.finish())")
        state = t.state()
        out = subprocess.run([sys.executable, "-c", code],
                             input=len(state).to_bytes(4, "big") + state + data[c:],
                             capture_output=True, check=True, cwd=Path(__file__).parent.parent)
        assert out.stdout.decode().strip() == tarsum(data, "v0", b"json")


def _names_tail(names: list[bytes]) -> bytes:
    return b"".join(len(n).to_bytes(4, "big") + n for n in names)


def test_state_with_names_as_in_the_archive() -> None:
    """States store the cleaned keys; one holding the names as in the
    archive (as older states did) restores to the same result, and a name
    no archive can hold (a NUL) still round-trips."""
    names = ["./a", "a//b/", "c", "./a/../c", "d/./e"]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for i, name in enumerate(names):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime = 3, i
            tf.addfile(ti, io.BytesIO(b"abc"))
    data = buf.getvalue()
    want = tarsum(data)
    t = TarSum("v1")
    t.update(data)
    state = t.state()
    cleaned = _names_tail([b"a", b"a/b", b"c", b"c", b"d/e"])
    assert state.endswith(cleaned)
    raw = state[: -len(cleaned)] + _names_tail([n.encode() for n in names])
    assert TarSum.from_state(raw).finish() == want
    assert TarSum.from_state(raw).state() == state
    odd = state[: -len(cleaned)] + _names_tail([b"a", b"a/b", b"c\0x", b"c", b"d/e"])
    u = TarSum.from_state(odd)
    assert u.state() == odd
    assert u.finish().startswith("tarsum.v1+sha256:")


def test_state_refuses_nul_in_the_current_name() -> None:
    data = _tar_two_files()
    t = TarSum("v1")
    t.update(data[:700])  # inside the body of "a"
    state = bytearray(t.state())
    c_name = 4 + 2 + 646  # magic, format, version; then the C state's name
    assert state[c_name:c_name + 2] == b"a\0" and state[c_name - 2:c_name] == b"\0\x01"
    state[c_name - 1] = 2  # name length 2 ...
    TarSum.from_state(bytes(state[:c_name + 1]) + b"b" + bytes(state[c_name + 2:]))  # "ab" is fine
    with pytest.raises(ValueError, match="C core"):
        TarSum.from_state(bytes(state))  # ... "a\0" is not


def test_malformed_states_raise_value_error() -> None:
    data = make_tar(tarfile.PAX_FORMAT, seed=1)
    t = TarSum("v1")
    t.update(data[:3000])
    good = t.state()
    for n in range(len(good)):
        with pytest.raises(ValueError):
            TarSum.from_state(good[:n])
    with pytest.raises(ValueError):
        TarSum.from_state(good + b"\0")
    rnd = random.Random(7)
    for _ in range(3000):
        bad = bytearray(good)
        for _ in range(rnd.randrange(1, 4)):
            bad[rnd.randrange(len(bad))] ^= 1 << rnd.randrange(8)
        try:
            u = TarSum.from_state(bytes(bad))
        except ValueError:
            continue
        try:  # a state that loads must keep working (or fail cleanly)
            u.update(data[3000:])
            u.finish()
        except TarSumError:
            pass


# --- hostile input ------------------------------------------------------------


def _tar_two_files() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, body in (("a", b"x" * 600), ("b", b"yy")):
            ti = tarfile.TarInfo(name)
            ti.size = len(body)
            tf.addfile(ti, io.BytesIO(body))
    return buf.getvalue()


def test_truncated_at_every_offset() -> None:
    data = _tar_two_files()
    # Layout: header a 0-512, body 512-1112, pad to 1536, header b 1536-2048,
    # body 2048-2050, pad to 2560, then zero blocks.
    only_a = tarsum(data[:1536])
    both = tarsum(data)
    for cut in range(len(data) + 1):
        for fast in (True, False):
            t = TarSum("v1", _fast=fast)
            t.update(data[:cut])
            if cut == 0:
                assert t.finish() == tarsum(b"")
            elif 0 < cut < 1112 or 1536 < cut < 2050:
                with pytest.raises(TarSumError) as e:
                    t.finish()
                assert 0 <= e.value.offset <= cut
            elif 1112 <= cut <= 1536:
                assert t.finish() == only_a
            elif (2560 < cut < 3072) or (3072 < cut < 3584):
                # Inside a zero block: Go reads it as a truncated header.
                with pytest.raises(TarSumError):
                    t.finish()
            else:
                assert t.finish() == both


def _with_checksum(blk: bytearray) -> bytes:
    blk[148:156] = b" " * 8
    blk[148:156] = b"%06o\0 " % sum(blk)
    return bytes(blk)


def test_bad_headers() -> None:
    data = bytearray(_tar_two_files())
    bad = bytearray(data)
    bad[0] ^= 1  # checksum no longer matches
    with pytest.raises(TarSumError, match="checksum") as e:
        tarsum(bytes(bad))
    assert e.value.offset == 0
    bad = bytearray(data)
    bad[1536 + 124:1536 + 136] = b"0000000009x\0"  # bad octal in b's size
    bad[1536:2048] = _with_checksum(bad[1536:2048])
    for fast in (True, False):
        with pytest.raises(TarSumError, match="octal") as e:
            tarsum(bytes(bad), fast=fast)
        assert e.value.offset == 1536
    bad = bytearray(data)
    bad[124:136] = b"\x80" + b"\x7f" * 11  # base-256 size beyond int64
    bad[0:512] = _with_checksum(bad[0:512])
    with pytest.raises(TarSumError):
        tarsum(bytes(bad))
    bad = bytearray(data)
    bad[124:136] = b"\xff" * 12  # base-256 -1
    bad[0:512] = _with_checksum(bad[0:512])
    with pytest.raises(TarSumError, match="negative"):
        tarsum(bytes(bad))
    bad = bytearray(data)
    bad[124:136] = b"77777777777\0"  # 8 GiB body that is not there
    bad[0:512] = _with_checksum(bad[0:512])
    with pytest.raises(TarSumError, match="ends"):
        tarsum(bytes(bad))
    # A zero block followed by a header is not an end-of-archive marker.
    with pytest.raises(TarSumError, match="zero block"):
        tarsum(bytes(512) + bytes(data))
    # A failed object keeps failing.
    t = TarSum()
    with pytest.raises(TarSumError):
        t.update(bytes(512) + bytes(data))
    with pytest.raises(TarSumError):
        t.update(b"")
    with pytest.raises(TarSumError):
        t.state()


def test_bad_pax_and_sparse() -> None:
    def pax_tar(records: bytes, typeflag: bytes = b"x") -> bytes:
        hdr = bytearray(512)
        hdr[0:9] = b"PaxHeader"
        hdr[100:108] = b"0000644\0"
        hdr[124:136] = b"%011o\0" % len(records)
        hdr[136:148] = b"00000000000\0"
        hdr[156:157] = typeflag
        hdr[257:265] = b"ustar\x0000"
        body = records + bytes(-len(records) % 512)
        return _with_checksum(hdr) + body + _tar_two_files()

    ok = pax_tar(b"13 path=ABCD\n")
    assert tarsum(ok) != tarsum(_tar_two_files())
    for bad in (b"12 path=ABCD\n", b"x path=a\n", b"3 a\n", b"10 =value\n", b"9 a=\x00bc\n"[:0] + b"9 pa\x00h=\n",
                b"11 uid=abc\n", b"13 mtime=1.x\n"):
        with pytest.raises(TarSumError):
            tarsum(pax_tar(bad))
    with pytest.raises(TarSumError, match="sparse"):
        tarsum(pax_tar(b"22 GNU.sparse.major=1\n22 GNU.sparse.minor=0\n"))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000), st.integers(1, 600))
def test_garbage_never_crashes(junk: bytes, chunk: int) -> None:
    base = _tar_two_files()
    for data in (junk, base[:1000] + junk, junk + base):
        for fast in (True, False):
            t = TarSum("v0", _fast=fast)
            try:
                for i in range(0, len(data), chunk):
                    t.update(data[i:i + chunk])
                t.finish()
            except TarSumError:
                pass


# --- the string form ----------------------------------------------------------------


def test_parse_and_format() -> None:
    hx = "ab" * 32
    assert parse_tarsum("tarsum+sha256:" + hx) == ("v0", "sha256", hx)
    assert parse_tarsum("tarsum.v1+sha256:" + hx) == ("v1", "sha256", hx)
    assert parse_tarsum("tarsum.dev+sha512:" + hx * 2) == ("dev", "sha512", hx * 2)
    assert format_tarsum("v1", "sha256", hx) == "tarsum.v1+sha256:" + hx
    for bad in ("tarsum.v2+sha256:" + hx, "tarsum+sha256:" + hx[:-1], "tarsum+md5:" + hx,
                "tarsum+sha256:" + hx.upper(), "sha256:" + hx, "tarsum+sha256:" + hx + "\n", ""):
        with pytest.raises(ValueError):
            parse_tarsum(bad)
    with pytest.raises(ValueError):
        format_tarsum("v9", "sha256", hx)
    with pytest.raises(ValueError):
        format_tarsum("v1", "sha256", "zz")
    assert parse_tarsum(tarsum(_tar_two_files(), "dev"))[0] == "dev"
    with pytest.raises(ValueError):
        TarSum("v2")


# --- the C core's return codes -------------------------------------------------


def _global_pax_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT,
                      pax_headers={"comment": "global"}) as tf:
        info = tarfile.TarInfo("a")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    return buf.getvalue()


def test_file_end_error_code_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    import registry.tarsum as mod
    from registry._hashing import lib

    data = _global_pax_tar()
    assert TarSum().update(data) is None  # the archive is fine with the real core
    monkeypatch.setattr(mod, "_file_end", lambda ctx: lib.RH_TARSUM_E_FULL)
    t = TarSum()
    with pytest.raises(TarSumError, match=r"rh_tarsum_file_end returned -5 \(finished-entry buffer full"):
        t.update(data)
    with pytest.raises(TarSumError, match="rh_tarsum_file_end"):
        t.finish()  # the object stays failed


def test_expect_error_code_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    import registry.tarsum as mod
    from registry._hashing import lib

    real = mod._expect

    def refuse_done(ctx: object, mode: int, size: int) -> int:
        return lib.RH_TARSUM_E_STATE if mode == lib.RH_TARSUM_MODE_DONE else real(ctx, mode, size)

    monkeypatch.setattr(mod, "_expect", refuse_done)
    with pytest.raises(TarSumError, match=r"rh_tarsum_expect\(DONE\) returned -1"):
        TarSum().update(_tar_two_files())


def test_feed_error_code_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    # rh_tarsum_feed answers an event; anything else is an error, not a
    # full batch of sums to drain.
    import registry.tarsum as mod
    from registry._hashing import lib

    real = mod._feed
    calls = [0]

    def fail_once(ctx: object, data: object, n: int, consumed: Any) -> int:
        calls[0] += 1
        if calls[0] == 1:
            consumed[0] = 0
            return lib.RH_TARSUM_E_INCONSISTENT
        return real(ctx, data, n, consumed)

    monkeypatch.setattr(mod, "_feed", fail_once)
    t = TarSum()
    with pytest.raises(TarSumError, match=r"rh_tarsum_feed returned -3"):
        t.update(_tar_two_files())
    with pytest.raises(TarSumError, match="rh_tarsum_feed"):
        t.finish()  # the object stays failed


def test_build_ext_fails_loudly_on_a_missing_file(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    (tmp_path / "build_ext.py").write_text((root / "build_ext.py").read_text())
    src = tmp_path / "_tarsum"
    src.mkdir()
    for name in ("rh_sha256.h", "rh_tarsum.h", "rh_sha256.c", "rh_tarsum.c"):  # no rh_sha256_shani.c
        (src / name).write_text((root / "_tarsum" / name).read_text())
    proc = subprocess.run([sys.executable, "build_ext.py"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "missing C file(s)" in proc.stderr and "rh_sha256_shani.c" in proc.stderr
    assert not list(tmp_path.glob("**/*.so"))
