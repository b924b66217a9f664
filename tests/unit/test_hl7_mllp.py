"""MLLP deframing: split reads, several frames per read, noise, restarts, oversize frames."""

from __future__ import annotations

from drimbox.adapters.hl7.mllp import KEPT_PREFIX, Frame, MllpDecoder, frame

A = b"MSH|^~\\&|A\rPID|1\r"
B = b"MSH|^~\\&|B\r"


def _feed_all(decoder: MllpDecoder, chunks: list[bytes]) -> list[Frame]:
    return [f for chunk in chunks for f in decoder.feed(chunk)]


def test_one_frame() -> None:
    assert MllpDecoder(1000).feed(frame(A)) == [Frame(A, False, len(A))]


def test_every_split_point() -> None:
    data = frame(A) + frame(B)
    for i in range(len(data) + 1):
        for j in range(i, len(data) + 1):
            frames = _feed_all(MllpDecoder(1000), [data[:i], data[i:j], data[j:]])
            assert [f.data for f in frames] == [A, B], (i, j)


def test_byte_by_byte_and_two_frames_in_one_read() -> None:
    decoder = MllpDecoder(1000)
    data = frame(A) + frame(B)
    assert [f.data for f in _feed_all(decoder, [bytes([b]) for b in data])] == [A, B]
    assert [f.data for f in decoder.feed(data)] == [A, B]
    assert not decoder.partial


def test_noise_between_frames_is_ignored() -> None:
    data = b"\r\n  " + frame(A) + b"\n\x00junk" + frame(B) + b"\r"
    assert [f.data for f in MllpDecoder(1000).feed(data)] == [A, B]


def test_new_start_block_abandons_the_partial_frame() -> None:
    decoder = MllpDecoder(1000)
    assert decoder.feed(b"\x0bMSH|half a mess") == []
    assert decoder.partial
    assert [f.data for f in decoder.feed(frame(B))] == [B]


def test_end_block_without_carriage_return() -> None:
    assert [f.data for f in MllpDecoder(1000).feed(b"\x0b" + A + b"\x1c\x0b" + B + b"\x1c")] == [
        A, B]  # fmt: skip


def test_oversize_frame_keeps_its_start_and_the_stream_goes_on() -> None:
    big = b"MSH|^~\\&|BIG\r" + b"X" * (3 * KEPT_PREFIX)
    decoder = MllpDecoder(KEPT_PREFIX // 2)
    chunks = [frame(big)[i : i + 5000] for i in range(0, len(big) + 3, 5000)]
    frames = _feed_all(decoder, [*chunks, frame(B)])
    assert frames[0].too_large and frames[0].size == len(big)
    assert frames[0].data.startswith(b"MSH|^~\\&|BIG\r")
    assert len(frames[0].data) <= KEPT_PREFIX
    assert frames[1] == Frame(B, False, len(B))
