"""`shoal doctor` in the agent: look at the host and every path, and name what is broken.

    run_doctor(view, probe, target)   gathers what it needs through a `HostProbe` (the real
                                      host in `doctor_probe`, a fake in tests) and returns a
                                      `DoctorReport`, one `Check` per line.
    check_*                           pure: facts in, verdict out, with the cause and the fix.

The agent runs it because it has what the answer depends on: the netmap, the plan it applies
(`HostConfig`), the reconciler's per-subsystem state and the live WireGuard counters. Every
check compares the live host with the plan, so a check cannot disagree with what the agent
would apply.

A path to a peer is judged by what crosses it now, not by counters alone: an ICMP echo to the
peer's mesh IP through the tunnel (with the bytes received from the peer before and after),
then DF echoes of the configured MTU: a packet that fits the MTU but never arrives, while small
ones do, is a black hole (a hop on the underlay drops big packets without an ICMP error).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from ipaddress import IPv4Address, IPv4Network
from typing import Protocol, TypeVar

from shoal.agent.health import NEEDS_JOIN
from shoal.agent.paths import PeerPath
from shoal.agent.ping import TooBigForRoute
from shoal.agent.reconciler import SubsystemState
from shoal.controlclient.probe import ServerProbe
from shoal.dataplane import PeerStats
from shoal.dns.probe import DnsAnswer
from shoal.firewall.drift import Drift
from shoal.hostnet.inspect import LinkState
from shoal.model.doctor import Check, DoctorReport, UnknownTarget, Verdict
from shoal.model.errors import ShoalError
from shoal.model.netmap import Container, Endpoint, NetworkMap, Node
from shoal.model.policy import Proto
from shoal.model.status import AgentState, HealthWarning
from shoal.plan.hostconfig import DockerNetworkConfig, FirewallConfig, HostConfig
from shoal.plan.policy import compile_for, explain, publishable

HOST = "this host"
# WireGuard re-handshakes every 120 s while packets flow and keepalives (25 s) keep them
# flowing; a handshake older than 120 s + 5 attempts' timeouts means the peer stopped answering.
HANDSHAKE_STALE = timedelta(seconds=180)
CERT_WARN = timedelta(days=30)
CLOCK_WARN_SECONDS = 5.0  # the client corrects a larger offset per call, after one 401
CLOCK_FAIL_SECONDS = 120.0  # signatures and certificates stop making sense
WIREGUARD_OVERHEAD = 60  # outer IPv4 (20) + UDP (8) + WireGuard (32): endpoints are IPv4
MTU_FLOOR = 576  # smallest packet every IPv4 path must carry
MTU_STEP = 8  # the bisection stops this close to the largest size that passes
ECHO_TIMEOUT = 1.0
MTU_ECHO_TIMEOUT = 0.5
# Names the responder answers for itself whatever the netmap: <node>.shoal.
SELF_NAME = "{name}.shoal"
UPSTREAM_PROBE_NAME = "."


class HostProbe(Protocol):
    """What doctor reads from the host. Methods raise ShoalError when they cannot read."""

    async def link(self, name: str) -> LinkState | None: ...

    def wireguard_module(self) -> bool:
        """Whether the kernel's WireGuard module is loaded."""
        ...

    async def routes(self, dev: str) -> Mapping[IPv4Network, int | None]: ...

    async def ip_forward(self) -> bool: ...

    async def docker_network(self, cfg: DockerNetworkConfig) -> str | None: ...

    async def firewall(self, cfg: FirewallConfig) -> Drift: ...

    async def dns(self, server: str, port: int, name: str) -> DnsAnswer: ...

    async def container_dns(self, container_id: str, name: str) -> DnsAnswer | None:
        """`name` asked of Docker's resolver from inside the container (the way its own
        lookups go); None when the container is not running."""
        ...

    def dns_upstreams(self, exclude: IPv4Address) -> Sequence[tuple[str, int]]: ...

    async def server(self) -> ServerProbe: ...

    async def peer_stats(self) -> Sequence[PeerStats]: ...

    async def echo(
        self, dst: IPv4Address, size: int | None, timeout: float, dont_fragment: bool
    ) -> float | None:
        """RTT in ms, None when no reply; TooBigForRoute when this host refuses the size."""
        ...

    async def tcp(self, dst: IPv4Address, port: int, timeout: float) -> str | None:
        """None when a connection opened, else why not."""
        ...


@dataclass(frozen=True, slots=True)
class AgentView:
    """The agent's own state, as doctor needs it."""

    name: str
    state: AgentState
    warnings: tuple[HealthWarning, ...]
    subsystems: tuple[SubsystemState, ...]
    netmap: NetworkMap
    netmap_received_at: datetime
    plan: HostConfig
    dataplane: str  # "kernel" | "wireguard-go"
    dns_port: int
    server_url: str
    now: datetime
    # Each peer's path as the agent's path selection sees it, by public key (str): the UDP
    # relay a peer is on shows only here (its WireGuard endpoint is just a port on the server).
    paths: Mapping[str, PeerPath] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reach:
    """One peer's path now: an echo through the tunnel and the bytes it sent us meanwhile."""

    rtt_ms: float | None
    rx_delta: int  # bytes received from the peer while probing


@dataclass(frozen=True, slots=True)
class PathMtu:
    largest: int | None  # largest packet (bytes, IP header included) that passed with DF
    refused_here: bool = False  # this host's own route refused the configured size


@dataclass(frozen=True, slots=True)
class Target:
    """What `shoal doctor TARGET` resolved to."""

    label: str
    nodes: tuple[Node, ...]  # the hosts it lives on (this one included when local)
    ip: IPv4Address | None = None
    port: int | None = None


