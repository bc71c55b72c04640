"""The server's listening socket and connection guard: caps, timeouts, a quiet accept path.

aiohttp bounds request sizes but not connections: it has no limit on how many a client may
open, no timeout for a client that sends its headers one byte at a time (slowloris) and none
for a connection that never sends a request at all, and asyncio's TLS handshake waits 60 s.
A review held 1,100 idle connections against the default fd limit of 1,024 and pushed a
registration to 24 s, past the agent's 15 s timeout. Here:

- `GuardedSite` listens through `_Listener`, whose `accept` admits a connection only while its
  source holds fewer than `max_per_source` and opens at most `new_per_source`; a refused one
  is closed at once, before any TLS work, so a flood costs the server one accept() each. At
  `max_connections` the connection idle the longest (no request in progress) is closed to
  make room, else the oldest still in its TLS handshake: idle or stalled connections from
  many addresses cannot lock agents out, and a request in progress (a long-poll) is never
  closed. Only when every connection is busy is the new one refused. The count drops when
  asyncio closes the socket (`_Conn.close`), whatever happened to the connection (a failed
  handshake included).
- The TLS handshake must finish within `handshake_timeout`.
- `_Guarded` wraps aiohttp's protocol of each connection: a connection with no request in
  progress is closed after `idle_timeout`, and once a request's first byte is in, its
  headers must be complete (the API middleware calls `request_started`) within
  `header_timeout`; more bytes do not extend the deadline. A request being handled has no
  deadline here: the handler bounds itself (body timeout, long-poll wait).
- A request aiohttp cannot parse is one INFO line (`BadRequestsInOneLine`), not an ERROR
  with a traceback.
- `max_connections` is kept below the process's fd limit (raised to its hard limit at
  start), and running out of fds anyway (other processes, sqlite) logs one line every
  OUT_OF_FDS_LOG_EVERY seconds instead of a traceback per attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address
from ssl import SSLContext
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from shoal.control.limits import Rate, RateLimiter

log = logging.getLogger("shoal.control")

# fds kept free of connections: the store, the CA files, logging, threads, and the idle
# connections closed in one round of ACCEPT_BATCH accepts that give their fd back a moment later.
ACCEPT_BATCH = 128
FD_RESERVE = 2 * ACCEPT_BATCH
OUT_OF_FDS_LOG_EVERY = 10.0  # seconds
EXEMPT_KEPT = 4096  # sources whose exemption is remembered
_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


# New connections per source: each costs a TLS handshake (~2 ms of CPU), and 1,100 of them at
# once held a registration up for 2.7 s. An agent opens a few per minute.
NEW_PER_SOURCE = Rate(burst=64, per_second=32.0)


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Bounds on connections; times in seconds. The defaults let one agent per host keep its
    long-poll open and a NAT with a few hundred hosts behind one address join, while one
    attacking address cannot hold more than `max_per_source` connections."""

    # Server-wide, lowered to what the fd limit allows: 10,000 hosts hold one netmap stream
    # each, and make their other calls (container reports, relays, registrations) besides.
    max_connections: int = 20_000
    max_per_source: int = 256
    new_per_source: Rate = NEW_PER_SOURCE
    # Sources exempt from every per-source limit here and in the API (`--no-limits-from`).
    exempt: tuple[IPv4Network | IPv6Network, ...] = ()
    handshake_timeout: float = 10.0
    header_timeout: float = 10.0  # from a request's first byte to its complete headers
    idle_timeout: float = 30.0  # no request in progress (before the first one, keep-alive)


