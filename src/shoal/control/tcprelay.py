"""The relay over TCP/TLS (port 443 by default): carries WireGuard datagrams for nodes whose
UDP is blocked (wire format in `shoal.model.relaywire`), DERP-style.

Each node opens one TLS stream and proves its key with a node signature keyed by
X25519(node key, this relay's key) (`shoal.model.nodeauth`); only keys `is_node` accepts get
a session. A PACKET frame names its destination by public key: the relay passes the datagram,
still WireGuard's ciphertext, to that node's stream with the sender's key instead, or drops
it when that node has no stream (WireGuard retries, as over a lossy path). A node opening a
second stream replaces its first (a reconnect after a NAT or address change).

Cost per datagram: a header read and a 32-byte key overwritten, nothing more. TLS decrypts
straight into the stream's receive buffer (`FrameBuffer`); each PACKET frame's destination
key is replaced there, in place, by the sender's, and each run of consecutive frames for one
destination leaves as one slice (one copy per run, not per datagram). What a destination is
sent in one event loop turn is written at once (one TLS write). A destination whose stream
backs up beyond MAX_QUEUED bytes loses datagrams instead of growing the relay's memory: the
same as a full queue on a UDP path (a run is checked as a whole, so a stream's queue exceeds
MAX_QUEUED by at most one receive buffer).

Before its key is proven a stream costs little and cannot multiply: TLS must finish within
HANDSHAKE_TIMEOUT and the hello within HELLO_TIMEOUT, the hello is read into HELLO_BYTES (the
receive buffer comes with the proof), and at most MAX_UNPROVEN such streams are held, of
them MAX_UNPROVEN_PER_SOURCE from one address.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from shoal.control.errors import SignatureInvalid
from shoal.control.nodeauth import NodeVerifier
from shoal.model.keys import PublicKey
from shoal.model.relaywire import (
    ERROR,
    HEADER,
    HELLO,
    HELLO_METHOD,
    HELLO_TARGET,
    KEY_BYTES,
    OK,
    PACKET,
    PACKET_OVERHEAD,
    BadFrame,
    FrameBuffer,
    frame,
)

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 10.0  # seconds a new stream has to prove its key
HANDSHAKE_TIMEOUT = 10.0  # seconds a new connection has to finish its TLS handshake
# A HELLO frame (header included) is one signature header, a few hundred bytes: a stream holds
# this much until its key is proven, and the receive buffer only then.
HELLO_BYTES = 4096
MAX_UNPROVEN = 1024  # streams past TLS whose key is not proven yet, in all
MAX_UNPROVEN_PER_SOURCE = 16  # of those, from one address
MAX_QUEUED = 1 << 20  # bytes waiting for one destination before its datagrams are dropped
MAX_STREAMS = 10_000


@dataclass
class RelayCounters:
    forwarded: int = 0  # datagrams
    forwarded_bytes: int = 0
    dropped_no_peer: int = 0
    dropped_backlog: int = 0
    refused: int = 0  # streams that did not prove a node key


class _Stream(asyncio.BufferedProtocol):
    """One node's TLS stream."""

    def __init__(self, relay: TcpRelay) -> None:
        self.relay = relay
        self.key: bytes | None = None  # the node's raw public key once proven
        self.transport: asyncio.Transport | None = None
        self.source: str | None = None  # the peer's address while it counts as unproven
        # Until the key is proven only the hello is read, into a small buffer; a node's
        # stream gets its receive buffer once it is one.
        self.hello_buf = bytearray(HELLO_BYTES)
        self.hello_filled = 0
        self.frames: FrameBuffer | None = None
        self.out: list[bytes] = []
        self.queued = 0  # bytes in `out`
        self.hello_timer: asyncio.TimerHandle | None = None
        # The hello being checked (its signature is claimed in the store, which may wait on
        # the database): nothing else is taken from the stream until it is answered.
        self.checking: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Datagrams are small and latency-bound: never wait to coalesce them.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        source = str(peer[0]) if peer else "?"
        if not self.relay.admit(source):
            self.refuse(f"too many streams without a proven key (from {source}, or in all)")
            return
        self.source = source
        loop = asyncio.get_running_loop()
        self.hello_timer = loop.call_later(HELLO_TIMEOUT, self.refuse, "no hello in time")

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.frames is not None:
            return self.frames.free()
        return memoryview(self.hello_buf)[self.hello_filled :]

    def buffer_updated(self, nbytes: int) -> None:
        try:
            if self.frames is None:
                self.hello_received(nbytes)
                return
            if self.key is not None:
                self.relay.forward(self.key, self.frames, nbytes)
        except BadFrame as exc:
            self.refuse(str(exc))
            return
        self.frames.compact()

    def hello_received(self, nbytes: int) -> None:
        """Bytes of an unproven stream: one HELLO frame, then nothing until it is answered.
        BadFrame on anything else (a frame too large for a hello included)."""
        self.hello_filled += nbytes
        if self.checking is not None:
            raise BadFrame("a frame before the hello was answered")
        if self.hello_filled < HEADER.size:
            return
        kind, length = HEADER.unpack_from(self.hello_buf)
        if kind != HELLO:
            raise BadFrame(f"unexpected relay frame type {kind}")
        end = HEADER.size + length
        if end >= HELLO_BYTES:  # a byte stays free: what follows is read, and refused
            raise BadFrame(f"a hello of {length} bytes (less than {HELLO_BYTES - HEADER.size})")
        if self.hello_filled > end:
            raise BadFrame("a frame before the hello was answered")
        if self.hello_filled == end:
            hello = bytes(self.hello_buf[HEADER.size : end])
            self.checking = asyncio.create_task(self.hello(hello), name="relay-hello")

    async def hello(self, body: bytes) -> None:
        try:
            key = await self.relay.authenticate(body.decode("ascii", "replace"))
        except SignatureInvalid as exc:
            self.refuse(str(exc))
            return
        if self.transport is None or self.transport.is_closing():
            return  # gone (or timed out) while its signature was checked
        if self.hello_timer is not None:
            self.hello_timer.cancel()
        self.proven()
        self.key = key.raw
        self.frames = FrameBuffer()
        self.relay.attach(self)
        self.send(frame(OK, b""))

    def refuse(self, why: str) -> None:
        if self.key is None:
            self.relay.counters.refused += 1
        log.info("tcp relay: stream refused: %s", why)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame(ERROR, why.encode()[:512]))
            self.transport.close()

    def send(self, data: bytes) -> None:
        """Queue `data`; everything queued in one loop turn is written at once."""
        if not self.out:
            asyncio.get_running_loop().call_soon(self.flush)
        self.out.append(data)
        self.queued += len(data)

    def backlog(self) -> int:
        if self.transport is None:
            return 0
        return self.transport.get_write_buffer_size() + self.queued

    def flush(self) -> None:
        out, self.out, self.queued = self.out, [], 0
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def proven(self) -> None:
        """No longer counted as unproven (its key is proven, or it is gone)."""
        if self.source is not None:
            self.relay.release(self.source)
            self.source = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.hello_timer is not None:
            self.hello_timer.cancel()
        self.proven()
        self.relay.detach(self)


