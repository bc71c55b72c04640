"""The agent's report to the server (`POST /v1/report`, every REPORT_SECONDS): its version and
how each peer is reached, with the last handshake's age and a round-trip time. Only the
server's dashboard reads it; nothing is routed on it.

    path_kind       a peer's path (`shoal.agent.paths` description) as a PathKind
    build_report    pure: this host's status and RTTs -> NodeReport (worst paths first)
    measure_rtts    one ICMP echo to each address through one raw socket, answers awaited
                    together: the RTT is that of a ping through the WireGuard tunnel to the
                    peer's mesh IP (what `shoal ping` measures), one packet per peer and report
    Reporter        the loop: status, RTTs, send; a failure waits for the next round
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import socket
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from ipaddress import IPv4Address

from shoal import __version__
from shoal.agent.clock import Clock
from shoal.agent.ping import echo_reply, echo_request
from shoal.controlclient.errors import (
    ControlProtocolError,
    ControlRejected,
    ControlUnreachable,
    CredentialRejected,
)
from shoal.model.api import (
    MAX_REPORT_PEERS,
    MAX_RTT_MS,
    REPORT_SECONDS,
    NodeReport,
    PathCounts,
    PathKind,
    PeerReport,
)
from shoal.model.status import AgentStatus

log = logging.getLogger("shoal.agent")

# WireGuard renews a session every 2 minutes while traffic flows and drops it after 3
# (REJECT_AFTER_TIME): an older handshake means no working session, so no ping is sent.
HANDSHAKE_FRESH_SECONDS = 180.0
RTT_TIMEOUT = 1.0  # seconds the echoes of one round are awaited
# The server takes a node's report at most every REPORT_SECONDS / 3 (control.dashboard.reports).
SECOND_REPORT_SECONDS = REPORT_SECONDS / 3
MAX_PINGED = 1024  # peers pinged per report: a bound on the packets a report costs
_WORST_FIRST: dict[PathKind, int] = {"none": 0, "trying": 1, "relayed": 2, "direct": 3}


def path_kind(description: str | None, handshake_age: float | None) -> PathKind:
    """What `shoal.agent.paths.PeerPath.description` says, as one of PATH_KINDS. A fresh
    handshake over an endpoint that is not the relay is a direct path whatever the selector
    last concluded (it learns of handshakes a few seconds late: "trying" right after start)."""
    if description is not None and description.startswith("relayed"):
        return "relayed"
    if handshake_age is not None and handshake_age < HANDSHAKE_FRESH_SECONDS:
        return "direct"
    if description is not None and description.startswith("trying"):
        return "trying"
    return "none"


def handshake_ages(status: AgentStatus, now: datetime) -> dict[str, float | None]:
    """Seconds since each peer's last handshake (by peer name); None: never."""
    return {
        p.name: None
        if p.last_handshake is None
        else max((now - p.last_handshake).total_seconds(), 0.0)
        for p in status.peers
    }


def build_report(
    status: AgentStatus,
    ids: Mapping[str, str],
    rtts: Mapping[str, float],
    now: datetime,
    version: str = __version__,
) -> NodeReport:
    """The report of this host: counts of every peer, details of the worst MAX_REPORT_PEERS.
    `ids`: node id by peer name (peers without one are left out); `rtts`: ms by peer name."""
    ages = handshake_ages(status, now)
    peers = []
    for p in status.peers:
        node_id = ids.get(p.name)
        if node_id is None:
            continue
        age = ages[p.name]
        rtt = rtts.get(p.name)
        peers.append(
            PeerReport(
                peer=node_id,
                path=path_kind(p.path, age),
                handshake_age_seconds=age,
                rtt_ms=None if rtt is None else min(round(rtt, 2), MAX_RTT_MS),
            )
        )
    peers.sort(key=lambda r: (_WORST_FIRST[r.path], r.peer))
    measured = [r.rtt_ms for r in peers if r.rtt_ms is not None]
    counts = PathCounts(
        direct=sum(r.path == "direct" for r in peers),
        relayed=sum(r.path == "relayed" for r in peers),
        trying=sum(r.path == "trying" for r in peers),
        none=sum(r.path == "none" for r in peers),
        rtt_median_ms=round(statistics.median(measured), 2) if measured else None,
        rtt_max_ms=max(measured) if measured else None,
    )
    return NodeReport(version=version, counts=counts, peers=tuple(peers[:MAX_REPORT_PEERS]))