def raise_fd_limit() -> int:
    """Raise this process's soft fd limit to its hard limit (systemd's soft default of 1,024
    is far below what a server holding one long-poll per host needs); the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        wanted = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass  # not allowed here: keep the soft limit and cap connections under it
    return soft


class Connections:
    """The open connections: counts per source, the guard of each by transport, and which
    ones could make room at the cap (idle ones, then those still in their TLS handshake)."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.open = 0
        self._by_source: dict[str, int] = {}
        self._conns: dict[int, _Conn] = {}  # by fd, every admitted connection
        self._handshaking: dict[int, None] = {}  # fds before connection_made, oldest first
        self._guards: dict[asyncio.BaseTransport, _Guarded] = {}
        self._idle: dict[_Guarded, None] = {}  # no request in progress, longest idle first
        self._evicting: set[int] = set()  # fds closed to make room, not given back yet
        self._refused_logged = 0.0
        self._new = RateLimiter(limits.new_per_source)
        self.evicted = 0  # connections closed to make room, since start
        # `exempt` answers by source: it is asked on every request, and parsing the address
        # and testing it against each network was 3 % of the server's CPU in a fan-out.
        self._exempt: dict[str, bool] = {}

    def admit(self, source: str) -> bool:
        """Count a new connection from `source`, or refuse it (False): its source is at
        `max_per_source` or out of `new_per_source`, or the server at `max_connections` with
        no connection to close: one idle the longest, else the oldest still in its handshake
        (a request in progress, a long-poll, is never closed). A closed connection gives its
        fd back within a loop iteration (FD_RESERVE covers one round of accepts)."""
        held = self._by_source.get(source, 0)
        full = not self.exempt(source) and (
            held >= self.limits.max_per_source or self._new.charge(source) > 0
        )
        if not full and self.open - len(self._evicting) >= self.limits.max_connections:
            full = not self._make_room()
        if full:
            now = time.monotonic()
            if now - self._refused_logged >= OUT_OF_FDS_LOG_EVERY:
                self._refused_logged = now
                log.warning(
                    "refusing connections: %d open (cap %d), %d from %s (cap %d, %g new/s)",
                    self.open,
                    self.limits.max_connections,
                    held,
                    source,
                    self.limits.max_per_source,
                    self.limits.new_per_source.per_second,
                )
            return False
        self.open += 1
        self._by_source[source] = held + 1
        return True

    def _make_room(self) -> bool:
        guard = next(iter(self._idle), None)
        if guard is not None:
            del self._idle[guard]
            self._evicting.add(guard.fd)
            guard.abort()
        else:
            fd = next(iter(self._handshaking), None)
            if fd is None:
                return False
            del self._handshaking[fd]
            self._evicting.add(fd)
            # The handshake reads EOF and fails; asyncio then closes the socket.
            with contextlib.suppress(OSError):
                self._conns[fd].shutdown(socket.SHUT_RDWR)
        self.evicted += 1
        return True

    def exempt(self, source: str | None) -> bool:
        """Whether `source` is in a network the operator exempted from per-source limits."""
        if not self.limits.exempt or source is None:
            return False
        known = self._exempt.get(source)
        if known is None:
            if len(self._exempt) >= EXEMPT_KEPT:
                self._exempt.clear()  # a bound against many sources, not a goal
            known = self._exempt[source] = self._in_exempt(source)
        return known

    def _in_exempt(self, source: str) -> bool:
        try:
            address = ip_address(source)
        except ValueError:
            return False
        if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # an IPv4 client of a server listening on ::
        return any(address in network for network in self.limits.exempt)

    def _accepted(self, conn: _Conn) -> None:
        fd = conn.fileno()
        self._conns[fd] = conn
        self._handshaking[fd] = None

    def _closed(self, conn: _Conn, source: str) -> None:
        fd = conn.fileno()
        self._conns.pop(fd, None)
        self._handshaking.pop(fd, None)
        self._evicting.discard(fd)
        self.open -= 1
        held = self._by_source.pop(source, 1) - 1
        if held > 0:
            self._by_source[source] = held

    def guard(self, transport: asyncio.BaseTransport | None) -> _Guarded | None:
        return None if transport is None else self._guards.get(transport)

    def protocol_factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], _Guarded]:
        return lambda: _Guarded(self, inner())


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol of one connection, with the idle and header deadlines around it."""

    def __init__(self, connections: Connections, inner: asyncio.Protocol) -> None:
        self._connections = connections
        self._inner = inner
        self._transport: asyncio.Transport | None = None
        self.fd = -1
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._waiting = True  # no request in progress
        self._heard = False  # a byte of the next request arrived
        self._buffered = 0  # write buffer size at the last deadline

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self.fd = sock.fileno()
            self._connections._handshaking.pop(self.fd, None)
        self._connections._guards[transport] = self
        self._connections._idle[self] = None
        self._arm(self._connections.limits.idle_timeout)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._waiting and not self._heard:
            self._heard = True
            loop = asyncio.get_running_loop()
            left = self._deadline - loop.time()
            self._arm(min(left, self._connections.limits.header_timeout))
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        self._connections._idle.pop(self, None)
        if self._transport is not None:
            self._connections._guards.pop(self._transport, None)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def request_started(self) -> None:
        """Headers complete: the handler owns the time from here."""
        self._waiting = False
        self._connections._idle.pop(self, None)
        self._cancel()

    def request_finished(self) -> None:
        """The handler returned: the connection idles until the next request."""
        self._waiting, self._heard = True, False
        self._connections._idle[self] = None
        self._arm(self._connections.limits.idle_timeout)

    def abort(self) -> None:
        """Close now: abort, not close, since a TLS close waits for the peer's close_notify."""
        if self._transport is not None:
            self._transport.abort()

    def _arm(self, seconds: float) -> None:
        self._cancel()
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + max(seconds, 0.0)
        self._timer = loop.call_at(self._deadline, self._expire)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        # A reply still draining to a client that reads it gets more time; one that stopped
        # reading (its buffer did not shrink) does not.
        buffered = transport.get_write_buffer_size()
        if buffered and (not self._buffered or buffered < self._buffered):
            self._buffered = buffered
            self._arm(self._connections.limits.idle_timeout)
            return
        self.abort()


