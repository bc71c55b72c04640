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
HELLO_METHOD = "RELAY"
HELLO_TARGET = "/v1/relay/tcp"
HEADER = struct.Struct("!BH")
KEY_BYTES = 32
MAX_BODY = 0xFFFF
MAX_DATAGRAM = MAX_BODY - KEY_BYTES


class BadFrame(ValueError):
    """The peer sent something that is not this protocol (the stream is closed)."""


def frame(kind: int, body: bytes) -> bytes:
    if len(body) > MAX_BODY:
        raise BadFrame(f"frame body of {len(body)} bytes (at most {MAX_BODY})")
    return HEADER.pack(kind, len(body)) + body


def packet(key: bytes, datagram: bytes) -> bytes:
    """A PACKET frame for `datagram` to (or from) the node whose raw public key is `key`."""
    return HEADER.pack(PACKET, KEY_BYTES + len(datagram)) + key + datagram


class FrameReader:
    """Splits a byte stream into frames; feed it whatever the transport delivers."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        """The complete frames `data` finishes, in order: (type, body). Raises BadFrame on a
        frame type this protocol does not have."""
        buf = self._buf
        buf += data
        pos, end = 0, len(buf)
        while end - pos >= HEADER.size:
            kind, length = HEADER.unpack_from(buf, pos)
            if kind not in (HELLO, OK, ERROR, PACKET):
                raise BadFrame(f"unknown relay frame type {kind}")
            start = pos + HEADER.size
            if end - start < length:
                break
            yield kind, bytes(buf[start : start + length])
            pos = start + length
        del buf[:pos]