def bind_relay_socket(host: str, port: int | None) -> socket.socket | None:
    """A listening TCP socket for the relay on `host`:`port` (0: any port); None without a
    port, or when it cannot be bound (in use, or 443 for a user without the right): logged,
    and the mesh then has no TCP relay (hosts without UDP have no path)."""
    if port is None:
        return None
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(512)
    except OSError as exc:
        sock.close()
        log.warning(
            "tcp relay: cannot listen on %s:%d (%s); hosts whose UDP is blocked will have no "
            "path (use --relay-port to pick another port)",
            host,
            port,
            exc.strerror,
        )
        return None
    sock.setblocking(False)
    return sock


class TcpRelay:
    """The streams of one relay; `serve` listens, `forward` moves one datagram."""

    def __init__(self, verifier: NodeVerifier, is_node: Callable[[PublicKey], bool]) -> None:
        self._verifier = verifier
        self._is_node = is_node
        self._streams: dict[bytes, _Stream] = {}
        self._unproven: dict[str, int] = {}  # source address -> streams not yet proven
        self._server: asyncio.Server | None = None
        self.counters = RelayCounters()

    async def serve(self, sock: socket.socket, ssl_context: ssl.SSLContext) -> None:
        """Accept TLS streams on `sock` (from `bind_relay_socket`)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Stream(self),
            sock=sock,
            ssl=ssl_context,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
        )
        log.info("tcp relay listening on %s:%d", *sock.getsockname()[:2])

    async def authenticate(self, header: str) -> PublicKey:
        """The node key `header` (a HELLO body) proves; SignatureInvalid otherwise."""
        key = await self._verifier.verify(header, HELLO_METHOD, HELLO_TARGET, b"")
        if not self._is_node(key):
            raise SignatureInvalid("this key is no node of the mesh (removed, or never joined)")
        if len(self._streams) >= MAX_STREAMS:
            raise SignatureInvalid("relay full")
        return key

    def admit(self, source: str) -> bool:
        """Count a new stream from `source` as unproven, unless too many already are: a
        host holding connections open without a hello must not use up the relay."""
        if sum(self._unproven.values()) >= MAX_UNPROVEN:
            return False
        if self._unproven.get(source, 0) >= MAX_UNPROVEN_PER_SOURCE:
            return False
        self._unproven[source] = self._unproven.get(source, 0) + 1
        return True

    def release(self, source: str) -> None:
        left = self._unproven.get(source, 0) - 1
        if left > 0:
            self._unproven[source] = left
        else:
            self._unproven.pop(source, None)

    def unproven(self) -> int:
        return sum(self._unproven.values())

    def attach(self, stream: _Stream) -> None:
        assert stream.key is not None
        old = self._streams.get(stream.key)
        self._streams[stream.key] = stream
        if old is not None and old.transport is not None:
            old.key = None  # its connection_lost must not detach the new stream
            old.transport.close()
        log.info("tcp relay: %s connected (%d streams)", _name(stream.key), len(self._streams))

    def detach(self, stream: _Stream) -> None:
        if stream.key is not None and self._streams.get(stream.key) is stream:
            del self._streams[stream.key]
            log.info("tcp relay: %s gone", _name(stream.key))

    def forward(self, source: bytes, frames: FrameBuffer, nbytes: int) -> None:
        """Pass on the PACKET frames `nbytes` more bytes from node `source` complete: each
        one's destination key is overwritten with `source` where it lies in `frames`, and
        each run of frames for one destination is queued to it as one slice. BadFrame on any
        other frame (the stream is then refused)."""
        data, view, streams = frames.data, frames.view, self._streams
        run: _Stream | None = None  # where the frames from run_start to run_stop go
        run_start = run_stop = run_frames = 0
        last_key, last = b"", None  # the previous frame's destination: usually the same
        for kind, start, stop in frames.received(nbytes):
            if kind != PACKET or stop - start <= KEY_BYTES:
                raise BadFrame(f"unexpected relay frame type {kind} (or an empty datagram)")
            if data.startswith(last_key, start) and last_key:
                dest = last
            else:
                last_key = bytes(view[start : start + KEY_BYTES])
                dest = last = streams.get(last_key)
            if dest is None:
                self.counters.dropped_no_peer += 1
                continue  # the next frame is not contiguous with the run: it starts another
            data[start : start + KEY_BYTES] = source
            begin = start - HEADER.size
            if dest is run and begin == run_stop:
                run_stop, run_frames = stop, run_frames + 1
                continue
            self._queue(run, view[run_start:run_stop], run_frames)
            run, run_start, run_stop, run_frames = dest, begin, stop, 1
        self._queue(run, view[run_start:run_stop], run_frames)

    def _queue(self, dest: _Stream | None, frames: memoryview, count: int) -> None:
        """Queue `count` whole frames (a copy: the receive buffer is reused) to `dest`."""
        if dest is None or not count:
            return
        if dest.backlog() > MAX_QUEUED:
            self.counters.dropped_backlog += count
            return
        dest.send(bytes(frames))
        self.counters.forwarded += count
        self.counters.forwarded_bytes += len(frames) - count * PACKET_OVERHEAD

    def connected(self) -> tuple[PublicKey, ...]:
        return tuple(PublicKey(k) for k in sorted(self._streams))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for stream in list(self._streams.values()):
            if stream.transport is not None:
                stream.transport.close()
        self._streams.clear()
        if self._server is not None:
            await self._server.wait_closed()


def _name(raw: bytes) -> str:
    return PublicKey(raw).short()
