"""Pure parsing: digests, names, tags, byte ranges, upload ranges, layout paths."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from registry.digest import Digest, DigestError
from registry.errors import RegistryError
from registry.reference import NAME_MAX_LENGTH, InvalidNameError, InvalidTagError, check_name, check_tag
from registry.resources.base import range_header
from registry.resources.blobs import RangeNotSatisfiable, parse_range
from registry.resources.uploads import parse_content_range
from registry.storage import paths
from registry.storage.driver import check_path

HEX = "a" * 64


def test_digest_valid() -> None:
    d = Digest.parse("sha256:" + HEX)
    assert (d.algorithm, d.hex, str(d)) == ("sha256", HEX, "sha256:" + HEX)
    assert Digest.parse(b"sha256:" + HEX.encode()) == d


@pytest.mark.parametrize(
    "text,unsupported",
    [
        ("", False), ("sha256", False), ("sha256:", False), (":" + HEX, False),
        ("sha256:" + HEX[:-1], False), ("sha256:" + HEX + "0", False), ("sha256:" + HEX.upper(), False),
        ("SHA256:" + HEX, False), ("sha256:" + "g" * 64, False), ("sha256 :" + HEX, False),
        ("md5:" + "0" * 32, True), ("sha512:" + "0" * 128, True), ("sha512:" + "0" * 64, False),
        ("multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8", True),
    ],
)
def test_digest_invalid(text: str, unsupported: bool) -> None:
    with pytest.raises(DigestError) as e:
        Digest.parse(text)
    assert e.value.unsupported is unsupported
    assert str(e.value)


@pytest.mark.parametrize("name", ["a", "a/b", "library/ubuntu", "a.b_c__d-e---f", "0/1/2", "a" * NAME_MAX_LENGTH])
def test_names_valid(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "A", "a/", "/a", "a//b", "a/../b", "..", "a/./b", "_a", "a_", "a___b", "a.-b", "-a", "a" * (NAME_MAX_LENGTH + 1), "a b", "ä"],
)
def test_names_invalid(name: str) -> None:
    with pytest.raises(InvalidNameError):
        check_name(name)


@pytest.mark.parametrize("tag", ["latest", "_x", "X", "1.0-rc.1", "a" * 128, "0"])
def test_tags_valid(tag: str) -> None:
    assert check_tag(tag) == tag


@pytest.mark.parametrize("tag", ["", ".a", "-a", "a" * 129, "a:b", "a/b", "a b", "é"])
def test_tags_invalid(tag: str) -> None:
    with pytest.raises(InvalidTagError):
        check_tag(tag)


@pytest.mark.parametrize(
    "header,size,expected",
    [
        (None, 10, None), ("bytes=0-0", 10, (0, 0)), ("bytes=0-", 10, (0, 9)), ("bytes=3-100", 10, (3, 9)),
        ("bytes=-3", 10, (7, 9)), ("bytes=-30", 10, (0, 9)), ("items=0-1", 10, None), ("bytes=0-1,3-4", 10, None),
    ],
)
def test_parse_range(header: str | None, size: int, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize("header,size", [("bytes=10-", 10), ("bytes=-0", 10), ("bytes=0-", 0), ("bytes=-1", 0)])
def test_parse_range_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, size)


@pytest.mark.parametrize("header", ["bytes=", "bytes=-", "bytes=5-2", "bytes=a-b", "bytes=1-2-3"])
def test_parse_range_malformed(header: str) -> None:
    with pytest.raises(ValueError):
        parse_range(header, 10)


@given(st.integers(0, 10**6), st.integers(0, 10**6))
def test_parse_range_within_bounds(start: int, length: int) -> None:
    size = 1000
    try:
        r = parse_range(f"bytes={start}-{start + length}", size)
    except RangeNotSatisfiable:
        assert start >= size
        return
    assert r is not None and 0 <= r[0] <= r[1] < size


@pytest.mark.parametrize(
    "value,expected", [("0-0", (0, 0)), ("5-9", (5, 9)), ("bytes 5-9/10", (5, 9)), ("bytes=5-9", (5, 9)), ("bytes 0-1/*", (0, 1))]
)
def test_content_range(value: str, expected: tuple[int, int]) -> None:
    assert parse_content_range(value) == expected


@pytest.mark.parametrize("value", ["", "5", "9-5", "-1-2", "a-b", "0-1/", "bytes */10"])
def test_content_range_invalid(value: str) -> None:
    with pytest.raises(RegistryError) as e:
        parse_content_range(value)
    assert e.value.code.code == "RANGE_INVALID"


def test_range_header_matches_docker_parsing() -> None:
    assert [range_header(n) for n in (0, 1, 2, 1000)] == ["0-0", "0-0", "0-1", "0-999"]


def test_layout_paths_are_distribution_paths_and_valid_driver_paths() -> None:
    d = Digest.parse("sha256:" + "ab" * 32)
    h = d.hex
    assert paths.blob_data(d) == f"/docker/registry/v2/blobs/sha256/ab/{h}/data"
    assert paths.layer_link("a/b", d) == f"/docker/registry/v2/repositories/a/b/_layers/sha256/{h}/link"
    assert paths.manifest_revision_link("a", d) == f"/docker/registry/v2/repositories/a/_manifests/revisions/sha256/{h}/link"
    assert paths.tag_current_link("a", "v1") == "/docker/registry/v2/repositories/a/_manifests/tags/v1/current/link"
    assert paths.tag_index_link("a", "v1", d) == f"/docker/registry/v2/repositories/a/_manifests/tags/v1/index/sha256/{h}/link"
    assert paths.upload_data("a", "u-1") == "/docker/registry/v2/repositories/a/_uploads/u-1/data"
    assert paths.upload_startedat("a", "u-1") == "/docker/registry/v2/repositories/a/_uploads/u-1/startedat"
    assert paths.upload_hashstate("a", "u-1", 42) == "/docker/registry/v2/repositories/a/_uploads/u-1/hashstates/sha256/42"
    for p in (paths.blob_data(d), paths.layer_link("x.y/z-w_v", d), paths.tag_index_link("a", "_T.1-x", d)):
        assert check_path(p) == p
