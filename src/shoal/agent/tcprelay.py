"""The agent's side of the relay over TCP/TLS (`shoal.control.tcprelay`, wire format in
`shoal.model.relaywire`): how a host without UDP still reaches its peers.

WireGuard only speaks UDP, so each peer that goes through a TCP relay gets a UDP socket of
its own on loopback (127.0.0.1:<any port>), configured as that peer's WireGuard endpoint.
What WireGuard sends there leaves as a PACKET frame naming the peer's key on the one TLS
stream to the relay; what the relay delivers from a peer's key is sent from that peer's
loopback socket to WireGuard's port, so WireGuard sees each peer come from its own endpoint
(and roams a peer to it by itself when the peer reached us through the relay first). The
datagrams stay WireGuard's ciphertext end to end; this process and the relay only frame them.

Python pays per datagram on this path, so that part is kept to system calls. Each loopback
socket is connected to WireGuard's port (the kernel filters out anything else). Per wakeup
one is drained of up to BATCH datagrams, each received straight into one outgoing buffer
behind its frame header, and written as one TLS write. From the relay, TLS decrypts straight
into the stream's receive buffer and each datagram is sent to WireGuard from its slice there.
A stream backed up beyond MAX_QUEUED bytes drops datagrams as a full UDP queue would.
Streams open when a peer first needs them and reconnect with backoff when they drop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import cast

from shoal.controlclient.errors import ControlError
from shoal.model.keys import PrivateKey, PublicKey
from shoal.model.netmap import Endpoint
from shoal.model.nodeauth import shared_key, sign
from shoal.model.relaywire import (
    ERROR,
    HEADER,
    HELLO,
    HELLO_METHOD,
    HELLO_TARGET,
    KEY_BYTES,
    MAX_DATAGRAM,
    OK,
    PACKET,
    PACKET_OVERHEAD,
    BadFrame,
    FrameBuffer,
    frame,
)

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
BATCH = 256  # datagrams drained from one loopback socket per wakeup, at most
OUT_BYTES = 512 * 1024  # the outgoing buffer one drain fills (~300 full-size datagrams)
MAX_QUEUED = 1 << 20  # bytes waiting on a stream before datagrams are dropped
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33  # linux/socket.h; not in Python's socket module
SOCKET_BUFFER = 4 << 20  # bytes of each loopback socket's receive and send buffers
CONNECT_TIMEOUT = 10.0
BACKOFF_MIN, BACKOFF_MAX = 1.0, 10.0  # seconds between attempts to a failing relay


def _grow_buffers(sock: socket.socket) -> None:
    """WireGuard sends in bursts (a TCP window at a time) faster than one Python loop turn
    drains: the default ~200 KB (about 90 datagrams of kernel accounting) overflowed."""
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
        except OSError:  # not root (CAP_NET_ADMIN): as much as net.core.*mem_max allows
            sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)


def _pinning() -> ssl.SSLContext:
    """A context for a standalone relay: its self-signed certificate is checked against the
    pin from the netmap (`_check_pin`) instead of a CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _check_pin(stream: _Stream, pin: str) -> None:
    """ConnectionError unless the relay showed the certificate the netmap pins."""
    ssl_object = stream.transport.get_extra_info("ssl_object") if stream.transport else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if der is None or not hmac.compare_digest(hashlib.sha256(der).hexdigest(), pin):
        raise ConnectionError("the relay's certificate is not the one the server announced")


@dataclass(frozen=True, slots=True)
class RelayTarget:
    """A relay's address; `key` what node signatures to it are keyed with (None: the
    control server's node-auth key); `cert_sha256` the pinned certificate of a standalone
    relay (None: the server's own, verified against the mesh's CA)."""

    host: IPv4Address
    port: int
    key: PublicKey | None = None
    cert_sha256: str | None = None

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass
class _Local:
    peer: bytes  # raw public key
    target: RelayTarget
    sock: socket.socket
    endpoint: Endpoint


class _Stream(asyncio.BufferedProtocol):
    def __init__(self, client: TcpRelayClient, target: RelayTarget) -> None:
        self.client = client
        self.target = target
        self.transport: asyncio.Transport | None = None
        self.frames = FrameBuffer()
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.signed_as: PublicKey | None = None  # the node key its hello proved

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.frames.free()

    def buffer_updated(self, nbytes: int) -> None:
        frames = self.frames
        data, view = frames.data, frames.view
        deliver = self.client.deliver
        source = b""  # the previous datagram's sender: usually the same
        try:
            for kind, start, stop in frames.received(nbytes):
                if kind == PACKET and stop - start > KEY_BYTES:
                    if not source or not data.startswith(source, start):
                        source = bytes(view[start : start + KEY_BYTES])
                    deliver(self.target, source, view[start + KEY_BYTES : stop])
                elif kind == OK and not self.opened.done():
                    self.opened.set_result(None)
                elif kind == ERROR:
                    why = bytes(view[start:stop]).decode("utf-8", "replace")
                    if not self.opened.done():
                        self.opened.set_exception(ConnectionError(f"relay refused: {why}"))
                    log.warning("tcp relay %s: %s", self.target, why)
                else:
                    raise BadFrame(f"unexpected relay frame type {kind}")
        except BadFrame as exc:
            log.warning("tcp relay %s: %s", self.target, exc)
            self.close()
            return
        frames.compact()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("relay closed the stream"))
        self.client.lost(self)

    def write(self, data: bytes) -> bool:
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        if transport.get_write_buffer_size() > MAX_QUEUED:
            return False
        transport.write(data)
        return True

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


