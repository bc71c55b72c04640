"""The TCP relay's framing: frames come out whole however the stream splits them, a buffer
never runs out of room for a whole frame, and a type the protocol does not have ends the
stream."""

from __future__ import annotations

import pytest

from shoal.model.relaywire import (
    HELLO,
    MAX_BODY,
    MAX_FRAME,
    OK,
    PACKET,
    BadFrame,
    FrameBuffer,
    frame,
)

KEY = bytes(range(32))


def feed(buf: FrameBuffer, data: bytes) -> list[tuple[int, bytes]]:
    """What a transport does: write into `free()`, then walk the frames and compact."""
    got = []
    while data:
        room = buf.free()
        n = min(len(room), len(data))
        room[:n] = data[:n]
        got += [(kind, bytes(buf.data[start:stop])) for kind, start, stop in buf.received(n)]
        buf.compact()
        data = data[n:]
    return got


def test_frames_split_anywhere_come_out_whole_and_in_order() -> None:
    stream = frame(HELLO, b"Shoal-Node x") + frame(PACKET, KEY + b"\x01" * 1400) + frame(OK, b"")
    want = [(HELLO, b"Shoal-Node x"), (PACKET, KEY + b"\x01" * 1400), (OK, b"")]
    for cut in range(1, len(stream)):
        buf = FrameBuffer()
        assert [*feed(buf, stream[:cut]), *feed(buf, stream[cut:])] == want
        assert buf.filled == 0  # nothing left over once the last frame is whole
    one_byte_at_a_time = FrameBuffer()
    assert len([f for b in stream for f in feed(one_byte_at_a_time, bytes([b]))]) == 3


def test_the_largest_frames_back_to_back_always_fit() -> None:
    big = frame(PACKET, KEY + b"\x02" * (MAX_BODY - len(KEY)))
    buf = FrameBuffer(2 * MAX_FRAME)
    stream = (big + frame(OK, b"")) * 5
    assert feed(buf, stream) == [(PACKET, big[3:]), (OK, b"")] * 5
    assert len(buf.free()) == len(buf.data)
    with pytest.raises(ValueError, match="at least"):
        FrameBuffer(MAX_FRAME)


def test_unknown_types_and_oversized_bodies_are_refused() -> None:
    with pytest.raises(BadFrame, match="unknown relay frame type 9"):
        feed(FrameBuffer(), b"\x09\x00\x00")
    with pytest.raises(BadFrame, match="at most"):
        frame(PACKET, b"x" * (MAX_BODY + 1))
