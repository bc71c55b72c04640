"""NAT traversal, the agent's loop: discover this host's endpoints, report them, and keep
each peer on a candidate that completes handshakes.

    every DISCOVER_SECONDS (and at start): probe the server from WireGuard's port
        (`shoal.agent.endpoints`); if the endpoints differ from what the netmap says about
        this node, report them with a (signed, tokenless) registration: the server hands them
        to every peer in the netmap. Without UDP (no probe answer) the node also reports the
        mesh's nearest healthy TCP relay as a "relay" endpoint (`relay_endpoint`: the lowest
        TCP connect time, measured every RELAYS_SECONDS): peers then reach it only through
        that relay (`shoal.agent.tcprelay`), and so does it. A host whose UDP worked is
        judged without it only after BLOCKED_CONFIRMATIONS discoveries in a row, and never
        while the server does not answer TCP either (then the server is down, not the UDP).
    every TICK_SECONDS: read the handshake times from the data plane and let the
        `PathSelector` advance peers whose candidate gives no handshake; when an endpoint to
        configure changed, the reconciler plans the current netmap again.

The hole punch itself is WireGuard's: both sides are configured with each other's public
endpoint and a persistent keepalive, so each sends handshakes that open its own NAT's mapping
towards the other (the netmap reaches both sides within the same long-poll round).
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from urllib.parse import urlsplit

from shoal.agent.clock import Clock
from shoal.agent.endpoints import Discovery, discover
from shoal.agent.paths import PathSelector
from shoal.agent.tcprelay import LOOPBACK, RelayTarget, TcpRelayClient
from shoal.controlclient.client import server_urls
from shoal.controlclient.errors import ControlError
from shoal.dataplane import DataPlaneError
from shoal.dataplane.base import DataPlane
from shoal.model.api import PathKind, RelayGrant, RelayList, RelayServer
from shoal.model.keys import PublicKey
from shoal.model.netmap import Endpoint, NatKind, NetworkMap
from shoal.model.status import RelayUse

log = logging.getLogger(__name__)

TICK_SECONDS = 2.0
# The TCP relays are fetched while this host uses them (no UDP, or peers reached through
# them), at most this often: a relay added or removed on the server is seen this late.
RELAYS_SECONDS = 30.0
RELAYS_RETRY_SECONDS = 5.0
# A NAT that rebinds (new outside port or address) is noticed by the next probe, and peers
# reach the host again once the report is in their netmap: the interval bounds that outage.
# Two datagrams per host per interval to the server.
DISCOVER_SECONDS = 3.0
# Discoveries in a row that must find UDP blocked, where it worked before, before this host
# moves every peer onto a TCP relay. One unanswered probe is not enough: a server coming back
# answers TCP before its probe responder listens (a replica's restart moved every agent onto
# a relay for one discovery, HA e2e), and a loaded one answers late.
BLOCKED_CONFIRMATIONS = 2


# One relay is "clearly nearer" than another at this fraction of its time and this many ms
# less: below that, connect times on a loaded host are jitter, and the server's order of
# preference (or the relay in use) stands. A switch re-reports the node's endpoints and moves
# every peer's path onto the new relay (a few seconds of handshakes).
RELAY_SWITCH_RATIO = 0.5
RELAY_SWITCH_MS = 10.0


def relay_endpoint(
    relays: Sequence[RelayServer],
    server: IPv4Address,
    failing: Callable[[RelayTarget], bool],
    rtts: Mapping[RelayTarget, float | None] | None = None,
    current: Endpoint | None = None,
) -> Endpoint | None:
    """The "relay" endpoint a node without UDP advertises (its home relay): the nearest
    healthy one of the mesh's TCP relays.

    `rtts`: each relay's last measured TCP connect time in ms (None: it did not accept; not
    in it: not measured yet). Healthy is neither `failing` (the stream to it dropped) nor
    unreachable when measured. The baseline is `current` (the home relay advertised now) while
    it is healthy, else the first healthy one in the server's order of preference; the
    nearest healthy relay replaces it only when clearly nearer (RELAY_SWITCH_RATIO and
    RELAY_SWITCH_MS; an unmeasured baseline is replaced by any measured relay). When none is
    healthy, the first (a relay coming back is used again)."""
    rtts = rtts or {}
    targets = [
        relay_target(relays, server, Endpoint(host=r.host or server, port=r.port, kind="relay"))
        for r in relays
    ]
    if not targets:
        return None
    healthy = [t for t in targets if not failing(t) and (t not in rtts or rtts[t] is not None)]
    if not healthy:
        return Endpoint(host=targets[0].host, port=targets[0].port, kind="relay")
    base = next((t for t in healthy if current is not None and _at(t, current)), healthy[0])
    nearest = min(healthy, key=lambda t: _ms(rtts.get(t)))
    then, now = _ms(rtts.get(base)), _ms(rtts.get(nearest))
    best = nearest if now <= then * RELAY_SWITCH_RATIO and then - now >= RELAY_SWITCH_MS else base
    return Endpoint(host=best.host, port=best.port, kind="relay")


def _ms(rtt: float | None) -> float:
    return math.inf if rtt is None else rtt


def _at(target: RelayTarget, ep: Endpoint) -> bool:
    return target.host == ep.host and target.port == ep.port


async def connect_ms(target: RelayTarget, timeout: float = 2.0) -> float | None:
    """Milliseconds a TCP connection to `target` took (one round trip, what `shoal netcheck`
    shows too); None if it was not accepted within `timeout` seconds."""
    start = time.monotonic()
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(str(target.host), target.port), timeout
        )
    except (OSError, TimeoutError):
        return None
    took = (time.monotonic() - start) * 1000
    writer.close()
    return took


def relay_target(
    relays: Sequence[RelayServer], server: IPv4Address | None, ep: Endpoint
) -> RelayTarget:
    """The relay at `ep` (a "relay" endpoint), with the key its hello is signed for and the
    certificate it must show."""
    for relay in relays:
        if relay.port == ep.port and (relay.host or server) == ep.host:
            return RelayTarget(ep.host, ep.port, relay.public_key, relay.cert_sha256)
    return RelayTarget(host=ep.host, port=ep.port)


def probed_url(url: str) -> str:
    """The server endpoint discovery probes: the first of a `--server A,B` list."""
    urls = server_urls(url)
    return urls[0] if urls else url


def server_address(url: str) -> IPv4Address | None:
    """The probed server's IPv4 address from its URL (resolving a name); None if it has none."""
    host = urlsplit(probed_url(url)).hostname or ""
    try:
        return IPv4Address(host)
    except ValueError:
        pass
    try:
        return IPv4Address(socket.gethostbyname(host))
    except (OSError, ValueError):
        return None