async def measure_rtts(
    dsts: Sequence[IPv4Address], timeout: float = RTT_TIMEOUT
) -> dict[IPv4Address, float]:
    """Milliseconds from sending one ICMP echo to each of `dsts` to its reply; addresses that
    did not answer within `timeout` are missing. Needs root (a raw socket): OSError else."""
    if not dsts:
        return {}
    loop = asyncio.get_running_loop()
    ident = secrets.randbits(16)  # not the pid: `shoal ping` in this process uses that
    sent: dict[tuple[str, int], tuple[IPv4Address, float]] = {}
    rtts: dict[IPv4Address, float] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        sock.setblocking(False)
        for seq, dst in enumerate(dsts):
            started = time.monotonic()
            try:
                sock.sendto(echo_request(ident, seq, b"shoal-rtt"), (str(dst), 0))
            except OSError:
                continue  # no route to it now: no RTT this round
            sent[(str(dst), seq)] = (dst, started)
        deadline = time.monotonic() + timeout
        while len(rtts) < len(sent) and (remaining := deadline - time.monotonic()) > 0:
            try:
                async with asyncio.timeout(remaining):
                    packet, addr = await loop.sock_recvfrom(sock, 2048)
            except TimeoutError:
                break
            answered = time.monotonic()
            reply = echo_reply(packet)
            if reply is None or reply[0] != ident:
                continue
            match = sent.get((addr[0], reply[1]))
            if match is not None:
                rtts[match[0]] = (answered - match[1]) * 1000
    return rtts


Measure = Callable[[Sequence[IPv4Address]], Awaitable[Mapping[IPv4Address, float]]]


class Reporter:
    """Sends this host's report every REPORT_SECONDS while the agent runs."""

    def __init__(
        self,
        status: Callable[[], Awaitable[AgentStatus]],
        peer_ids: Callable[[], Mapping[str, str]],
        send: Callable[[NodeReport], Awaitable[None]],
        clock: Clock,
        measure: Measure = measure_rtts,
        interval: float = REPORT_SECONDS,
    ) -> None:
        self._status = status
        self._peer_ids = peer_ids
        self._send = send
        self._clock = clock
        self._measure = measure
        self._interval = interval

    async def once(self) -> NodeReport:
        """Measure, build and send one report (ControlError on failure); returns it."""
        status = await self._status()
        now = self._clock.now()
        ages = handshake_ages(status, now)
        fresh = [
            p
            for p in status.peers
            if (age := ages[p.name]) is not None and age < HANDSHAKE_FRESH_SECONDS
        ][:MAX_PINGED]
        try:
            by_ip = await self._measure([p.mesh_ip for p in fresh])
        except OSError as exc:  # no raw sockets here: report without RTTs
            log.warning("report: cannot measure RTTs (%s)", exc)
            by_ip = {}
        rtts = {p.name: by_ip[p.mesh_ip] for p in fresh if p.mesh_ip in by_ip}
        report = build_report(status, self._peer_ids(), rtts, now)
        await self._send(report)
        return report

    async def run(self) -> None:
        """Report at once (the version), again SECOND_REPORT_SECONDS later (the paths, once
        the first handshakes are in), then every `interval` seconds."""
        delays = itertools.chain((SECOND_REPORT_SECONDS,), itertools.repeat(self._interval))
        for delay in delays:
            try:
                await self.once()
            except CredentialRejected:
                pass  # the netmap poll says so, as NEEDS_JOIN
            except ControlRejected as exc:
                log.warning("report refused by the server: %s", exc)
            except (ControlUnreachable, ControlProtocolError):
                pass  # the netmap poll warns (control-unreachable); the next round retries
            await self._clock.sleep(delay)
