"""The TCP relay's framing: frames come out whole however the stream splits them, and a type
the protocol does not have ends the stream."""

from __future__ import annotations

import pytest

from shoal.model.relaywire import (
    HELLO,
    MAX_BODY,
    OK,
    PACKET,
    BadFrame,
    FrameReader,
    frame,
    packet,
)

KEY = bytes(range(32))


def test_frames_split_anywhere_come_out_whole_and_in_order() -> None:
    stream = frame(HELLO, b"Shoal-Node x") + packet(KEY, b"\x01" * 1400) + frame(OK, b"")
    for cut in range(1, len(stream)):
        reader = FrameReader()
        got = [*reader.feed(stream[:cut]), *reader.feed(stream[cut:])]
        assert got == [(HELLO, b"Shoal-Node x"), (PACKET, KEY + b"\x01" * 1400), (OK, b"")]
    one_byte_at_a_time = FrameReader()
    assert len([f for b in stream for f in one_byte_at_a_time.feed(bytes([b]))]) == 3


def test_unknown_types_and_oversized_bodies_are_refused() -> None:
    with pytest.raises(BadFrame, match="unknown relay frame type 9"):
        list(FrameReader().feed(b"\x09\x00\x00"))
    with pytest.raises(BadFrame, match="at most"):
        frame(PACKET, b"x" * (MAX_BODY + 1))
