"""The DNS responder: answers the mesh's names from a `RecordTable`, forwards the rest.

One `DnsServer` listens on UDP and TCP (length-prefixed, several queries per connection, closed
after `tcp_idle_timeout` s of silence) on each bind address. Per query it calls `table()` (a
`RecordTable`, or any `Resolver`) and asks it to resolve the name, so
the owner swaps tables by reference (`server_table = new_table`) with no locking: each query
sees one whole table.

Names the table calls NOT_OURS go to the upstreams in order: over UDP with a fresh random id,
then over TCP if the answer came back truncated; the next upstream after `forward_timeout` s or
a refusal; SERVFAIL when none answers. The upstream's answer is relayed byte for byte with the
client's id (and cut to an empty TC answer when it exceeds what the client takes over UDP).

Not an open resolver: a query from a source the table does not admit (`Resolver.admits`: the
host and its own containers) is answered REFUSED and never forwarded, a response no bigger than
the query. Only class IN is answered or forwarded (CHAOS and the others: REFUSED). Over UDP
every answer fits what the client takes (512 bytes, or its EDNS size up to 1,232) or goes out
empty with TC.

Bad packets never stop the responder: each packet is handled inside its own try; FORMERR (or
NOTIMP for other opcodes) when a header can be read, silence otherwise; logged at debug level
and counted in `stats`. Nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import secrets
import struct
from collections.abc import Callable, Collection, Coroutine, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any, cast

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass

from shoal.dns import wire
from shoal.dns.errors import DnsBindFailed
from shoal.dns.records import Outcome, Resolver
from shoal.dns.wire import Query, Reply

log = logging.getLogger(__name__)

Address = tuple[str, int]
DNS_PORT = 53
MAX_FORWARDS = 512  # queries being forwarded at once; beyond that new ones are dropped
MAX_TCP_CONNECTIONS = 256


@dataclass
class DnsStats:
    """Counters since start (read them, never reset them)."""

    queries: int = 0  # packets that parsed as queries
    answered: int = 0  # answered from the table (NOERROR, NODATA, NXDOMAIN)
    forwarded: int = 0  # relayed from an upstream
    servfail: int = 0  # no upstream answered
    malformed: int = 0  # FORMERR / NOTIMP / BADVERS sent
    dropped: int = 0  # not answered at all (no header, a response, overload)
    truncated: int = 0  # answered with TC over UDP
    refused: int = 0  # REFUSED: a source not admitted, or a class other than IN
    errors: int = 0  # bugs: a packet whose handling raised


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self._server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if self.transport is not None:
            self._server._on_datagram(self.transport, data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        log.debug("dns: udp socket error: %s", exc)


class DnsServer:
    """See the module docstring. `start` binds, `close` stops; both are idempotent."""

    def __init__(
        self,
        table: Callable[[], Resolver],
        upstreams: Sequence[Address],
        forward_timeout: float = 2.0,
        *,
        tcp_idle_timeout: float = 10.0,
    ) -> None:
        self._table = table
        self.upstreams: tuple[Address, ...] = tuple(upstreams)
        self.forward_timeout = forward_timeout
        self.tcp_idle_timeout = tcp_idle_timeout
        self.stats = DnsStats()
        self._udp: list[asyncio.DatagramTransport] = []
        self._tcp: list[asyncio.Server] = []
        self._bound: list[Address] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._connections = 0

    @property
    def bound(self) -> tuple[Address, ...]:
        """The (host, port) actually bound, one per bind address; UDP and TCP share the port."""
        return tuple(self._bound)

    async def start(self, binds: Sequence[Address]) -> None:
        """Listen on UDP and TCP on each (host, port); port 0 picks one free for both.

        DnsBindFailed if an address cannot be bound (whatever was bound is closed again)."""
        try:
            for host, port in binds:
                await self._bind(host, port)
        except BaseException:
            await self.close()
            raise
        log.info("dns: answering on %s", ", ".join(f"{h}:{p}" for h, p in self._bound))

    async def close(self) -> None:
        """Stop listening, drop TCP connections and pending forwards."""
        for transport in self._udp:
            transport.close()
        for server in self._tcp:
            server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for server in self._tcp:
            await server.wait_closed()
        self._udp, self._tcp, self._bound = [], [], []

    # -- binding ----------------------------------------------------------------------------

    async def _bind(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        # Port 0: let UDP pick, then take the same port for TCP (retry if TCP finds it taken).
        for _ in range(10 if port == 0 else 1):
            try:
                transport, _p = await loop.create_datagram_endpoint(
                    lambda: _Udp(self), local_addr=(host, port)
                )
            except OSError as exc:
                raise DnsBindFailed(host, port, f"udp: {exc.strerror or exc}") from exc
            chosen = int(transport.get_extra_info("sockname")[1])
            try:
                server = await asyncio.start_server(
                    self._serve_tcp, host, chosen, reuse_address=True
                )
            except OSError as exc:
                transport.close()
                if port == 0 and exc.errno == errno.EADDRINUSE:
                    continue
                raise DnsBindFailed(host, chosen, f"tcp: {exc.strerror or exc}") from exc
            self._udp.append(transport)
            self._tcp.append(server)
            self._bound.append((host, chosen))
            return
        raise DnsBindFailed(host, port, "no port free for both UDP and TCP")

    # -- per packet -------------------------------------------------------------------------

    def _on_datagram(
        self, transport: asyncio.DatagramTransport, data: bytes, peer: Address
    ) -> None:
        try:
            outcome = self._handle(data, peer, udp=True)
            if isinstance(outcome, bytes):
                transport.sendto(outcome, peer)
            elif outcome is not None:
                if len(self._tasks) >= MAX_FORWARDS:
                    self.stats.dropped += 1
                    return
                self._spawn(self._forward_udp(transport, outcome, peer), f"dns-forward {peer}")
        except Exception:
            self.stats.errors += 1
            log.debug("dns: packet from %s:%s failed", *peer, exc_info=True)

    async def _forward_udp(
        self, transport: asyncio.DatagramTransport, query: Query, peer: Address
    ) -> None:
        reply = await self._forward(query, udp=True)
        if not transport.is_closing():
            transport.sendto(reply, peer)

    def _handle(self, data: bytes, peer: Address, udp: bool) -> bytes | Query | None:
        """The bytes to answer now, a Query to forward, or None (drop)."""
        parsed = wire.parse_query(data)
        if parsed is None:
            self.stats.dropped += 1
            log.debug("dns: dropped %d bytes from %s:%s", len(data), *peer)
            return None
        if isinstance(parsed, Reply):
            self.stats.malformed += 1
            log.debug("dns: bad query from %s:%s: %s", *peer, parsed.reason)
            return parsed.wire
        self.stats.queries += 1
        source = _ipv4(peer[0])
        table = self._table()
        if not table.admits(source) or parsed.rdclass != dns.rdataclass.IN:
            # Neither answered nor forwarded: the firewall keeps strangers out already, this
            # holds if it does not (and CHAOS is nobody's business).
            self.stats.refused += 1
            log.debug("dns: refused %s from %s:%s", wire.qname_text(parsed), *peer)
            return self._finish(parsed, wire.status(parsed, dns.rcode.REFUSED), udp)
        resolution = table.resolve(wire.qname_text(parsed), parsed.rdtype, source)
        if resolution.outcome is Outcome.NOT_OURS:
            return parsed
        self.stats.answered += 1
        return self._finish(parsed, wire.render(parsed, resolution), udp)

    def _finish(self, query: Query, response: dns.message.Message, udp: bool) -> bytes:
        out = wire.to_wire(query, response, udp)
        if udp and len(out) >= wire.HEADER.size and out[2] & 0x02:  # TC bit
            self.stats.truncated += 1
        return out

    # -- TCP --------------------------------------------------------------------------------

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)  # so close() ends live connections too
        peername = writer.get_extra_info("peername") or ("?", 0)
        peer: Address = (str(peername[0]), int(peername[1]))
        self._connections += 1
        try:
            if self._connections > MAX_TCP_CONNECTIONS:
                self.stats.dropped += 1
                return
            while True:
                try:
                    head = await asyncio.wait_for(reader.readexactly(2), self.tcp_idle_timeout)
                    (length,) = struct.unpack("!H", head)
                    if length == 0:
                        return
                    data = await asyncio.wait_for(reader.readexactly(length), self.tcp_idle_timeout)
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    return
                reply = await self._answer_tcp(data, peer)
                if reply is not None:
                    writer.write(struct.pack("!H", len(reply)) + reply)
                    await writer.drain()
        except (ConnectionError, OSError):
            pass
        except Exception:
            self.stats.errors += 1
            log.debug("dns: tcp connection from %s:%s failed", *peer, exc_info=True)
        finally:
            self._connections -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            if task is not None:
                self._tasks.discard(task)

    async def _answer_tcp(self, data: bytes, peer: Address) -> bytes | None:
        try:
            outcome = self._handle(data, peer, udp=False)
        except Exception:
            self.stats.errors += 1
            log.debug("dns: tcp query from %s:%s failed", *peer, exc_info=True)
            return None
        if isinstance(outcome, Query):
            return await self._forward(outcome, udp=False)
        return outcome

    # -- forwarding -------------------------------------------------------------------------

    async def _forward(self, query: Query, udp: bool) -> bytes:
        """The upstream's answer (with the client's id) or SERVFAIL."""
        for upstream in self.upstreams:
            try:
                reply = await self._ask(query, upstream)
            except (OSError, TimeoutError, ValueError, dns.exception.DNSException) as exc:
                log.debug("dns: upstream %s:%s failed: %r", *upstream, exc)
                continue
            except Exception:
                self.stats.errors += 1
                log.debug("dns: forwarding to %s:%s failed", *upstream, exc_info=True)
                continue
            self.stats.forwarded += 1
            if udp and len(reply) > query.udp_limit:
                self.stats.truncated += 1
                return wire.truncated(query)
            return wire.with_id(reply, query.message.id)
        self.stats.servfail += 1
        return self._finish(query, wire.status(query, dns.rcode.SERVFAIL), udp)

    async def _ask(self, query: Query, upstream: Address) -> bytes:
        """One upstream's answer over UDP, over TCP if it was truncated. Raises on failure."""
        qid = secrets.randbits(16)
        request = query.message.to_wire()
        request = wire.with_id(request, qid)
        reply = await asyncio.wait_for(_udp_exchange(request, upstream), self.forward_timeout)
        message = _check(query, reply, qid)
        if message.flags & dns.flags.TC:
            reply = await asyncio.wait_for(_tcp_exchange(request, upstream), self.forward_timeout)
            _check(query, reply, qid)
        return reply

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _Exchange(asyncio.DatagramProtocol):
    """One UDP request to an upstream: waits for the first datagram that parses as its answer."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.replies: asyncio.Queue[bytes | Exception] = asyncio.Queue()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.DatagramTransport, transport).sendto(self.request)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.replies.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        self.replies.put_nowait(exc)  # ICMP port unreachable: this upstream is down


async def _udp_exchange(request: bytes, upstream: Address) -> bytes:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: _Exchange(request), remote_addr=upstream
    )
    try:
        while True:
            item = await protocol.replies.get()
            if isinstance(item, Exception):
                raise item
            # Skip stray datagrams (a late answer to someone else, spoofing attempts).
            if len(item) >= 2 and item[:2] == request[:2]:
                return item
    finally:
        transport.close()


async def _tcp_exchange(request: bytes, upstream: Address) -> bytes:
    reader, writer = await asyncio.open_connection(*upstream)
    try:
        writer.write(struct.pack("!H", len(request)) + request)
        await writer.drain()
        (length,) = struct.unpack("!H", await reader.readexactly(2))
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise ConnectionError("upstream closed the connection") from exc
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def _check(query: Query, reply: bytes, qid: int) -> dns.message.Message:
    """The parsed upstream reply if it answers `query`; ValueError or DNSException otherwise."""
    message = dns.message.from_wire(reply, ignore_trailing=True)
    if message.id != qid or not message.flags & dns.flags.QR:
        raise ValueError("not an answer to our query")
    if message.question != query.message.question:
        raise ValueError("answer for another question")
    return message


def _ipv4(host: str) -> IPv4Address | None:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, IPv6Address):
        return address.ipv4_mapped
    return address


def upstreams_from_resolv_conf(
    path: Path = Path("/etc/resolv.conf"),
    exclude: Collection[str | IPv4Address | IPv6Address] = (),
    *,
    skip_loopback: bool = False,
) -> list[Address]:
    """The `nameserver`s of a resolv.conf as (address, 53), in file order; [] if unreadable.

    `exclude` drops addresses (our own: forwarding to ourselves would loop). Loopback stub
    resolvers (systemd-resolved's 127.0.0.53, dnsmasq on 127.0.0.1) are kept: the agent runs
    on the host, where they answer. `skip_loopback` drops them, for callers whose queries
    leave from another network namespace, where the host's loopback is not reachable."""
    try:
        text = path.read_text()
    except OSError:
        return []
    skip = {ipaddress.ip_address(str(a)) for a in exclude}
    found: list[Address] = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(fields) < 2 or fields[0] != "nameserver":
            continue
        host = fields[1]
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            continue
        if address in skip or (skip_loopback and address.is_loopback):
            continue
        if (host, DNS_PORT) not in found:
            found.append((host, DNS_PORT))
    return found