class _Conn(socket.socket):
    """An accepted connection that gives its slot back when asyncio closes it."""

    _connections: Connections | None = None
    _source = ""

    def close(self) -> None:
        connections, self._connections = self._connections, None
        if connections is not None and self.fileno() >= 0:
            connections._closed(self, self._source)
        super().close()


class _Listener(socket.socket):
    """The listening socket: admits connections under the caps, closes the rest at once."""

    connections: Connections

    def accept(self) -> tuple[socket.socket, Any]:
        try:
            fd, addr = self._accept()  # type: ignore[attr-defined]
        except OSError as exc:
            if exc.errno in _OUT_OF_FDS:
                _log_out_of_fds(exc)
            raise  # asyncio pauses accepting for a second on these
        source = str(addr[0])
        if not self.connections.admit(source):
            socket.close(fd)
            # Ends this round of accepts; the next round comes with the next loop iteration,
            # so a flood of connections cannot starve the requests being served.
            raise InterruptedError
        conn = _Conn(self.family, self.type, self.proto, fileno=fd)
        conn._connections, conn._source = self.connections, source
        self.connections._accepted(conn)
        return conn, addr


_out_of_fds_logged = 0.0


def _log_out_of_fds(exc: OSError) -> None:
    global _out_of_fds_logged
    now = time.monotonic()
    if now - _out_of_fds_logged >= OUT_OF_FDS_LOG_EVERY:
        _out_of_fds_logged = now
        log.error("cannot accept connections: %s (raise the fd limit: LimitNOFILE)", exc.strerror)


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Route asyncio's out-of-resources accept report (a traceback each time) to the one line
    `_Listener` already logged; everything else goes to the handler in place before."""
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == "socket.accept() out of system resource":
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


# aiohttp's log of the requests it could not parse: a client's fault, one INFO line each.
HTTP_LOG = logging.getLogger("shoal.control.http")
_BAD_REQUEST_SHOWN = 160  # characters of aiohttp's reason (it quotes the client's bytes)


class BadRequestsInOneLine(logging.Filter):
    """aiohttp logs a request it cannot parse (a header line over 8 KiB, a bad header or
    chunk) as an ERROR with its parser's traceback: garbage from anyone on the network would
    read as a server bug. Such a record becomes one INFO line with the source and the reason;
    everything else passes as it is."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and 400 <= exc.code < 500:
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else None
            reason = (exc.message or type(exc).__name__).strip().splitlines()
            record.msg = "bad HTTP request from %s: %d %s"
            record.args = (remote, exc.code, " ".join(reason)[:_BAD_REQUEST_SHOWN])
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


HTTP_LOG.addFilter(BadRequestsInOneLine())


def listening_socket(host: str, port: int, connections: Connections) -> _Listener:
    """A bound, listening `_Listener` on host:port (IPv4 or IPv6 literal, or a name)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    plain = socket.socket(family, kind, proto)
    try:
        plain.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        plain.bind(address)
        plain.listen(1024)
    except OSError:
        plain.close()
        raise
    listener = _Listener(family, kind, proto, fileno=plain.detach())
    listener.connections = connections
    listener.setblocking(False)
    return listener


class GuardedSite(web.BaseSite):
    """An aiohttp site serving TLS on a `_Listener`, every connection wrapped in `_Guarded`."""

    def __init__(
        self,
        runner: web.BaseRunner,
        sock: _Listener,
        *,
        ssl_context: SSLContext,
        connections: Connections,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._sock = sock
        self._connections = connections

    @property
    def name(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"https://{host}:{port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._connections.protocol_factory(server),
            sock=self._sock,
            ssl=self._ssl_context,
            ssl_handshake_timeout=self._connections.limits.handshake_timeout,
            backlog=ACCEPT_BATCH,
        )