@dataclass
class TcpRelayCounters:
    sent: int = 0  # datagrams from WireGuard onto a stream
    received: int = 0  # datagrams from a stream to WireGuard
    dropped: int = 0  # no open stream, or a backed-up one
    connects: int = 0
    failures: list[str] = field(default_factory=list)  # the last few, for status


class TcpRelayClient:
    """Loopback endpoints for peers reached over TCP relays, and the streams behind them."""

    def __init__(
        self,
        *,
        listen_port: int,
        ssl_context: Callable[[], ssl.SSLContext],
        private_key: Callable[[], PrivateKey],
        server_mac_key: Callable[[], Awaitable[bytes]],
    ) -> None:
        self._listen_port = listen_port
        self._ssl_context = ssl_context
        self._private_key = private_key
        self._server_mac_key = server_mac_key
        self._locals: dict[bytes, _Local] = {}
        self._streams: dict[RelayTarget, _Stream] = {}
        self._wanted: set[RelayTarget] = set()
        self._retry_at: dict[RelayTarget, tuple[float, float]] = {}  # when, backoff
        self._changed = asyncio.Event()
        self.counters = TcpRelayCounters()
        self._out = bytearray(OUT_BYTES)  # what one drain sends to a stream, framed
        self._out_view = memoryview(self._out)

    # -- what the path selection asks ------------------------------------------------------

    def local(self, peer: PublicKey, target: RelayTarget) -> Endpoint:
        """The loopback endpoint WireGuard uses for `peer` through `target` (made on first
        ask, and the stream to `target` opened soon after)."""
        local = self._locals.get(peer.raw)
        if local is not None and local.target == target:
            return local.endpoint
        if local is not None:
            self._close_local(local)
        return self._open_local(peer.raw, target).endpoint

    def targets(self) -> tuple[RelayTarget, ...]:
        """The relays some peer uses now."""
        return tuple({local.target for local in self._locals.values()})

    def local_of(self, peer: PublicKey) -> str | None:
        """The loopback endpoint ("127.0.0.1:port") WireGuard uses for `peer`, if any."""
        local = self._locals.get(peer.raw)
        return None if local is None else str(local.endpoint)

    def relay_of(self, endpoint: str) -> RelayTarget | None:
        """The relay behind loopback endpoint `endpoint` ("127.0.0.1:port"), None when it is
        not one of this client's sockets."""
        return next(
            (lo.target for lo in self._locals.values() if str(lo.endpoint) == endpoint), None
        )

    def failing(self, target: RelayTarget) -> bool:
        """The last attempt to open a stream to `target` failed (or its stream dropped and
        no new one is open yet)."""
        return target in self._retry_at and target not in self._streams

    def connected(self, target: RelayTarget) -> bool:
        stream = self._streams.get(target)
        return stream is not None and stream.opened.done() and stream.opened.exception() is None

    def keep(self, peers: set[PublicKey]) -> None:
        """Close the loopback sockets of peers not in `peers` (gone from the netmap)."""
        raws = {p.raw for p in peers}
        for raw, local in list(self._locals.items()):
            if raw not in raws:
                self._close_local(local)

    # -- datagrams -------------------------------------------------------------------------

    def _open_local(self, peer: bytes, target: RelayTarget) -> _Local:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        _grow_buffers(sock)
        sock.bind((LOOPBACK, 0))
        # Only WireGuard talks to it: the kernel drops anyone else's datagrams, and neither
        # direction handles an address per datagram.
        sock.connect((LOOPBACK, self._listen_port))
        sock.setblocking(False)
        endpoint = Endpoint(host=IPv4Address(LOOPBACK), port=sock.getsockname()[1])
        local = _Local(peer=peer, target=target, sock=sock, endpoint=endpoint)
        self._locals[peer] = local
        asyncio.get_running_loop().add_reader(sock.fileno(), self._drain, local)
        if target not in self._wanted:
            self._wanted.add(target)
            self._changed.set()
        return local

    def _close_local(self, local: _Local) -> None:
        with contextlib.suppress(ValueError, OSError):  # the loop is gone (shutdown)
            asyncio.get_running_loop().remove_reader(local.sock.fileno())
        local.sock.close()
        if self._locals.get(local.peer) is local:
            del self._locals[local.peer]

    def _drain(self, local: _Local) -> None:
        """WireGuard sent to `local`: frame what it sent and write it in one go. Each datagram
        is received behind the room for its frame header in `_out`; the header follows."""
        out, view, sock, peer = self._out, self._out_view, local.sock, local.peer
        pos = count = 0
        room = len(out) - PACKET_OVERHEAD - MAX_DATAGRAM  # a whole datagram fits below
        for _ in range(BATCH):
            if pos > room:
                break
            body = pos + PACKET_OVERHEAD
            try:
                size = sock.recv_into(view[body:], MAX_DATAGRAM, socket.MSG_TRUNC)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue  # an ICMP error for an earlier send (WireGuard was away): cleared
            if size > MAX_DATAGRAM:
                self.counters.dropped += 1  # more than a frame carries (WireGuard sends less)
                continue
            HEADER.pack_into(out, pos, PACKET, KEY_BYTES + size)
            out[pos + HEADER.size : body] = peer
            pos, count = body + size, count + 1
        if not count:
            return
        stream = self._streams.get(local.target)
        if stream is not None and stream.opened.done() and stream.write(bytes(view[:pos])):
            self.counters.sent += count
        else:
            self.counters.dropped += count

    def deliver(self, target: RelayTarget, source: bytes, datagram: memoryview) -> None:
        """A datagram from peer `source` came over `target`: hand it to WireGuard."""
        local = self._locals.get(source)
        if local is None:
            # The peer reached us first: WireGuard roams it to this socket once the datagram
            # authenticates, and replies go back the way it came.
            local = self._open_local(source, target)
        try:
            local.sock.send(datagram)
            self.counters.received += 1
        except OSError:
            self.counters.dropped += 1

    # -- streams ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Keep a stream open to every relay some peer uses, until cancelled."""
        try:
            while True:
                self._changed.clear()
                now = time.monotonic()
                wait = BACKOFF_MAX
                for target in list(self._wanted):
                    if target in self._streams:
                        continue
                    when, backoff = self._retry_at.get(target, (0.0, BACKOFF_MIN))
                    if now < when:
                        wait = min(wait, when - now)
                        continue
                    if await self._connect(target):
                        self._retry_at.pop(target, None)
                    else:
                        self._retry_at[target] = (now + backoff, min(backoff * 2, BACKOFF_MAX))
                        wait = min(wait, backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), wait)
        finally:
            self.close()

    async def _connect(self, target: RelayTarget) -> bool:
        loop = asyncio.get_running_loop()
        stream: _Stream | None = None
        try:
            hello, signed_as = await self._hello(target)
            _transport, opened = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Stream(self, target),
                    str(target.host),
                    target.port,
                    ssl=self._ssl_context() if target.cert_sha256 is None else _pinning(),
                ),
                CONNECT_TIMEOUT,
            )
            stream = opened
            self._streams[target] = opened
            if target.cert_sha256 is not None:
                _check_pin(opened, target.cert_sha256)
            opened.signed_as = signed_as
            opened.write(frame(HELLO, hello.encode()))
            await asyncio.wait_for(asyncio.shield(opened.opened), CONNECT_TIMEOUT)
        except (OSError, TimeoutError, ssl.SSLError, ConnectionError) as exc:
            why = str(exc) or type(exc).__name__
            log.warning("tcp relay %s: cannot connect: %s", target, why)
            self.counters.failures = [*self.counters.failures[-4:], f"{target}: {why}"]
            if stream is not None:
                stream.close()
                self._streams.pop(target, None)
            return False
        except ControlError as exc:  # no MAC key from the server yet: retry later
            log.warning("tcp relay %s: no key to sign with yet: %s", target, exc)
            return False
        self.counters.connects += 1
        log.info("tcp relay %s: connected", target)
        return True

    async def _hello(self, target: RelayTarget) -> tuple[str, PublicKey]:
        """The HELLO body for `target` and the node key it proves."""
        private = self._private_key()
        node = private.public_key()
        if target.key is None:
            key = await self._server_mac_key()
        else:
            key = shared_key(private, target.key, node, target.key)
        sig = sign(key, node, HELLO_METHOD, HELLO_TARGET, b"", int(time.time()))
        return sig.header(), node

    def lost(self, stream: _Stream) -> None:
        if self._streams.get(stream.target) is stream:
            del self._streams[stream.target]
            log.warning("tcp relay %s: stream lost; reconnecting", stream.target)
            self._changed.set()

    def follow_key(self) -> None:
        """Close the streams opened as another key than this node's current one (a key
        rotation switched it: relays deliver to the key a stream proved, and peers now send to
        the new one); they reopen as the current key."""
        current = self._private_key().public_key()
        for stream in list(self._streams.values()):
            if stream.signed_as is not None and stream.signed_as != current:
                stream.close()

    def close(self) -> None:
        for stream in list(self._streams.values()):
            stream.close()
        self._streams.clear()
        for local in list(self._locals.values()):
            self._close_local(local)
