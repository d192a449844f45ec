"""``registry.http.ChunkedBodyDecoder`` decodes exactly what Twisted's own
chunked decoder does (the same data, the same bytes after the body, the same
refusals) for any framing split across reads in any way, and hands chunk
data on without copying a read that is all data."""

from __future__ import annotations

import random

import pytest
from twisted.web import http

from registry.http import ChunkedBodyDecoder


def run(cls: type, reads: list[bytes]) -> tuple[bytes, bytes | None, str | None, list[bytes]]:
    got: list[bytes] = []
    finished: list[bytes] = []
    decoder = cls(got.append, finished.append)
    error = None
    try:
        for i, r in enumerate(reads):
            decoder.dataReceived(r)
            if finished:  # the channel reads what follows itself (the next request)
                finished[0] += b"".join(reads[i + 1 :])
                break
    except Exception as e:  # the refusal itself must match
        error = f"{type(e).__name__}: {e}"
    return b"".join(got), (finished[0] if finished else None), error, got


def encode(chunks: list[bytes], ext: bool = False, trailer: bytes = b"") -> bytes:
    out = b""
    for c in chunks:
        out += b"%x%s\r\n%s\r\n" % (len(c), b";name=value" if ext else b"", c)
    return out + b"0\r\n" + trailer + b"\r\n"


def splits(data: bytes, rng: random.Random) -> list[bytes]:
    reads, pos = [], 0
    while pos < len(data):
        n = rng.choice([1, 2, 3, 7, 64, 1000, 4096, 70000, len(data)])
        reads.append(data[pos : pos + n])
        pos += n
    return reads


@pytest.mark.parametrize("seed", range(40))
def test_same_result_as_twisteds_decoder_for_any_split(seed: int) -> None:
    rng = random.Random(seed)
    chunks = [rng.randbytes(rng.choice([1, 5, 100, 4096, 50000])) for _ in range(rng.randint(0, 6))]
    body = encode(chunks, ext=seed % 3 == 0, trailer=b"X-Trailer: 1\r\n" if seed % 4 == 0 else b"")
    wire = body + (b"GET /next HTTP/1.1\r\n\r\n" if seed % 2 else b"")
    reads = splits(wire, rng)
    ours = run(ChunkedBodyDecoder, reads)
    theirs = run(http._ChunkedTransferDecoder, reads)
    assert ours[:3] == theirs[:3]
    assert ours[0] == b"".join(chunks) and ours[1] == wire[len(body):] and ours[2] is None


BAD = [
    b"zz\r\nabc\r\n0\r\n\r\n",  # not hex
    b"-1\r\nabc\r\n0\r\n\r\n",  # signed
    b"0x3\r\nabc\r\n0\r\n\r\n",  # prefixed
    b"3\r\nabcXY0\r\n\r\n",  # data not followed by CRLF
    b"3;\x00\r\nabc\r\n0\r\n\r\n",  # a control character in an extension
    b"1" * 2000 + b"\r\n",  # a chunk-size line over the limit
    b"3\nabc\r\n0\r\n\r\n",  # a bare LF
    b"3\r\nabc\r\n0\r\n" + b"X: " + b"y" * 70000 + b"\r\n\r\n",  # trailer over the limit
    b"3\r\nabc\r\n0\r\n\r\n",  # fine: then more bytes after FINISHED are a programming error below
]


@pytest.mark.parametrize("wire", BAD)
@pytest.mark.parametrize("seed", range(5))
def test_same_refusals_as_twisteds_decoder(wire: bytes, seed: int) -> None:
    reads = splits(wire, random.Random(seed))
    ours, theirs = run(ChunkedBodyDecoder, reads), run(http._ChunkedTransferDecoder, reads)
    assert ours[:3] == theirs[:3]
    if wire != BAD[-1]:
        assert ours[2] is not None and "MalformedChunkedData" in ours[2], ours[2]


def test_data_after_the_end_is_an_error_as_in_twisted() -> None:
    for cls in (ChunkedBodyDecoder, http._ChunkedTransferDecoder):
        decoder = cls(lambda _: None, lambda _: None)
        decoder.dataReceived(b"3\r\nabc\r\n0\r\n\r\n")
        with pytest.raises(RuntimeError):
            decoder.dataReceived(b"x")


def test_a_read_of_chunk_data_only_is_passed_on_as_it_is() -> None:
    got: list[bytes] = []
    decoder = ChunkedBodyDecoder(got.append, lambda _: None)
    decoder.dataReceived(b"100000\r\n")  # a 1 MiB chunk
    reads = [bytes([i]) * (256 * 1024) for i in range(4)]
    for r in reads:
        decoder.dataReceived(r)
    assert len(got) == 4 and all(g is r for g, r in zip(got, reads))
    decoder.dataReceived(b"\r\n0\r\n\r\n")
    assert decoder.state == "FINISHED"


def test_the_channel_uses_it_for_chunked_requests() -> None:
    from twisted.internet.testing import StringTransport

    from registry.http import RegistryChannel

    channel = RegistryChannel()
    seen: list[object] = []

    class Request(http.Request):
        def process(self) -> None:
            seen.append(self.content.read())
            self.finish()

    channel.requestFactory = Request  # type: ignore[assignment]
    channel.makeConnection(StringTransport())
    channel.dataReceived(b"PATCH /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert type(channel._transferDecoder) is ChunkedBodyDecoder
    channel.dataReceived(encode([b"hello ", b"world"]))
    assert seen == [b"hello world"]


def test_the_chunks_of_one_read_are_delivered_at_once() -> None:
    """docker sends 32 KiB chunks: one delivery per read, not per chunk."""
    chunks = [bytes([i]) * (32 * 1024) for i in range(32)]
    wire = encode(chunks)
    reads = [wire[i : i + (1 << 20)] for i in range(0, len(wire), 1 << 20)]
    data, finished, error, got = run(ChunkedBodyDecoder, reads)
    assert error is None and finished == b"" and data == b"".join(chunks)
    assert len(got) == len(reads) == 2
    # Twisted's own: a delivery per chunk (or piece of one).
    assert len(run(http._ChunkedTransferDecoder, reads)[3]) >= len(chunks)


def test_data_before_refused_framing_is_still_delivered() -> None:
    data, _, error, got = run(ChunkedBodyDecoder, [b"3\r\nabc\r\n3\r\ndef\r\nzz\r\n"])
    assert data == b"abcdef" and error is not None and "MalformedChunkedData" in error


@pytest.mark.parametrize("seed", range(300))
def test_a_corrupted_byte_anywhere_is_taken_as_twisted_takes_it(seed: int) -> None:
    rng = random.Random(seed)
    chunks = [rng.randbytes(rng.choice([1, 5, 100, 4096, 50000])) for _ in range(rng.randint(1, 5))]
    wire = bytearray(encode(chunks, ext=seed % 3 == 0) + b"GET / HTTP/1.1\r\n\r\n")
    wire[rng.randrange(len(wire))] = rng.choice(b"0123456789abcdefxX\r\n;- \t")
    reads = splits(bytes(wire), rng)
    assert run(ChunkedBodyDecoder, reads)[:3] == run(http._ChunkedTransferDecoder, reads)[:3]
