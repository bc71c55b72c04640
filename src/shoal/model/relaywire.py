"""The TCP relay's wire format (`shoal.control.tcprelay` serves it, `shoal.agent.tcprelay`
speaks it): WireGuard datagrams carried over one TLS stream per node, DERP-style.

Every frame is a 3-byte header, type (1 byte) and body length (2 bytes, big-endian), then
the body:

    HELLO  1  client → relay, first frame: a node signature header (`shoal.model.nodeauth`)
              over method "RELAY" and target HELLO_TARGET with an empty body, keyed by
              X25519(node key, relay key): only the holder of the node's private key opens a
              session as that node.
    OK     2  relay → client: the session is open (empty body).
    ERROR  3  relay → client: why not (UTF-8 text); the relay then closes the stream.
    PACKET 4  client → relay: 32-byte raw public key of the destination + one datagram;
              relay → client: 32-byte raw public key of the source + the datagram.

The datagram is WireGuard's ciphertext as WireGuard sent it: the relay holds no key that
decrypts it. Pure: no I/O.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

HELLO, OK, ERROR, PACKET = 1, 2, 3, 4
KINDS = frozenset((HELLO, OK, ERROR, PACKET))
HELLO_METHOD = "RELAY"
HELLO_TARGET = "/v1/relay/tcp"
HEADER = struct.Struct("!BH")
KEY_BYTES = 32
MAX_BODY = 0xFFFF
MAX_DATAGRAM = MAX_BODY - KEY_BYTES
PACKET_OVERHEAD = HEADER.size + KEY_BYTES  # in front of each datagram
MAX_FRAME = HEADER.size + MAX_BODY
# A TLS transport reads up to this much per call (asyncio's own read size): many frames per
# wakeup, one pass over them.
BUFFER_BYTES = 256 * 1024


class BadFrame(ValueError):
    """The peer sent something that is not this protocol (the stream is closed)."""


def frame(kind: int, body: bytes) -> bytes:
    if len(body) > MAX_BODY:
        raise BadFrame(f"frame body of {len(body)} bytes (at most {MAX_BODY})")
    return HEADER.pack(kind, len(body)) + body


class FrameBuffer:
    """One stream's receive buffer, filled in place by asyncio's `BufferedProtocol` (a TLS
    transport decrypts straight into `free()`); `received` walks the complete frames by
    offset, so a relay moves datagrams without copying each one out.

    `data` never changes size (a memoryview of it stays valid). The protocol calls
    `received(n)` after the transport wrote n bytes into `free()`, uses each frame's body
    `data[start:stop]` while iterating (it may overwrite a body in place), then `compact()`,
    which moves the unfinished frame at the end to the front: after that the offsets are
    stale. A partial frame is at most MAX_FRAME - 1 bytes, so at least `size - MAX_FRAME`
    bytes are always free.
    """

    __slots__ = ("_pos", "data", "filled", "view")

    def __init__(self, size: int = BUFFER_BYTES) -> None:
        if size < 2 * MAX_FRAME:
            raise ValueError(f"a frame buffer needs at least {2 * MAX_FRAME} bytes")
        self.data = bytearray(size)
        self.view = memoryview(self.data)
        self.filled = 0  # bytes of data received and not yet compacted away
        self._pos = 0  # where the first frame not yet walked starts

    def free(self) -> memoryview:
        """Where the transport writes next."""
        return self.view[self.filled :]

    def received(self, nbytes: int) -> Iterator[tuple[int, int, int]]:
        """`nbytes` more were written into `free()`: the complete frames not walked yet, in
        order, as (type, body start, body stop) offsets into `data`. Raises BadFrame on a
        frame type this protocol does not have."""
        self.filled += nbytes
        data, end = self.data, self.filled
        unpack = HEADER.unpack_from
        pos = self._pos
        while end - pos >= HEADER.size:
            kind, length = unpack(data, pos)
            if kind not in KINDS:
                raise BadFrame(f"unknown relay frame type {kind}")
            start = pos + HEADER.size
            stop = start + length
            if stop > end:
                break
            pos = self._pos = stop
            yield kind, start, stop

    def compact(self) -> None:
        """Keep only the unfinished frame, moved to the front of `data`."""
        pos, rest = self._pos, self.filled - self._pos
        if pos:
            if rest:
                self.data[:rest] = self.data[pos : self.filled]  # a copy: the ranges overlap
            self.filled, self._pos = rest, 0