def _ago(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


def _at(when: datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


# -- the agent and the server ---------------------------------------------------------------


def check_agent(view: AgentView) -> Check:
    failing = [s for s in view.subsystems if s.last_error is not None]
    applied = [s.last_applied_at for s in view.subsystems if s.last_applied_at is not None]
    if view.state is AgentState.RUNNING and not failing:
        last = f", last applied {_ago(view.now - max(applied))}" if applied else ""
        return Check(
            code="agent",
            subject=HOST,
            verdict=Verdict.OK,
            summary=f"RUNNING, converged to netmap r{view.netmap.revision} "
            f"({len(view.subsystems)} subsystems{last})",
        )
    since = min((w.since for w in view.warnings), default=view.now)
    causes = [f"{w.code}: {w.message}" for w in view.warnings]
    causes += [
        f"{s.name}: {s.last_error}"
        for s in failing
        if not any(w.code.startswith(s.name) for w in view.warnings)
    ]
    needs_join = next((w for w in view.warnings if w.code == NEEDS_JOIN), None)
    fix = (
        needs_join.message
        if needs_join is not None
        else "the agent retries by itself; the failing checks below name the broken part"
    )
    when = f"since {_at(since)} ({_ago(view.now - since)})"
    if view.state is AgentState.DEGRADED and not failing:
        # Applied as planned, but living with a problem (the server away, a CA expiring):
        # the mesh works; the check that owns the problem says FAIL if it is one.
        return Check(
            code="agent",
            subject=HOST,
            verdict=Verdict.WARN,
            summary=f"DEGRADED {when}: converged to netmap r{view.netmap.revision}, "
            f"{len(view.warnings)} warning(s)",
            cause="; ".join(causes),
            fix=fix,
        )
    return Check(
        code="agent",
        subject=HOST,
        verdict=Verdict.FAIL,
        summary=f"{view.state}: not converged {when}",
        cause="; ".join(causes) or f"state {view.state}",
        fix=fix,
    )


def check_server(url: str, probe: ServerProbe) -> Check:
    if probe.error is not None:
        return Check(
            code="server",
            subject=HOST,
            verdict=Verdict.FAIL,
            summary=f"{url} unreachable",
            cause=probe.error,
            fix="check that `shoal server` runs there and that TCP to it is allowed from this "
            "host; the mesh keeps working on the last netmap meanwhile",
        )
    rtt = f" in {probe.rtt_ms:.1f} ms" if probe.rtt_ms is not None else ""
    return Check(code="server", subject=HOST, verdict=Verdict.OK, summary=f"{url} answered{rtt}")


def check_certificate(probe: ServerProbe, now: datetime) -> Check:
    if probe.error is not None and probe.ca_not_after is None:
        return Check(
            code="certificate",
            subject=HOST,
            verdict=Verdict.SKIP,
            summary="not checked: the server is unreachable",
        )
    expiring = [
        (what, when)
        for what, when in (("server certificate", probe.cert_not_after), ("CA", probe.ca_not_after))
        if when is not None
    ]
    expired = [(w, t) for w, t in expiring if t <= now]
    soon = [(w, t) for w, t in expiring if now < t <= now + CERT_WARN]
    text = ", ".join(f"{w} valid until {t:%Y-%m-%d}" for w, t in expiring) or "no expiry seen"
    if expired:
        what, when = expired[0]
        return Check(
            code="certificate",
            subject=HOST,
            verdict=Verdict.FAIL,
            summary=text,
            cause=f"the {what} expired on {_at(when)}",
            fix="renew it on the server (restart `shoal server` re-issues its certificate); "
            "check this host's clock too",
        )
    if soon:
        what, when = soon[0]
        return Check(
            code="certificate",
            subject=HOST,
            verdict=Verdict.WARN,
            summary=text,
            cause=f"the {what} expires in {(when - now).days} days ({_at(when)})",
            fix="renew it on the server before then",
        )
    return Check(code="certificate", subject=HOST, verdict=Verdict.OK, summary=text)


def check_clock(probe: ServerProbe) -> Check:
    if probe.server_time is None or probe.local_time is None:
        return Check(
            code="clock",
            subject=HOST,
            verdict=Verdict.SKIP,
            summary="not checked: no Date from the server",
        )
    skew = (probe.local_time - probe.server_time).total_seconds()
    # The Date header has 1 s resolution: less than that is no skew at all.
    text = f"{abs(skew):.0f}s {'ahead of' if skew > 0 else 'behind'} the server"
    if abs(skew) <= CLOCK_WARN_SECONDS:
        return Check(code="clock", subject=HOST, verdict=Verdict.OK, summary=f"within 5s ({text})")
    cause = f"this host's clock is {text}"
    fix = "run NTP (chrony, systemd-timesyncd) on this host and on the server"
    if abs(skew) <= CLOCK_FAIL_SECONDS:
        return Check(
            code="clock",
            subject=HOST,
            verdict=Verdict.WARN,
            summary=text,
            cause=cause + ": each signed call is corrected only after a refusal",
            fix=fix,
        )
    return Check(
        code="clock",
        subject=HOST,
        verdict=Verdict.FAIL,
        summary=text,
        cause=cause + ": signed calls and certificate validity depend on it",
        fix=fix,
    )


# -- this host ------------------------------------------------------------------------------


def why_dataplane(dataplane: str, module_loaded: bool) -> str:
    """Which WireGuard runs and why (the agent picks the kernel's when it can; a running
    interface is never switched: that would drop every session)."""
    if dataplane == "kernel":
        return "kernel WireGuard (the module works here)"
    if module_loaded:
        return (
            "userspace (wireguard-go): the interface already ran on wireguard-go when the agent "
            "started; `shoal down` and `shoal up` move it to the kernel's"
        )
    return "userspace (wireguard-go): this kernel has no WireGuard module"


def check_wireguard(view: AgentView, link: LinkState | None, module_loaded: bool) -> Check:
    iface = view.plan.tunnel.interface
    why = why_dataplane(view.dataplane, module_loaded)
    if link is None:
        return Check(
            code="wireguard",
            subject=HOST,
            verdict=Verdict.FAIL,
            summary=f"{iface.name} missing",
            cause=f"no interface {iface.name} ({why}); without it no peer is reachable",
            fix="the agent recreates it on its next resync (30 s); if not, see `shoal status` "
            "and the agent's log (wireguard-go crashed?)",
        )
    problems = []
    if not link.up:
        problems.append("is down")
    if link.mtu != iface.mtu:
        problems.append(f"has MTU {link.mtu}, the mesh uses {iface.mtu}")
    summary = f"{iface.name} {'up' if link.up else 'down'}, MTU {link.mtu}, {why}"
    if problems:
        return Check(
            code="wireguard",
            subject=HOST,
            verdict=Verdict.FAIL,
            summary=summary,
            cause=f"{iface.name} " + " and ".join(problems),
            fix=f"the agent restores it on its next resync; `ip link set {iface.name} up mtu "
            f"{iface.mtu}` does it now",
        )
    return Check(code="wireguard", subject=HOST, verdict=Verdict.OK, summary=summary)


def check_forwarding(on: bool) -> Check:
    if on:
        return Check(
            code="forwarding", subject=HOST, verdict=Verdict.OK, summary="IPv4 forwarding on"
        )
    return Check(
        code="forwarding",
        subject=HOST,
        verdict=Verdict.FAIL,
        summary="IPv4 forwarding off",
        cause="net.ipv4.ip_forward is 0: containers are unreachable from the mesh and back",
        fix="`sysctl -w net.ipv4.ip_forward=1` (the agent sets it on its next resync)",
    )


def check_routes(view: AgentView, live: Mapping[IPv4Network, int | None]) -> Check:
    routing = view.plan.routing
    owner = {peer.subnet: peer.name for peer in view.netmap.peers}
    missing = [r for r in routing.routes if r.dst not in live]
    wrong = [r for r in routing.routes if r.dst in live and live[r.dst] != r.mtu]
    count = f"{len(routing.routes)} container subnet route(s) on {routing.device}"
    if not missing and not wrong:
        return Check(code="routes", subject=HOST, verdict=Verdict.OK, summary=f"{count} present")
    causes = [f"{r.dst} ({owner.get(r.dst, '?')}) missing" for r in missing]
    causes += [f"{r.dst} has MTU {live[r.dst]}, want {r.mtu}" for r in wrong]
    first = (missing or wrong)[0]
    return Check(
        code="routes",
        subject=HOST,
        verdict=Verdict.FAIL,
        summary=f"{count}: {len(missing)} missing, {len(wrong)} wrong",
        cause="; ".join(causes) + ": containers there are unreachable from here",
        fix="the agent restores routes on its next resync (30 s); now: `ip route replace "
        f"{first.dst} dev {first.dev} src {first.src} mtu {first.mtu}`",
    )


def check_docker_network(cfg: DockerNetworkConfig, drift: str | None) -> Check:
    want = f"subnet {cfg.subnet}, MTU {cfg.mtu}, bridge {cfg.bridge}"
    if drift is None:
        return Check(
            code="docker-network",
            subject=HOST,
            verdict=Verdict.OK,
            summary=f"network {cfg.name}: {want}",
        )
    return Check(
        code="docker-network",
        subject=HOST,
        verdict=Verdict.FAIL,
        summary=f"network {cfg.name} {drift}",
        cause=f"shoal needs {want}",
        fix=f"the agent recreates it when no container is attached; else `docker network "
        f"disconnect` them from {cfg.name}, or see the docker-network-failed warning",
    )


def _lines(lines: Sequence[str]) -> str:
    return f"{len(lines)} line{'s' if len(lines) != 1 else ''}"


def check_firewall(drift: Drift) -> tuple[Check, Check]:
    table = (
        Check(
            code="firewall-table",
            subject=HOST,
            verdict=Verdict.OK,
            summary="nftables table inet shoal present and as planned",
        )
        if not drift.table
        else Check(
            code="firewall-table",
            subject=HOST,
            verdict=Verdict.FAIL,
            summary=f"nftables table inet shoal differs from the plan ({_lines(drift.table)})",
            cause="; ".join(drift.table[:4])
            + (" ..." if len(drift.table) > 4 else "")
            + ": anti-spoofing and the mesh's closed host ports are off",
            fix="the agent reloads it on its next resync (30 s); someone or something (a "
            "firewall manager running `nft flush ruleset`?) changed it",
        )
    )
    docker = (
        Check(
            code="firewall-docker",
            subject=HOST,
            verdict=Verdict.OK,
            summary="DOCKER-USER jump, NAT exemption and DNS redirect present",
        )
        if not drift.docker
        else Check(
            code="firewall-docker",
            subject=HOST,
            verdict=Verdict.FAIL,
            summary=f"iptables chains differ from the plan ({_lines(drift.docker)})",
            cause="the next apply would change: "
            + "; ".join(drift.docker[:4])
            + (" ..." if len(drift.docker) > 4 else ""),
            fix="the agent restores its chains on its next resync (30 s); a restarted dockerd "
            "or `iptables -F` removes them",
        )
    )
    return table, docker


def check_dns_responder(address: IPv4Address, port: int, name: str, answer: DnsAnswer) -> Check:
    where = f"{address}:{port}"
    if answer.rcode == "NOERROR":
        return Check(
            code="dns-responder",
            subject=HOST,
            verdict=Verdict.OK,
            summary=f"{where} answers ({name} NOERROR)",
        )
    cause = (
        f"no answer from {where}: {answer.error}"
        if answer.rcode is None
        else f"{where} answered {answer.rcode} for {name}"
    )
    return Check(
        code="dns-responder",
        subject=HOST,
        verdict=Verdict.FAIL,
        summary=f"{where} {'silent' if answer.rcode is None else answer.rcode}",
        cause=cause + ": containers cannot resolve mesh names",
        fix="see the dns-failed warning in `shoal status`; a firewall rule on this host "
        "dropping port 53 to the mesh IP, or another process bound to it",
    )


def check_dns_upstream(answers: Sequence[tuple[str, DnsAnswer]]) -> Check:
    if not answers:
        return Check(
            code="dns-upstream",
            subject=HOST,
            verdict=Verdict.WARN,
            summary="no upstream resolver",
            cause="/etc/resolv.conf names no resolver but the agent's own: names outside the "
            "mesh do not resolve",
            fix="add a `nameserver` to /etc/resolv.conf and restart the agent",
        )
    working = [up for up, a in answers if a.rcode is not None]
    listed = ", ".join(up for up, _ in answers)
    if working:
        return Check(
            code="dns-upstream",
            subject=HOST,
            verdict=Verdict.OK,
            summary=f"upstream {', '.join(working)} answers",
        )
    return Check(
        code="dns-upstream",
        subject=HOST,
        verdict=Verdict.FAIL,
        summary=f"no upstream answers ({listed})",
        cause="; ".join(f"{up}: {a.error}" for up, a in answers)
        + ": names outside the mesh fail (SERVFAIL)",
        fix="check the resolvers in /etc/resolv.conf (reachable from this host?)",
    )


@dataclass(frozen=True, slots=True)
class ContainerQuestion:
    """Which container of this host asks Docker's resolver for which mesh name, and the
    address the answer must hold."""

    asker: Container
    name: str
    expected: IPv4Address
    subnet: IPv4Network  # this host's container subnet: where the forwarded queries come from


def container_question(netmap: NetworkMap) -> ContainerQuestion | None:
    """A container of this host asks for a container of another host (a name Docker's resolver
    cannot answer itself: it forwards it, and shoal redirects that to its responder), else for
    `<this node>.shoal`; None when this host has no container on the `shoal` network."""
    me = netmap.self_node
    mine = sorted((c for c in netmap.containers if c.node_id == me.id), key=lambda c: c.name)
    if not mine or me.subnet is None:  # a host without Docker has no containers
        return None
    # Only names the responder serves: published (policy) and handed out (health).
    served = publishable(netmap).containers
    names = [c.name for c in served]
    remote = sorted(
        (
            c
            for c in served
            if c.node_id != me.id and c.serves_traffic() and names.count(c.name) == 1
        ),
        key=lambda c: c.name,
    )
    if remote:
        return ContainerQuestion(mine[0], remote[0].name, remote[0].ip, me.subnet)
    return ContainerQuestion(mine[0], SELF_NAME.format(name=me.name), me.mesh_ip, me.subnet)


def check_container_dns(
    question: ContainerQuestion | None,
    answer: DnsAnswer | None,
    responder: IPv4Address,
    responder_ok: bool,
) -> Check:
    """What a container of this host gets for a mesh name through Docker's resolver."""
    if question is None:
        return Check(
            code="container-dns",
            subject=HOST,
            verdict=Verdict.SKIP,
            summary="no container of this host on the shoal network to ask from",
        )
    asker, name, subnet = question.asker.name, question.name, question.subnet
    if answer is None:
        return Check(
            code="container-dns",
            subject=HOST,
            verdict=Verdict.SKIP,
            summary=f"container {asker} is not running: not asked",
        )
    got = ", ".join(answer.addresses) or "no address"
    if answer.rcode == "NOERROR" and str(question.expected) in answer.addresses:
        return Check(
            code="container-dns",
            subject=HOST,
            verdict=Verdict.OK,
            summary=f"{name} resolves to {question.expected} inside container {asker}",
        )
    where = f"{responder}:53"
    if not responder_ok:
        cause = f"the responder at {where} does not answer (see dns-responder)"
        fix = "fix the dns-responder line first"
    elif answer.rcode is None:
        cause = (
            f"the responder answers this host, but Docker's resolver in {asker} got no answer "
            f"for {name} ({answer.error}): Docker forwards names it does not know from the "
            f"container's own address (in {subnet}) and shoal redirects them to {where}; "
            f"something drops port 53 from the containers on the way"
        )
        fix = (
            f"look for a firewall rule dropping UDP 53 from {subnet} (`nft list ruleset`, "
            "`iptables-save`); the firewall-docker line checks shoal's redirect"
        )
    elif answer.rcode != "NOERROR":
        cause = (
            f"Docker's resolver answered {answer.rcode} for {name}: the query reached a "
            f"resolver that does not know the mesh's names instead of shoal's at {where} "
            "(the redirect of the containers' port 53 is missing or bypassed)"
        )
        fix = "see the firewall-docker line; `iptables -t nat -S` must redirect port 53 there"
    else:
        cause = (
            f"{name} resolved to {got}, but the netmap says {question.expected}: an answer "
            "from another resolver, or a cached stale one"
        )
        fix = f"compare with `nslookup {name} {responder}` on this host"
    return Check(
        code="container-dns",
        subject=HOST,
        verdict=Verdict.FAIL,
        summary=f"{name} inside container {asker}: "
        + (f"no answer ({answer.error})" if answer.rcode is None else f"{answer.rcode}, {got}"),
        cause=cause,
        fix=fix,
    )


# -- peers ----------------------------------------------------------------------------------


def check_peer(
    me: Node,
    peer: Node,
    stats: PeerStats | None,
    reach: Reach,
    now: datetime,
    path: PeerPath | None = None,
) -> Check:
    """`path`: the agent's path to the peer (None: unknown, judged from the netmap alone)."""
    handshake = stats.last_handshake if stats else None
    seen = f"handshake {_ago(now - handshake)}" if handshake else "no handshake yet"
    relay = _tcp_relay(me, peer)
    if relay is not None:
        return _check_relayed(me, peer, relay, seen, reach)
    if path is not None and path.relay is not None and path.relay.kind != "relay":
        return _check_udp_relayed(peer, path.relay, path.why, seen, reach)
    endpoint = (stats.endpoint if stats else None) or (
        str(peer.endpoints[0]) if peer.endpoints else None
    )
    where = f"endpoint {endpoint}" if endpoint else "no endpoint"
    if reach.rtt_ms is not None:
        stale = handshake is not None and now - handshake > HANDSHAKE_STALE
        return Check(
            code="peer",
            subject=peer.name,
            verdict=Verdict.WARN if stale else Verdict.OK,
            summary=f"{seen}, {where} (direct), {peer.mesh_ip} answers in {reach.rtt_ms:.1f} ms",
            cause="the handshake is older than 180 s although traffic flows" if stale else None,
            fix="check the peer's clock and `wg show` on both hosts" if stale else None,
        )
    port = endpoint.rpartition(":")[2] if endpoint else "51820"
    if endpoint is None:
        cause = f"{peer.name} advertises no endpoint: nothing to send WireGuard packets to"
        fix = f"start {peer.name}'s agent with --advertise-addr IP"
    elif handshake is None or now - handshake > HANDSHAKE_STALE:
        cause = (
            f"no WireGuard handshake with {peer.name} ({seen}): UDP {port} to {endpoint} gets "
            "no answer: blocked by a firewall on either host or between them, a wrong "
            f"advertised address, or {peer.name}'s interface is down"
        )
        fix = (
            f"allow UDP {port} both ways between this host and {endpoint}; run "
            f"`shoal doctor` on {peer.name}"
        )
    else:
        got = "nothing" if reach.rx_delta == 0 else f"{reach.rx_delta} bytes"
        cause = (
            f"the tunnel to {peer.name} worked ({seen}) but an echo to {peer.mesh_ip} got no "
            f"reply and {got} came back from {endpoint}: UDP {port} between the hosts is "
            f"blocked now (a firewall on either host or between them), or {peer.name} stopped"
        )
        fix = (
            f"allow UDP {port} both ways between this host and {endpoint}; run "
            f"`shoal doctor` on {peer.name}"
        )
    return Check(
        code="peer",
        subject=peer.name,
        verdict=Verdict.FAIL,
        summary=f"{seen}, {where}, {peer.mesh_ip} does not answer",
        cause=cause,
        fix=fix,
    )


def _tcp_relay(me: Node, peer: Node) -> Endpoint | None:
    """The TCP relay the agent sends `peer`'s WireGuard packets through (the same choice as
    `shoal.agent.paths.candidates`: a side without UDP advertises its relay), None when the
    path is UDP. Its data plane endpoint is then a loopback socket of the agent: naming that
    to the operator would send them opening UDP on 127.0.0.1."""
    return next(
        (e for n in (peer, me) for e in n.endpoints if e.kind == "relay"),
        None,
    )


def _check_relayed(me: Node, peer: Node, relay: Endpoint, seen: str, reach: Reach) -> Check:
    """A peer reached over TCP relay `relay`: a warning while it answers (the direct path is
    blocked, the relay is slower), a failure when the relayed path fails too."""
    blocked = " and ".join(
        "this host" if n is me else n.name
        for n in (me, peer)
        if any(e.kind == "relay" for e in n.endpoints)
    )
    direct = next((e for e in peer.endpoints if e.kind != "relay"), None)
    port = direct.port if direct else 51820
    no_direct = (
        f"direct UDP {port} to {direct} gets no answer (UDP is blocked at {blocked})"
        if direct
        else f"{peer.name} advertises no UDP endpoint (UDP is blocked at {blocked})"
    )
    allow = f"allow inbound UDP {port} from the network at {blocked}"
    got = _came_back(reach)
    return _relayed_verdict(
        peer,
        f"{seen}, relayed via tcp relay {relay}",
        reach,
        answers=(
            f"{no_direct}: WireGuard packets to {peer.name} go through the TCP relay "
            f"at {relay} instead (more latency, less throughput)",
            f"{allow} for a direct path; `shoal netcheck` there shows what UDP gets through",
        ),
        silent=(
            f"{no_direct}, and the relayed path fails too: {got} came back through the TCP "
            f"relay at {relay} (a host cannot reach TCP {relay.port} at {relay.host}, an agent "
            f"is not connected to the relay, or a firewall drops the relay's datagrams to "
            f"WireGuard on loopback)",
            f"run `shoal doctor` and `shoal netcheck` on {peer.name} and here; {allow}; "
            f"never drop UDP {port} on the loopback interface",
        ),
    )


def _check_udp_relayed(
    peer: Node, relay: Endpoint, why: str | None, seen: str, reach: Reach
) -> Check:
    """A peer reached through the server's UDP relay (port `relay`): a warning while it
    answers (no direct path: `why`), a failure when the relayed path fails too."""
    no_direct = f"no direct path to {peer.name} ({why or 'no direct handshake'})"
    if why is not None and why.startswith("symmetric NAT"):
        fix = (
            f"give this host or {peer.name} a public address, an easy (endpoint-independent) "
            "NAT or a forwarded UDP port for WireGuard; `shoal netcheck` shows each side's NAT"
        )
    else:
        fix = (
            f"allow UDP between this host and {peer.name}'s endpoints; run `shoal netcheck` on both"
        )
    got = _came_back(reach)
    return _relayed_verdict(
        peer,
        f"{seen}, relayed via the server's udp relay {relay}",
        reach,
        answers=(
            f"{no_direct}: WireGuard packets to {peer.name} go through the server's UDP "
            f"relay at {relay} instead (more latency, and the server carries the traffic)",
            fix,
        ),
        silent=(
            f"{no_direct}, and the relayed path fails too: {got} came back through the "
            f"server's UDP relay at {relay} (UDP {relay.port} to {relay.host} is blocked on the "
            "way, or the server restarted and the pair's relay port is stale)",
            f"allow UDP to {relay.host} from both hosts; run `shoal doctor` on {peer.name}",
        ),
    )


def _came_back(reach: Reach) -> str:
    return "nothing" if reach.rx_delta == 0 else f"{reach.rx_delta} bytes"


def _relayed_verdict(
    peer: Node, where: str, reach: Reach, answers: tuple[str, str], silent: tuple[str, str]
) -> Check:
    """A relayed peer's check: a warning with `answers` (cause, fix) while it answers over
    the relay, a failure with `silent` when it does not."""
    answered = reach.rtt_ms is not None
    cause, fix = answers if answered else silent
    return Check(
        code="peer",
        subject=peer.name,
        verdict=Verdict.WARN if answered else Verdict.FAIL,
        summary=f"{where}, {peer.mesh_ip} "
        + (f"answers in {reach.rtt_ms:.1f} ms" if reach.rtt_ms is not None else "does not answer"),
        cause=cause,
        fix=fix,
    )


def check_path_mtu(peer: Node, mtu: int, result: PathMtu | None) -> Check:
    if result is None:
        return Check(
            code="path-mtu",
            subject=peer.name,
            verdict=Verdict.SKIP,
            summary="not measured: the peer does not answer",
        )
    if result.largest is not None and result.largest >= mtu:
        return Check(
            code="path-mtu",
            subject=peer.name,
            verdict=Verdict.OK,
            summary=f"{mtu}-byte packets pass with DF (the mesh MTU)",
        )
    if result.refused_here:
        return Check(
            code="path-mtu",
            subject=peer.name,
            verdict=Verdict.FAIL,
            summary=f"this host refuses {mtu}-byte packets to {peer.mesh_ip}",
            cause=f"the route to {peer.mesh_ip} has a smaller MTU than the mesh's {mtu}",
            fix="`ip route get` it; the agent restores shoal0's MTU and routes on its resync",
        )
    largest = result.largest
    passes = f"up to {largest} bytes pass" if largest else f"not even {MTU_FLOOR} bytes pass"
    underlay = f"{largest + WIREGUARD_OVERHEAD}" if largest else "?"
    return Check(
        code="path-mtu",
        subject=peer.name,
        verdict=Verdict.FAIL,
        summary=f"MTU black hole: {mtu}-byte packets with DF vanish, {passes}",
        cause=f"a hop between this host and {peer.name} carries less than {mtu} + "
        f"{WIREGUARD_OVERHEAD} bytes and drops bigger packets without an ICMP error "
        f"(about {underlay} fit): big transfers hang while pings work",
        fix=f"raise the underlay MTU to {mtu + WIREGUARD_OVERHEAD} on every hop, or start the "
        f"server with --mtu {largest or MTU_FLOOR} (mesh-wide)",
    )


# -- the target -----------------------------------------------------------------------------


def resolve_target(netmap: NetworkMap, text: str) -> Target:
    """A node, container or service name, or IP[:PORT] (an IP in the mesh or a subnet)."""
    nodes = (netmap.self_node, *netmap.peers)
    host, sep, port_text = text.rpartition(":")
    candidate = host if sep else text
    try:
        ip = IPv4Address(candidate)
    except ValueError:
        ip = None
    if ip is not None:
        port = None
        if sep:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise UnknownTarget(f"bad port in {text!r}: expected IP[:PORT], PORT 1-65535")
            port = int(port_text)
        owners = tuple(
            n for n in nodes if n.mesh_ip == ip or (n.subnet is not None and ip in n.subnet)
        )
        if not owners:
            raise UnknownTarget(f"{ip} is no mesh IP and in no host's container subnet")
        return Target(label=text, nodes=owners, ip=ip, port=port)
    by_name = [n for n in nodes if n.name == text]
    if by_name:
        return Target(label=f"node {text}", nodes=(by_name[0],), ip=by_name[0].mesh_ip)
    node_by_id = {n.id: n for n in nodes}
    container = next((c for c in netmap.containers if c.name == text), None)
    if container is not None and container.node_id in node_by_id:
        return Target(
            label=f"container {text}", nodes=(node_by_id[container.node_id],), ip=container.ip
        )
    replicas = [c for c in netmap.containers if c.service == text and c.node_id in node_by_id]
    if replicas:
        hosts = tuple(sorted({node_by_id[c.node_id] for c in replicas}, key=lambda n: n.name))
        return Target(label=f"service {text}", nodes=hosts)
    raise UnknownTarget(
        f"no node, container or service named {text!r} in the netmap, and not an IP[:PORT]"
    )


def check_target(target: Target, rtt_ms: float | None, tcp_error: str | None) -> Check:
    if target.ip is None:
        hosts = ", ".join(n.name for n in target.nodes)
        return Check(
            code="target",
            subject=target.label,
            verdict=Verdict.OK,
            summary=f"replicas on {hosts}: see their peer checks",
        )
    if target.port is not None:
        if tcp_error is None:
            return Check(
                code="target",
                subject=target.label,
                verdict=Verdict.OK,
                summary=f"TCP {target.ip}:{target.port} opens",
            )
        return Check(
            code="target",
            subject=target.label,
            verdict=Verdict.FAIL,
            summary=f"TCP {target.ip}:{target.port}: {tcp_error}",
            cause="the host answers but nothing accepts on that port"
            if "refused" in tcp_error
            else "the path or a firewall drops it (see the checks above)",
            fix="check that the service listens on that port (`docker ps`, `ss -ltn` in it)",
        )
    if rtt_ms is not None:
        return Check(
            code="target",
            subject=target.label,
            verdict=Verdict.OK,
            summary=f"{target.ip} answers in {rtt_ms:.1f} ms",
        )
    return Check(
        code="target",
        subject=target.label,
        verdict=Verdict.FAIL,
        summary=f"{target.ip} does not answer ICMP echo",
        cause="it is down or stopped, or the path to it is broken (see the checks above)",
        fix="`docker ps` on its host; `shoal doctor` there",
    )


def _seen_by(netmap: NetworkMap, node: Node) -> NetworkMap:
    """`netmap` as `node` gets it: the same mesh, with `node` as the self node."""
    others = tuple(n for n in (netmap.self_node, *netmap.peers) if n.id != node.id)
    return netmap.model_copy(update={"self_node": node, "peers": others})


def check_policy(netmap: NetworkMap, target: Target) -> Check | None:
    """The verdict the target's host gives the flow doctor's own probe sends (from this host's
    mesh IP: TCP to the target's port, else an ICMP echo), and the rule or default that
    decides, as `shoal policy test` explains it. None for a target with no one address."""
    if target.ip is None:
        return None
    me = netmap.self_node
    owner = target.nodes[0]
    proto: Proto = "icmp" if target.port is None else "tcp"
    flow = f"{proto} {me.mesh_ip} → {target.ip}" + (f":{target.port}" if target.port else "")
    if owner.id == me.id:
        return Check(
            code="policy",
            subject=target.label,
            verdict=Verdict.OK,
            summary=f"{flow}: same host, the mesh policy does not filter it",
        )
    policy = netmap.policy
    compiled = None if policy is None else compile_for(policy, _seen_by(netmap, owner))
    verdict = explain(compiled, owner.mesh_ip, me.mesh_ip, target.ip, proto, target.port)
    if verdict.allow:
        return Check(
            code="policy",
            subject=target.label,
            verdict=Verdict.OK,
            summary=f"{flow}: {verdict.reason}",
        )
    fix = "add a rule to the policy (`shoal policy get`, edit, `shoal policy set FILE`)"
    # `policy test` takes names: the container or node at the target's address.
    name = next((c.name for c in netmap.containers if c.ip == target.ip), None)
    if name is None and target.ip == owner.mesh_ip:
        name = owner.name
    if name is not None:
        to = f"{name}:{target.port}" if target.port else f"{name} --proto icmp"
        fix += f"; `shoal policy test --from {me.name} --to {to}` explains the verdict"
    return Check(
        code="policy",
        subject=target.label,
        verdict=Verdict.FAIL,
        summary=f"{flow}: denied by {owner.name}'s firewall",
        cause=f"{verdict.reason}: {owner.name} drops new flows no rule allows",
        fix=fix,
    )


# -- running them ---------------------------------------------------------------------------

T = TypeVar("T")


async def _guarded(code: str, what: str, work: Awaitable[T]) -> T | Check:
    """The result, or a FAIL check saying the host could not be read."""
    try:
        return await work
    except ShoalError as exc:
        return Check(
            code=code,
            subject=HOST,
            verdict=Verdict.FAIL,
            summary=f"cannot read {what}",
            cause=str(exc),
            fix="the agent's own applies read the same: see `shoal status` and its log",
        )


async def measure_path_mtu(
    echo: Callable[[int, float], Awaitable[float | None]], mtu: int
) -> PathMtu:
    """The largest DF echo (bytes) that passes, by bisection below `mtu`; `echo(size, timeout)`
    raises TooBigForRoute when this host refuses the size. Two tries at `mtu` first: one lost
    packet must not read as a black hole."""
    try:
        for _ in range(2):
            if await echo(mtu, MTU_ECHO_TIMEOUT) is not None:
                return PathMtu(largest=mtu)
    except TooBigForRoute:
        return PathMtu(largest=None, refused_here=True)
    # Invariant: `lo` passed, everything above `hi` failed.
    lo, hi = MTU_FLOOR, mtu - 1
    if not await _passes(echo, lo):
        return PathMtu(largest=None)
    while hi - lo > MTU_STEP:
        mid = (lo + hi + 1) // 2
        if await _passes(echo, mid):
            lo = mid
        else:
            hi = mid - 1
    return PathMtu(largest=lo)


async def _passes(echo: Callable[[int, float], Awaitable[float | None]], size: int) -> bool:
    try:
        return await echo(size, MTU_ECHO_TIMEOUT) is not None
    except TooBigForRoute:
        return False


async def _probe_peer(
    view: AgentView, probe: HostProbe, peer: Node, before: Mapping[str, PeerStats]
) -> tuple[Check, Check]:
    rtt = None
    try:
        for _ in range(2):
            rtt = await probe.echo(peer.mesh_ip, None, ECHO_TIMEOUT, False)
            if rtt is not None:
                break
    except ShoalError as exc:
        failed = Check(
            code="peer",
            subject=peer.name,
            verdict=Verdict.FAIL,
            summary=f"cannot probe {peer.mesh_ip}",
            cause=str(exc),
            fix="run doctor as root on the host itself",
        )
        return failed, check_path_mtu(peer, view.netmap.settings.mtu, None)
    after = {str(s.public_key): s for s in await _stats(probe)}
    key = str(peer.public_key)
    old, new = before.get(key), after.get(key)
    rx_delta = (new.rx_bytes - old.rx_bytes) if (old and new) else 0
    peer_check = check_peer(
        view.netmap.self_node,
        peer,
        new or old,
        Reach(rtt, rx_delta),
        view.now,
        view.paths.get(str(peer.public_key)),
    )
    mtu = view.netmap.settings.mtu
    if rtt is None:
        return peer_check, check_path_mtu(peer, mtu, None)

    async def echo(size: int, timeout: float) -> float | None:
        return await probe.echo(peer.mesh_ip, size, timeout, True)

    try:
        measured: PathMtu | None = await measure_path_mtu(echo, mtu)
    except ShoalError:
        measured = None
    return peer_check, check_path_mtu(peer, mtu, measured)


async def run_doctor(view: AgentView, probe: HostProbe, target_text: str | None) -> DoctorReport:
    """Every check of this host, then each peer (all, or the target's hosts) and the target.

    Raises UnknownTarget when `target_text` names nothing in the netmap."""
    target = resolve_target(view.netmap, target_text) if target_text else None
    me = view.netmap.self_node
    peers = view.netmap.peers if target is None else tuple(n for n in target.nodes if n.id != me.id)
    self_name = SELF_NAME.format(name=me.name)
    upstreams = list(probe.dns_upstreams(me.mesh_ip))

    async def upstream(up: tuple[str, int]) -> tuple[str, DnsAnswer]:
        return f"{up[0]}:{up[1]}", await probe.dns(up[0], up[1], UPSTREAM_PROBE_NAME)

    before = {str(s.public_key): s for s in await _stats(probe)}

    async def upstream_answers() -> list[tuple[str, DnsAnswer]]:
        return list(await asyncio.gather(*(upstream(up) for up in upstreams)))

    async def peer_checks() -> list[tuple[Check, Check]]:
        return list(await asyncio.gather(*(_probe_peer(view, probe, p, before) for p in peers)))

    question = container_question(view.netmap)

    async def container_answer() -> DnsAnswer | Check | None:
        if question is None:
            return None
        return await _guarded(
            "container-dns",
            f"DNS inside container {question.asker.name}",
            probe.container_dns(question.asker.id, question.name),
        )

    # The slow parts (timeouts on a broken path) run at once.
    async with asyncio.TaskGroup() as tasks:
        server_task = tasks.create_task(probe.server())
        responder_task = tasks.create_task(probe.dns(str(me.mesh_ip), view.dns_port, self_name))
        upstream_task = tasks.create_task(upstream_answers())
        peers_task = tasks.create_task(peer_checks())
        container_task = tasks.create_task(container_answer())
    server, responder = server_task.result(), responder_task.result()
    checks: list[Check] = [
        check_agent(view),
        check_server(view.server_url, server),
        check_certificate(server, view.now),
        check_clock(server),
    ]
    ifname = view.plan.tunnel.interface.name
    link = await _guarded("wireguard", "the WireGuard interface", probe.link(ifname))
    module = probe.wireguard_module()
    checks.append(link if isinstance(link, Check) else check_wireguard(view, link, module))
    forward = await _guarded("forwarding", "net.ipv4.ip_forward", probe.ip_forward())
    checks.append(forward if isinstance(forward, Check) else check_forwarding(forward))
    routes = await _guarded("routes", "the routing table", probe.routes(view.plan.routing.device))
    checks.append(routes if isinstance(routes, Check) else check_routes(view, routes))
    network = view.plan.docker_network
    if network is not None:  # None: a host without Docker
        drift = await _guarded("docker-network", "Docker's networks", probe.docker_network(network))
        checks.append(drift if isinstance(drift, Check) else check_docker_network(network, drift))
    firewall = await _guarded("firewall-table", "the firewall", probe.firewall(view.plan.firewall))
    if isinstance(firewall, Check):
        checks.append(firewall)
    else:
        checks.extend(check_firewall(firewall))
    checks.append(check_dns_responder(me.mesh_ip, view.dns_port, self_name, responder))
    checks.append(check_dns_upstream(upstream_task.result()))
    in_container = container_task.result()
    checks.append(
        in_container
        if isinstance(in_container, Check)
        else check_container_dns(
            question, in_container, me.mesh_ip, responder_ok=responder.rcode == "NOERROR"
        )
    )
    for peer_check, mtu_check in peers_task.result():
        checks += [peer_check, mtu_check]
    if target is not None:
        verdict = check_policy(view.netmap, target)
        if verdict is not None:
            checks.append(verdict)
        checks.append(await _check_target(probe, target))
    return DoctorReport(host=view.name, target=target_text, checks=tuple(checks))


async def _stats(probe: HostProbe) -> Sequence[PeerStats]:
    try:
        return await probe.peer_stats()
    except ShoalError:
        return []  # no interface: the wireguard check says so


async def _check_target(probe: HostProbe, target: Target) -> Check:
    if target.ip is None:
        return check_target(target, None, None)
    if target.port is not None:
        return check_target(target, None, await probe.tcp(target.ip, target.port, 3.0))
    try:
        rtt = await probe.echo(target.ip, None, ECHO_TIMEOUT, False)
    except ShoalError as exc:
        return Check(
            code="target",
            subject=target.label,
            verdict=Verdict.FAIL,
            summary=f"cannot probe {target.ip}",
            cause=str(exc),
            fix="run doctor as root on the host itself",
        )
    return check_target(target, rtt, None)