async def tcp_reachable(url: str, server: IPv4Address, timeout: float = 2.0) -> bool:
    """Whether the server at `url` (the first of a `--server A,B` list, the one probed over
    UDP) accepts a TCP connection now."""
    try:
        port = urlsplit(probed_url(url)).port or 443
    except ValueError:
        return True  # no port to try: the UDP verdict stands
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(str(server), port), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


@dataclass(frozen=True, slots=True)
class Route:
    """The path to one peer as `shoal status` shows it (`Traversal.route`)."""

    endpoint: str | None  # where its packets go: the peer's address, or the relay's
    via: PathKind
    relay: RelayUse | None
    why: str | None  # why relayed (or why no path); None when direct


def _loopback(endpoint: str) -> bool:
    return endpoint.rpartition(":")[0] == LOOPBACK


class Traversal:
    def __init__(
        self,
        *,
        server_url: str,
        listen_port: int,
        local: Callable[[], Endpoint | None],
        node_key: Callable[[], PublicKey],  # the current one: keys rotate
        mac_key: Callable[[], Awaitable[bytes]],
        report: Callable[[tuple[Endpoint, ...]], Awaitable[None]],
        relay: Callable[[str], Awaitable[RelayGrant]],
        relays: Callable[[], Awaitable[RelayList]],
        netmap: Callable[[], NetworkMap],
        replan: Callable[[], None],
        tunnel: DataPlane,
        clock: Clock,
        paths: PathSelector,
        tcp_relay: TcpRelayClient,
        measure: Callable[[RelayTarget], Awaitable[float | None]] = connect_ms,
    ) -> None:
        """`measure`: a relay's round trip in ms (None: unreachable), for picking the nearest."""
        self._server_url = server_url
        self._listen_port = listen_port
        self._local = local
        self._node_key = node_key
        self._mac_key = mac_key
        self._report = report
        self._relay = relay
        self._fetch_relays = relays
        self.relays: tuple[RelayServer, ...] = ()  # the TCP relays, as last fetched
        self._relays_at: float | None = None  # monotonic
        self._measure = measure
        self.rtts: dict[RelayTarget, float | None] = {}  # ms, at the last measurement
        self._measured_at: float | None = None  # monotonic
        self._netmap = netmap
        self._replan = replan
        self._tunnel = tunnel
        self._clock = clock
        self.paths = paths
        self.tcp_relay = tcp_relay
        self.last: Discovery | None = None
        self._blocked_in_a_row = 0  # discoveries finding UDP blocked where it worked before
        self.server: IPv4Address | None = None  # resolved at each discovery

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.tcp_relay.run(), name="tcp-relay")
            tasks.create_task(self._loop(), name="nat-discovery")

    async def _loop(self) -> None:
        next_discovery = 0.0
        while True:
            now = self._clock.monotonic()
            if now >= next_discovery:
                next_discovery = now + DISCOVER_SECONDS
                await self.discover_and_report()
            await self.tick()
            await self._clock.sleep(TICK_SECONDS)

    async def discover_and_report(self) -> None:
        server = await asyncio.to_thread(server_address, self._server_url)
        if server is None:
            return
        self.server = server
        try:
            key = await self._mac_key()
        except ControlError as exc:
            log.warning("endpoint discovery: no key from the server yet (%s)", exc)
            return
        local = await asyncio.to_thread(self._local)
        found = await discover(server, self._listen_port, local, key, self._node_key())
        if found.nat == "udp-blocked" and not await tcp_reachable(self._server_url, server):
            # No answer over UDP, and none over TCP either: the server is down (or this agent
            # failed over from it), not this host's UDP. Judged UDP-blocked, the host moved
            # every peer onto a TCP relay of the dead server and the mesh stalled (HA e2e: 82
            # of 300 echoes). What was found before stands until the server answers again.
            log.info("endpoint discovery: the server does not answer; keeping the last result")
            return
        if self._unconfirmed_block(found):
            log.info(
                "endpoint discovery: no answer over UDP; keeping the last result until the next"
            )
            return
        if found != self.last:
            log.info(
                "endpoint discovery: NAT %s, endpoints %s",
                found.nat,
                ", ".join(f"{e} ({e.kind or 'advertised'})" for e in found.endpoints()) or "-",
            )
        self.last = found
        endpoints = found.endpoints()
        if found.nat == "udp-blocked":
            await self.refresh_relays()
            await self.measure_relays()
            relay = relay_endpoint(
                self.relays, server, self.tcp_relay.failing, self.rtts, self._advertised_relay()
            )
            if relay is not None:
                endpoints = (*endpoints, relay)
        if self.paths.set_own(endpoints):
            self._replan()
        if not endpoints or set(endpoints) == set(self._netmap().self_node.endpoints):
            return
        try:
            await self._report(endpoints)
        except ControlError as exc:
            log.warning("could not report endpoints: %s", exc)

    def _unconfirmed_block(self, found: Discovery) -> bool:
        """Whether `found` says UDP is blocked where the last discovery had it working, and
        fewer than BLOCKED_CONFIRMATIONS discoveries in a row said so (a first discovery, or
        one after a block, is taken as it is)."""
        worked = self.last is not None and self.last.nat != "udp-blocked"
        if found.nat != "udp-blocked" or not worked:
            self._blocked_in_a_row = 0
            return False
        self._blocked_in_a_row += 1
        return self._blocked_in_a_row < BLOCKED_CONFIRMATIONS

    def _advertised_relay(self) -> Endpoint | None:
        """The relay this host advertises now (its last choice, or the netmap's)."""
        ours = self.paths.own() or self._netmap().self_node.endpoints
        return next((e for e in ours if e.kind == "relay"), None)

    async def measure_relays(self) -> None:
        """Time a connection to every TCP relay, at most every RELAYS_SECONDS (at once when
        the list changed): what `relay_endpoint` picks the nearest by."""
        now = self._clock.monotonic()
        server = self.server
        if server is None:
            return
        targets = [
            relay_target(self.relays, server, Endpoint(host=r.host or server, port=r.port))
            for r in self.relays
        ]
        fresh = self._measured_at is not None and now - self._measured_at < RELAYS_SECONDS
        if fresh and set(targets) == set(self.rtts):
            return
        rtts = await asyncio.gather(*(self._measure(t) for t in targets))
        self._measured_at = now
        measured = dict(zip(targets, rtts, strict=True))
        if measured.keys() != self.rtts.keys() or any(
            (a is None) != (measured[t] is None) for t, a in self.rtts.items()
        ):
            log.info(
                "tcp relays, connect time: %s",
                ", ".join(
                    f"{t} {'-' if ms is None else f'{ms:.1f} ms'}" for t, ms in measured.items()
                )
                or "none",
            )
        self.rtts = measured

    @property
    def nat(self) -> NatKind | None:
        """This host's NAT as the last discovery judged it; None before the first answer."""
        return None if self.last is None else self.last.nat

    def route(self, key: PublicKey, wg_endpoint: str | None, fresh: bool) -> Route:
        """How `shoal status` shows the path to peer `key`: `wg_endpoint` is where WireGuard
        sends its packets now ("ip:port"), `fresh` whether its last handshake is recent."""
        path = self.paths.path(key)
        loop = self.tcp_relay.relay_of(wg_endpoint) if wg_endpoint else None
        # Relayed, or a handshake already came over the relay being tried (the selector
        # learns of handshakes a tick late).
        if path.relay is not None and (path.kind == "relayed" or fresh):
            return Route(
                str(path.relay),
                "relayed",
                self._relay_use(path.relay, self.tcp_relay.local_of(key)),
                path.why or "no direct handshake",
            )
        if loop is not None:
            # WireGuard follows the peer's packets onto the relay's loopback socket (the peer
            # reached this host through its relay first) before the selector says relayed.
            relay = Endpoint(host=loop.host, port=loop.port, kind="relay")
            why = path.why or "the peer's packets arrive through the relay"
            return Route(str(relay), "relayed", self._relay_use(relay, wg_endpoint), why)
        shown = wg_endpoint
        if shown is None or _loopback(shown):
            shown = None if path.endpoint is None else str(path.endpoint)
        via: PathKind = path.kind
        if fresh and via in ("trying", "none"):
            via = "direct"  # the selector learns of handshakes a tick late
        return Route(shown, via, None, path.why if via != "direct" else None)

    def _relay_use(self, relay: Endpoint, local: str | None) -> RelayUse:
        if relay.kind != "relay":
            return RelayUse(transport="udp", address=str(relay), on_server=True)
        listed = next(
            (
                r
                for r in self.relays
                if r.port == relay.port and (r.host or self.server) == relay.host
            ),
            None,
        )
        on_server = listed.host is None if listed is not None else relay.host == self.server
        return RelayUse(
            transport="tcp",
            address=str(relay),
            on_server=on_server,
            local=local,
        )

    def tcp_local(self, peer: PublicKey, relay: Endpoint) -> Endpoint:
        """The loopback endpoint for `peer` through the TCP relay at `relay` (PathSelector's
        `tcp_local`)."""
        return self.tcp_relay.local(peer, relay_target(self.relays, self.server, relay))

    async def refresh_relays(self) -> None:
        """Fetch the TCP relays (at most every RELAYS_SECONDS, or RELAYS_RETRY_SECONDS while
        one in use fails: the server may announce others now); plan again when they changed
        (a relay's key or certificate is part of what the loopback endpoints lead to)."""
        now = self._clock.monotonic()
        failing = any(self.tcp_relay.failing(t) for t in self.tcp_relay.targets())
        every = RELAYS_RETRY_SECONDS if failing else RELAYS_SECONDS
        if self._relays_at is not None and now - self._relays_at < every:
            return
        try:
            relays = (await self._fetch_relays()).relays
        except ControlError as exc:
            log.warning("cannot list the TCP relays: %s", exc)
            return
        self._relays_at = now
        if relays != self.relays:
            log.info(
                "tcp relays: %s",
                ", ".join(str(r.host or "server") + f":{r.port}" for r in relays) or "none",
            )
            self.relays = relays
            self._replan()

    async def tick(self) -> None:
        netmap = self._netmap()
        self.tcp_relay.keep(
            {p.public_key for p in netmap.peers}
            | {p.next_key for p in netmap.peers if p.next_key is not None}
        )
        try:
            stats = await self._tunnel.stats()
        except DataPlaneError:
            return
        seen = {
            s.public_key: (s.last_handshake.timestamp() if s.last_handshake else None)
            for s in stats
        }
        # By the peer's current key; during its key rotation WireGuard may know it by the next.
        handshakes = {
            p.public_key: max(
                (t for t in (seen.get(p.public_key), seen.get(p.next_key or p.public_key)) if t),
                default=None,
            )
            for p in netmap.peers
        }
        if self.paths.tcp_relayed():
            await self.refresh_relays()
        self.tcp_relay.follow_key()
        now = self._clock.now().timestamp()
        changed = self.paths.update(netmap.self_node, netmap.peers, handshakes, now)
        for peer in netmap.peers:
            if self.paths.needs_relay(peer.public_key, now):
                changed |= await self._ask_relay(peer.id, peer.public_key, now)
        if changed:
            self.paths.update(netmap.self_node, netmap.peers, None, now)
            self._replan()

    async def _ask_relay(self, peer_id: str, key: PublicKey, now: float) -> bool:
        """Ask the server for a relay port to `peer_id`; False if there is none to be had."""
        server = await asyncio.to_thread(server_address, self._server_url)
        if server is None:
            return False
        try:
            grant = await self._relay(peer_id)
        except ControlError as exc:
            log.warning("no relay to %s: %s", peer_id, exc)
            return False
        log.info("relay to %s granted: %s:%d", peer_id, server, grant.port)
        self.paths.set_relay(key, Endpoint(host=server, port=grant.port), now)
        return True
