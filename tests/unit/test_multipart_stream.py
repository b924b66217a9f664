"""The incremental multipart parser (WADO-RS client side): any chunking, RFC 2046 edge cases."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator

import pytest

from drimbox.adapters.dicomweb.multipart import (
    MultipartError,
    MultipartStream,
    MultipartStreamError,
    iter_parts,
    split_parts,
)
from drimbox.domain.errors import InvalidInput

B = "drimbox-0123abcd"

Part = tuple[dict[str, str], bytes]


def encode(
    parts: list[tuple[list[str], bytes]],
    boundary: str = B,
    preamble: bytes = b"",
    epilogue: bytes = b"",
    padding: bytes = b"",
) -> bytes:
    """A multipart body: ``preamble CRLF`` (if any), then each part, the close delimiter,
    ``CRLF epilogue`` (if any)."""
    dash = b"--" + boundary.encode()
    out = preamble + b"\r\n" if preamble else b""
    for i, (header_lines, body) in enumerate(parts):
        out += (b"\r\n" if i else b"") + dash + padding + b"\r\n"
        out += b"".join(h.encode("latin-1") + b"\r\n" for h in header_lines)
        out += b"\r\n" + body
    out += b"\r\n" + dash + b"--" + padding
    return out + (b"\r\n" + epilogue if epilogue else b"")


def parse_chunks(chunks: list[bytes], boundary: str = B) -> list[Part]:
    stream = MultipartStream(boundary)
    got = [p for c in chunks for p in stream.feed(c)]
    stream.close()
    assert stream.done and stream.parts == len(got)
    return got


def random_split(data: bytes, rng: random.Random, max_chunk: int) -> list[bytes]:
    chunks, pos = [], 0
    while pos < len(data):
        n = rng.randint(1, max_chunk)
        chunks.append(data[pos : pos + n])
        pos += n
    return chunks


def is_delimited(data: bytes, boundary: str) -> bool:
    """Whether ``data`` holds a delimiter line (RFC 2046: boundary then padding and CRLF, or
    the close delimiter)."""
    return (
        re.search(rb"\r\n--" + re.escape(boundary.encode()) + rb"(--|[ \t]*\r\n)", data) is not None
    )


def random_parts(rng: random.Random, boundary: str) -> list[tuple[list[str], bytes]]:
    tricky = [
        b"--" + boundary.encode(),  # the boundary text, not at a line start
        boundary.encode(),
        b"\r\n" + boundary.encode() + b"\r\n",  # at a line start, without the dashes
        b"\r\n--" + boundary.encode() + b"X\r\n",  # a longer boundary: text, not a delimiter
        b"\r\n--" + boundary.encode() + b"-x",  # one dash: text
        b"\r\n--" + boundary.encode()[:-1],  # a prefix of the delimiter
        b"\r\n\r\n",
        b"\r\n-",
        b"\r",
        b"\n",
    ]
    parts = []
    for i in range(rng.randint(1, 6)):
        pieces = []
        for _ in range(rng.randint(0, 8)):
            if rng.random() < 0.4:
                pieces.append(rng.choice(tricky))
            else:
                pieces.append(rng.randbytes(rng.choice([0, 1, 7, 100, 3000])))
        body = b"x" + b"".join(pieces) if pieces else b""  # never *starts* with the delimiter
        # pieces may have combined into a real delimiter line (with the CRLF that follows)
        while is_delimited(body + b"\r\n-", boundary):
            body = body.replace(b"\r\n--" + boundary.encode(), b"\n--" + boundary.encode())
        headers = [] if rng.random() < 0.2 else ["Content-Type: application/dicom", f"X-N: {i}"]
        parts.append((headers, body))
    return parts


def expected(parts: list[tuple[list[str], bytes]]) -> list[Part]:
    return [
        ({k.lower(): v.strip() for k, _, v in (h.partition(":") for h in hs)}, body)
        for hs, body in parts
    ]


# -- any chunking gives the same parts ---------------------------------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_random_bodies_random_splits(seed: int) -> None:
    rng = random.Random(seed)
    parts = random_parts(rng, B)
    preamble = rng.choice([b"", b"This is a preamble --" + B.encode() + b"X\r\n--not"])
    epilogue = rng.choice([b"", b"epilogue\r\n--" + B.encode() + b"\r\nignored"])
    padding = rng.choice([b"", b" \t "])
    data = encode(parts, preamble=preamble, epilogue=epilogue, padding=padding)
    want = expected(parts)
    assert parse_chunks([data]) == want
    for max_chunk in (1, 2, 5, len(B) + 4, 64, 4096):
        assert parse_chunks(random_split(data, rng, max_chunk)) == want, max_chunk


def test_every_split_point_of_a_small_body() -> None:
    data = encode(
        [(["Content-Type: a"], b"one"), ([], b""), (["Content-Type: b"], b"x--" + B.encode())],
        preamble=b"pre",
        epilogue=b"post",
    )
    want = parse_chunks([data])
    assert [b for _, b in want] == [b"one", b"", b"x--" + B.encode()]
    for i in range(len(data) + 1):
        for j in range(i, len(data) + 1):
            assert parse_chunks([data[:i], data[i:j], data[j:]]) == want


def test_agrees_with_split_parts() -> None:
    rng = random.Random(1)
    parts = [(["Content-Type: application/dicom"], rng.randbytes(5000)) for _ in range(5)]
    data = encode(parts)
    whole = [(h, bytes(b)) for h, b in split_parts(data, B)]
    assert parse_chunks(random_split(data, rng, 300)) == whole == expected(parts)


def test_parts_come_out_as_soon_as_their_delimiter_is_complete() -> None:
    data = encode([(["Content-Type: a"], b"first"), (["Content-Type: a"], b"second")])
    second = data.index(b"\r\n--" + B.encode(), 10)
    stream = MultipartStream(B)
    end_of_delimiter = second + len(B) + 4
    assert stream.feed(data[: end_of_delimiter + 1]) == []  # "\r": maybe padding, maybe not
    assert stream.feed(data[end_of_delimiter + 1 : end_of_delimiter + 2]) == [
        ({"content-type": "a"}, b"first")
    ]
    assert stream.feed(data[end_of_delimiter + 2 :]) == [({"content-type": "a"}, b"second")]
    stream.close()


def test_iter_parts_is_lazy() -> None:
    data = encode([([], b"a"), ([], b"b")])
    fed: list[int] = []

    def chunks() -> Iterator[bytes]:
        for i in range(len(data)):
            fed.append(i)
            yield data[i : i + 1]

    it = iter_parts(chunks(), B)
    assert next(it) == ({}, b"a")
    assert len(fed) < len(data)
    assert list(it) == [({}, b"b")]


# -- RFC 2046 details --------------------------------------------------------------------------


def test_empty_parts() -> None:
    dash = b"--" + B.encode()
    # with headers and an empty body; without headers; without headers or body at all
    data = (
        dash + b"\r\nContent-Type: a\r\n\r\n"
        b"\r\n" + dash + b"\r\n\r\n"
        b"\r\n" + dash + b"\r\n"
        b"\r\n" + dash + b"\r\nContent-Type: b\r\n"
        b"\r\n" + dash + b"--"
    )
    want = [({"content-type": "a"}, b""), ({}, b""), ({}, b""), ({"content-type": "b"}, b"")]
    assert parse_chunks([data]) == want
    assert parse_chunks([data[i : i + 1] for i in range(len(data))]) == want


def test_body_with_the_boundary_text_but_no_delimiter() -> None:
    body = (
        b"before --" + B.encode() + b" inside a line\r\n"
        + B.encode() + b" at a line start without dashes\r\n"
        b"x--" + B.encode() + b"-- not at a line start\r\n"
        b"\r\n--" + B.encode() + b"suffix makes it another boundary\r\n"
        b"\r\n--" + B.encode() + b"\tpadding then text is not a delimiter line"
    )  # fmt: skip
    data = encode([(["Content-Type: text/plain"], body)])
    assert parse_chunks([data]) == [({"content-type": "text/plain"}, body)]
    assert parse_chunks([data[i : i + 3] for i in range(0, len(data), 3)])[0][1] == body


def test_preamble_epilogue_and_padding() -> None:
    dash = b"--" + B.encode()
    data = (
        b"preamble mentioning " + dash + b"X\r\n" + dash + b"- still preamble\r\n"
        + dash + b" \t\r\nContent-Type: a\r\n\r\nbody"
        b"\r\n" + dash + b"--  \r\nepilogue\r\n" + dash + b"\r\nContent-Type: z\r\n\r\nnot a part"
    )  # fmt: skip
    assert parse_chunks([data]) == [({"content-type": "a"}, b"body")]
    # the first boundary may open the body, with no preamble or CRLF before it
    assert parse_chunks([dash + b"\r\n\r\nx\r\n" + dash + b"--"]) == [({}, b"x")]


def test_header_names_lower_case_and_folding() -> None:
    data = encode([(["Content-TYPE:  application/dicom ", "X-Long: a", "\tb"], b"z")])
    assert parse_chunks([data]) == [({"content-type": "application/dicom", "x-long": "a b"}, b"z")]


def test_no_part_at_all() -> None:
    assert parse_chunks([b"--" + B.encode() + b"--\r\n"]) == []


# -- malformed input ---------------------------------------------------------------------------


def test_truncated_at_every_point() -> None:
    data = encode([(["Content-Type: a"], b"one"), (["Content-Type: b"], b"two")], preamble=b"p")
    complete = len(data)  # ends right after the close delimiter
    for n in range(complete):
        stream = MultipartStream(B)
        stream.feed(data[:n])
        assert not stream.done
        with pytest.raises(InvalidInput, match="truncated"):
            stream.close()
    with pytest.raises(MultipartStreamError):
        list(iter_parts([data[:-1]], B))


def test_truncated_error_is_both_invalid_input_and_multipart_error() -> None:
    stream = MultipartStream(B)
    stream.feed(b"--" + B.encode() + b"\r\n\r\nbody")
    with pytest.raises(InvalidInput) as exc:
        stream.close()
    assert isinstance(exc.value, MultipartError)


def test_part_without_header_body_separator() -> None:
    dash = b"--" + B.encode()
    data = dash + b"\r\nContent-Type: a\r\nDATA\r\n" + dash + b"--\r\n"
    with pytest.raises(InvalidInput, match="blank line"):
        parse_chunks([data])
    with pytest.raises(InvalidInput, match="blank line"):
        parse_chunks([data[i : i + 1] for i in range(len(data))])
    # no blank line and no delimiter either: caught by the header size limit
    stream = MultipartStream(B, max_header_bytes=100)
    with pytest.raises(InvalidInput, match="exceed"):
        stream.feed(dash + b"\r\nContent-Type: a\r\n" + b"x" * 200)


def test_malformed_header_line() -> None:
    with pytest.raises(InvalidInput, match="header line"):
        parse_chunks([encode([(["no colon here"], b"x")])])


@pytest.mark.parametrize("boundary", ["", "a" * 71, "has\r\nCRLF", "trailing "])
def test_invalid_boundary(boundary: str) -> None:
    with pytest.raises(InvalidInput):
        MultipartStream(boundary)


def test_data_after_close_is_ignored() -> None:
    stream = MultipartStream(B)
    assert stream.feed(encode([([], b"a")])) == [({}, b"a")]
    assert stream.feed(b"\r\n--" + B.encode() + b"\r\n\r\nlate\r\n--" + B.encode() + b"--") == []
    stream.close()


# -- linear time -------------------------------------------------------------------------------


def test_linear_time_with_small_chunks() -> None:
    """8 MiB in 1 KiB chunks and 256 KiB in 1-byte chunks: re-scanning the buffer on each
    chunk would take minutes (quadratic), a linear parser takes well under a second each."""
    rng = random.Random(5)
    big = rng.randbytes(8 << 20).replace(b"\r\n", b"\n\n")
    data = encode([(["Content-Type: application/dicom"], big), ([], b"tail")])
    start = time.perf_counter()
    got = parse_chunks([data[i : i + 1024] for i in range(0, len(data), 1024)])
    assert time.perf_counter() - start < 10
    assert got[0][1] == big and got[1][1] == b"tail"

    small = big[: 256 << 10]
    data = encode([([], small)])
    start = time.perf_counter()
    got = parse_chunks([data[i : i + 1] for i in range(len(data))])
    assert time.perf_counter() - start < 10
    assert got == [({}, small)]
