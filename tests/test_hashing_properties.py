"""Property tests (hypothesis) for ``registry.hashing.Sha256``.

Each generated example is checked under every block function this CPU has
(``portable``, and ``shani`` when the SHA extensions are present), inside the
test body.  They are not parametrized per implementation like
``test_hashing.py`` because pytest-twisted re-wraps a hypothesis test's
``inner_test`` on the shared function object each time the test runs, so a
parametrized hypothesis test fails on its second parameter
("blockon cannot be called from the twisted greenlet").
"""

from __future__ import annotations

import hashlib
import random
import struct
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registry import hashing
from registry.hashing import Sha256

IMPLEMENTATIONS = ["portable"] + (["shani"] if hashing.cpu_has_sha_extensions() else [])


@pytest.fixture(autouse=True, scope="module")
def _restore_auto() -> Iterator[None]:
    yield
    hashing.set_implementation("auto")


def each_implementation() -> Iterator[str]:
    """Select each available block function in turn."""
    for name in IMPLEMENTATIONS:
        assert hashing.set_implementation(name) == name
        yield name


@settings(max_examples=150, deadline=None)
@given(
    data=st.binary(max_size=3000),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=12),
    kinds=st.lists(st.sampled_from(["bytes", "bytearray", "memoryview"]), min_size=1, max_size=4),
)
def test_random_splits_match_hashlib(data: bytes, cuts: list[int], kinds: list[str]) -> None:
    """Random data fed in random pieces of mixed buffer types gives hashlib's digest."""
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    expected = hashlib.sha256(data).digest()
    for impl in each_implementation():
        h = Sha256()
        for i, (start, end) in enumerate(zip(points, points[1:])):
            piece: bytes | bytearray | memoryview = data[start:end]
            kind = kinds[i % len(kinds)]
            if kind == "bytearray":
                piece = bytearray(piece)
            elif kind == "memoryview":
                piece = memoryview(data)[start:end]
            h.update(piece)
            assert h.bytes_hashed == end
        assert h.digest() == expected, impl


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(max_size=2000),
    split=st.integers(min_value=0, max_value=2000),
    finisher=st.sampled_from(IMPLEMENTATIONS),
)
def test_random_state_round_trip(data: bytes, split: int, finisher: str) -> None:
    """A state exported after a random prefix resumes to hashlib's digest, also under the other block function."""
    split = min(split, len(data))
    expected = hashlib.sha256(data).digest()
    for _ in each_implementation():
        state = Sha256(data[:split]).state()
        hashing.set_implementation(finisher)
        resumed = Sha256.from_state(state)
        resumed.update(data[split:])
        assert resumed.digest() == expected


@settings(max_examples=300, deadline=None)
@given(body=st.binary(min_size=104, max_size=104))
def test_arbitrary_state_bytes_either_refused_or_exact(body: bytes) -> None:
    """Any 108 bytes with the right magic are refused with ValueError or resumed exactly."""
    state = b"sha\x03" + body
    (count,) = struct.unpack(">Q", state[100:])
    used = count % 64
    malformed = count >= 2**61 or any(state[36 + used : 100])
    for _ in each_implementation():
        if malformed:
            with pytest.raises(ValueError, match="invalid SHA-256 state"):
                Sha256.from_state(state)
            continue
        h = Sha256.from_state(state)
        assert h.state() == state
        assert h.bytes_hashed == count
        h.update(b"more")
        assert len(h.digest()) == 32


@settings(max_examples=100, deadline=None)
@given(
    count=st.integers(min_value=0, max_value=2**61 - 1),
    words=st.binary(min_size=32, max_size=32),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_consistent_states_are_accepted(count: int, words: bytes, seed: int) -> None:
    """Every well-formed state (any words, any count below 2**61, zeroed tail) is accepted unchanged."""
    used = count % 64
    buf = random.Random(seed).randbytes(used) + bytes(64 - used)
    state = b"sha\x03" + words + buf + struct.pack(">Q", count)
    for _ in each_implementation():
        assert Sha256.from_state(state).state() == state
