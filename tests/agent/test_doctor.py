"""`shoal doctor`'s verdicts against a faked host: the reconciler applies a netmap to a
`FakeHost`, one thing is broken, and the report must name it (and nothing else).

Clock skew cannot be broken per network namespace in the lab (one kernel clock), so its check
is covered here only."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from ipaddress import IPv4Address

import pytest

from shoal.agent.doctor import (
    AgentView,
    PathMtu,
    check_clock,
    check_container_dns,
    container_question,
    measure_path_mtu,
    resolve_target,
    run_doctor,
    why_dataplane,
)
from shoal.agent.health import Health
from shoal.agent.paths import PeerPath
from shoal.agent.ping import TooBigForRoute
from shoal.agent.reconciler import Reconciler
from shoal.controlclient.probe import ServerProbe
from shoal.dns.probe import DnsAnswer
from shoal.firewall.errors import FirewallError
from shoal.model.doctor import Check, DoctorReport, UnknownTarget, Verdict
from shoal.model.keys import PrivateKey
from shoal.model.netmap import Container, Endpoint, NetworkMap, Node
from shoal.model.policy import parse
from shoal.plan.hostconfig import plan_host
from shoal.testing.builders import netmap, node
from shoal.testing.clock import ManualClock
from shoal.testing.doctor import FakeDoctorProbe, FakePath
from shoal.testing.fakes import FakeHost

KEY = PrivateKey(b"\x07" * 32)
NOW = ManualClock().now()


def server_probe(skew: float = 0.0, cert_days: float = 800) -> ServerProbe:
    """A server that answered, whose clock is `skew` s behind ours."""
    return ServerProbe(
        rtt_ms=3.0,
        server_time=NOW - timedelta(seconds=skew),
        local_time=NOW,
        cert_not_after=NOW + timedelta(days=cert_days),
        ca_not_after=NOW + timedelta(days=3600),
    )


@dataclass
class Rig:
    host: FakeHost
    probe: FakeDoctorProbe
    health: Health
    reconciler: Reconciler
    netmap: NetworkMap
    paths: dict[str, PeerPath] = field(default_factory=dict)  # the agent's path selection

    def view(self) -> AgentView:
        return AgentView(
            name=self.netmap.self_node.name,
            state=self.health.state(),
            warnings=self.health.warnings(),
            subsystems=self.reconciler.subsystems(),
            netmap=self.netmap,
            netmap_received_at=NOW,
            plan=plan_host(self.netmap, KEY, 51820),
            dataplane="kernel",
            dns_port=53,
            server_url="https://192.0.2.2:8443",
            now=NOW,
            paths=self.paths,
        )

    async def doctor(self, target: str | None = None) -> DoctorReport:
        return await run_doctor(self.view(), self.probe, target)


async def rig(nm: NetworkMap | None = None) -> Rig:
    nm = nm or netmap(1, [2, 3])
    host, clock = FakeHost(), ManualClock()
    health = Health(clock)
    reconciler = Reconciler(host.adapters, lambda m: plan_host(m, KEY, 51820), health, clock)
    reconciler.offer(nm)
    await reconciler.first_apply()
    health.configured = True
    probe = FakeDoctorProbe(host, server_probe())
    for peer in nm.peers:  # every peer shook hands a few seconds ago
        probe.handshake(peer.public_key, NOW - timedelta(seconds=5), rx_bytes=1000)
    return Rig(host, probe, health, reconciler, nm)


def verdicts(report: DoctorReport) -> dict[tuple[str, str], Verdict]:
    return {(c.code, c.subject): c.verdict for c in report.checks}


def failed(report: DoctorReport) -> list[Check]:
    return list(report.failed)


def only_failure(report: DoctorReport, code: str, subject: str = "this host") -> Check:
    (check,) = failed(report)
    assert (check.code, check.subject) == (code, subject), report
    assert check.cause and check.fix
    return check


LOCAL = Container(id="c1", node_id="n1", name="app", ip=IPv4Address("10.42.1.2"))
REMOTE = Container(id="c2", node_id="n2", name="db", ip=IPv4Address("10.42.2.2"))


def with_containers(*containers: Container) -> NetworkMap:
    return netmap(1, [2, 3]).model_copy(update={"containers": containers})


async def test_a_converged_host_with_good_paths_passes_every_check() -> None:
    r = await rig(with_containers(LOCAL, REMOTE))
    report = await r.doctor()
    assert failed(report) == []
    assert [c.code for c in report.checks] == [
        "agent", "server", "certificate", "clock", "wireguard", "forwarding", "routes",
        "docker-network", "firewall-table", "firewall-docker", "dns-responder", "dns-upstream",
        "container-dns", "peer", "path-mtu", "peer", "path-mtu",
    ]  # fmt: skip
    assert set(verdicts(report).values()) == {Verdict.OK}
    peer = next(c for c in report.checks if c.code == "peer")
    assert peer.summary == (
        "handshake 5s ago, endpoint 192.0.2.12:51820 (direct), 100.64.0.2 answers in 0.5 ms"
    )


async def test_a_deleted_route_names_the_subnet_its_peer_and_the_command() -> None:
    r = await rig()
    r.host.routing.delete_route("10.42.3.0/24")
    check = only_failure(await r.doctor(), "routes")
    assert check.cause is not None and check.cause.startswith("10.42.3.0/24 (h3) missing")
    assert check.fix is not None
    assert "ip route replace 10.42.3.0/24 dev shoal0 src 100.64.0.1 mtu 1420" in check.fix


async def test_forwarding_off_is_named() -> None:
    r = await rig()
    r.host.routing.forwarding = False
    check = only_failure(await r.doctor(), "forwarding")
    assert "net.ipv4.ip_forward is 0" in (check.cause or "")


async def test_a_missing_firewall_fails_both_firewall_checks() -> None:
    r = await rig()
    await r.host.firewall.teardown()
    report = await r.doctor()
    assert [(c.code, c.summary) for c in failed(report)] == [
        ("firewall-table", "nftables table inet shoal differs from the plan (1 line)"),
        ("firewall-docker", "iptables chains differ from the plan (1 line)"),
    ]


async def test_a_docker_network_with_another_subnet_is_named() -> None:
    r = await rig()
    network = r.host.docker_network.network
    assert network is not None
    r.host.docker_network.network = network.model_copy(update={"mtu": 1500})
    check = only_failure(await r.doctor(), "docker-network")
    assert check.summary == "network shoal has subnet 10.42.1.0/24 mtu 1500"
    assert check.cause == "shoal needs subnet 10.42.1.0/24, MTU 1420, bridge shoal-br0"


def test_why_kernel_or_userspace() -> None:
    assert why_dataplane("kernel", True) == "kernel WireGuard (the module works here)"
    assert "no WireGuard module" in why_dataplane("wireguard-go", False)
    assert "already ran on wireguard-go" in why_dataplane("wireguard-go", True)


async def test_a_missing_or_wrong_interface_is_named() -> None:
    r = await rig()
    r.host.tunnel.wireguard.links["shoal0"].mtu = 1280
    check = only_failure(await r.doctor(), "wireguard")
    assert check.cause == "shoal0 has MTU 1280, the mesh uses 1420"
    await r.host.tunnel.teardown()
    report = await r.doctor()
    assert verdicts(report)[("wireguard", "this host")] is Verdict.FAIL
    # No interface: no counters, no peer answers; doctor says so instead of crashing.
    assert verdicts(report)[("peer", "h2")] is Verdict.FAIL


async def test_a_peer_that_never_shook_hands_names_the_udp_port_and_endpoint() -> None:
    r = await rig()
    h2 = node(2)
    r.probe.handshake(h2.public_key, None)
    r.probe.paths[h2.mesh_ip] = FakePath(up=False)
    report = await r.doctor()
    check = only_failure(report, "peer", "h2")
    assert (
        check.summary == "no handshake yet, endpoint 192.0.2.12:51820, 100.64.0.2 does not answer"
    )
    assert "UDP 51820 to 192.0.2.12:51820 gets no answer" in (check.cause or "")
    assert verdicts(report)[("path-mtu", "h2")] is Verdict.SKIP


async def test_a_path_blocked_after_a_handshake_says_nothing_came_back() -> None:
    r = await rig()
    h3 = node(3)
    r.probe.paths[h3.mesh_ip] = FakePath(up=False)
    check = only_failure(await r.doctor(), "peer", "h3")
    assert "worked (handshake 5s ago)" in (check.cause or "")
    assert "nothing came back from 192.0.2.13:51820" in (check.cause or "")
    assert "UDP 51820 between the hosts is blocked now" in (check.cause or "")


def h2_without_udp() -> NetworkMap:
    """h1's netmap when h2's UDP is blocked: h2 advertises the TCP relay it is reached by."""
    nm = netmap(1, [2, 3])
    relay = Endpoint(host=IPv4Address("192.0.2.2"), port=443, kind="relay")
    h2 = node(2).model_copy(update={"endpoints": (*node(2).endpoints, relay)})
    return nm.model_copy(update={"peers": (h2, node(3))})


async def test_a_relayed_peer_is_a_warning_naming_the_relay_and_the_blocked_udp() -> None:
    r = await rig(h2_without_udp())
    h2 = node(2)
    # WireGuard's endpoint for h2 is the agent's loopback socket of the TCP relay.
    r.probe.handshake(h2.public_key, NOW - timedelta(seconds=5), endpoint="127.0.0.1:53833")
    check = next(c for c in (await r.doctor()).checks if c.code == "peer" and c.subject == "h2")
    assert check.verdict is Verdict.WARN
    assert "relayed via tcp relay 192.0.2.2:443" in check.summary
    assert "direct UDP 51820 to 192.0.2.12:51820 gets no answer (UDP is blocked at h2)" in (
        check.cause or ""
    )
    assert "127.0.0.1" not in f"{check.summary} {check.cause} {check.fix}"


async def test_a_failing_relayed_path_says_the_relay_fails_too_not_udp_on_loopback() -> None:
    r = await rig(h2_without_udp())
    h2 = node(2)
    r.probe.handshake(h2.public_key, NOW - timedelta(seconds=91), endpoint="127.0.0.1:53833")
    r.probe.paths[h2.mesh_ip] = FakePath(up=False)
    check = only_failure(await r.doctor(), "peer", "h2")
    assert "relayed via tcp relay 192.0.2.2:443, 100.64.0.2 does not answer" in check.summary
    assert "the relayed path fails too" in (check.cause or "")
    assert "UDP 51820 to 192.0.2.12:51820" in (check.cause or "")
    assert "127.0.0.1" not in f"{check.summary} {check.cause} {check.fix}"


def on_udp_relay(r: Rig, peer: Node) -> None:
    """h1 and `peer` both behind symmetric NATs: the agent put `peer` on the server's UDP
    relay, whose port is all WireGuard's endpoint shows."""
    relay = Endpoint(host=IPv4Address("192.0.2.2"), port=40000)
    r.paths[str(peer.public_key)] = PeerPath(
        relay,
        "relayed via udp 192.0.2.2:40000 (symmetric NAT on both sides)",
        kind="relayed",
        relay=relay,
        why="symmetric NAT on both sides",
    )
    r.probe.handshake(peer.public_key, NOW - timedelta(seconds=5), endpoint=str(relay))


async def test_a_peer_on_the_servers_udp_relay_is_a_warning_naming_the_relay_and_why() -> None:
    r = await rig()
    on_udp_relay(r, node(2))
    check = next(c for c in (await r.doctor()).checks if c.code == "peer" and c.subject == "h2")
    assert check.verdict is Verdict.WARN
    assert "relayed via the server's udp relay 192.0.2.2:40000" in check.summary
    assert "no direct path to h2 (symmetric NAT on both sides)" in (check.cause or "")
    assert "easy (endpoint-independent) NAT" in (check.fix or "")
    # The other peer, direct, stays OK.
    assert verdicts(await r.doctor())[("peer", "h3")] is Verdict.OK


async def test_a_failing_udp_relayed_path_says_the_relay_fails_too() -> None:
    r = await rig()
    on_udp_relay(r, node(2))
    r.probe.paths[node(2).mesh_ip] = FakePath(up=False)
    check = only_failure(await r.doctor(), "peer", "h2")
    assert "relayed via the server's udp relay 192.0.2.2:40000, 100.64.0.2 does not answer" in (
        check.summary
    )
    assert "the relayed path fails too" in (check.cause or "")


async def test_an_mtu_black_hole_names_the_size_that_passes_and_the_fix() -> None:
    r = await rig()
    r.probe.paths[node(2).mesh_ip] = FakePath(mtu=1340)
    check = only_failure(await r.doctor(), "path-mtu", "h2")
    assert check.summary.startswith("MTU black hole: 1420-byte packets with DF vanish, up to 13")
    largest = int(check.summary.split("up to ")[1].split()[0])
    assert 1340 - 8 <= largest <= 1340
    assert f"--mtu {largest}" in (check.fix or "")


async def test_a_route_refusing_the_mtu_here_is_not_called_a_black_hole() -> None:
    r = await rig(netmap(1, [2]))
    r.probe.route_mtu = 1400
    check = only_failure(await r.doctor(), "path-mtu", "h2")
    assert check.summary == "this host refuses 1420-byte packets to 100.64.0.2"


async def test_path_mtu_bisection_finds_the_largest_size_within_a_step() -> None:
    for limit in (576, 577, 1000, 1419):

        async def echo(size: int, timeout: float, limit: int = limit) -> float | None:
            return 1.0 if size <= limit else None

        result = await measure_path_mtu(echo, 1420)
        assert result.largest is not None and limit - 8 <= result.largest <= limit

    async def nothing(size: int, timeout: float) -> float | None:
        return None

    assert await measure_path_mtu(nothing, 1420) == PathMtu(largest=None)

    async def refused(size: int, timeout: float) -> float | None:
        raise TooBigForRoute("EMSGSIZE")

    assert await measure_path_mtu(refused, 1420) == PathMtu(largest=None, refused_here=True)


async def test_a_silent_dns_responder_and_dead_upstreams_are_named() -> None:
    r = await rig()
    r.probe.dns_blocked = True
    check = only_failure(await r.doctor(), "dns-responder")
    assert check.cause == (
        "no answer from 100.64.0.1:53: no answer within 2s: containers cannot resolve mesh names"
    )
    r.probe.dns_blocked = False
    r.probe.upstreams[("192.0.2.2", 53)] = False
    check = only_failure(await r.doctor(), "dns-upstream")
    assert check.summary == "no upstream answers (192.0.2.2:53)"
    r.probe.upstreams.clear()
    report = await r.doctor()
    assert failed(report) == []
    assert verdicts(report)[("dns-upstream", "this host")] is Verdict.WARN


async def test_a_failing_subsystem_makes_the_agent_check_say_since_when() -> None:
    r = await rig()
    r.host.firewall.fail = FirewallError("iptables-restore failed (exit 4): resource busy")
    r.host.routing.delete_route("10.42.2.0/24")  # the resync re-applies every part
    r.reconciler._resync_at = 0.0
    await r.reconciler.step()
    report = await r.doctor()
    check = next(c for c in failed(report) if c.code == "agent")
    assert check.summary == f"DEGRADED: not converged since {NOW:%Y-%m-%d %H:%M:%S} UTC (0s ago)"
    assert "firewall-failed: firewall: iptables-restore failed (exit 4)" in (check.cause or "")


async def test_warnings_on_a_converged_host_are_a_warning_not_a_failure() -> None:
    r = await rig()
    r.health.warn("control-unreachable", "control unreachable (timed out); using netmap r1")
    r.probe.server_probe = ServerProbe(error="cannot reach 192.0.2.2:8443: timed out")
    report = await r.doctor()
    agent = report.checks[0]
    assert (agent.verdict, agent.summary) == (
        Verdict.WARN,
        f"DEGRADED since {NOW:%Y-%m-%d %H:%M:%S} UTC (0s ago): converged to netmap r1, "
        "1 warning(s)",
    )
    assert only_failure(report, "server").summary == "https://192.0.2.2:8443 unreachable"


async def test_an_unreachable_server_skips_what_depends_on_it() -> None:
    r = await rig()
    r.probe.server_probe = ServerProbe(error="cannot reach 192.0.2.2:8443: timed out")
    report = await r.doctor()
    check = only_failure(report, "server")
    assert check.cause == "cannot reach 192.0.2.2:8443: timed out"
    assert verdicts(report)[("certificate", "this host")] is Verdict.SKIP
    assert verdicts(report)[("clock", "this host")] is Verdict.SKIP


@pytest.mark.parametrize(
    ("days", "verdict"), [(800, Verdict.OK), (29, Verdict.WARN), (-1, Verdict.FAIL)]
)
async def test_a_certificate_is_fine_expiring_or_expired(days: int, verdict: Verdict) -> None:
    r = await rig()
    r.probe.server_probe = server_probe(cert_days=days + 1 / 24)
    report = await r.doctor()
    assert verdicts(report)[("certificate", "this host")] is verdict
    assert len(failed(report)) == (verdict is Verdict.FAIL)


@pytest.mark.parametrize(
    ("skew", "verdict", "summary"),
    [
        (0.0, Verdict.OK, "within 5s (0s behind the server)"),
        (-4.0, Verdict.OK, "within 5s (4s behind the server)"),
        (30.0, Verdict.WARN, "30s ahead of the server"),
        (-600.0, Verdict.FAIL, "600s behind the server"),
    ],
)
def test_clock_skew_against_the_servers_date(skew: float, verdict: Verdict, summary: str) -> None:
    check = check_clock(server_probe(skew=skew))
    assert (check.verdict, check.summary) == (verdict, summary)
    if verdict is not Verdict.OK:
        assert "NTP" in (check.fix or "")


def test_targets_resolve_to_nodes_containers_services_and_addresses() -> None:
    web = Container(id="c1", node_id="n2", name="web", ip=IPv4Address("10.42.2.5"), service="api")
    api = Container(id="c2", node_id="n3", name="api-2", ip=IPv4Address("10.42.3.7"), service="api")
    nm = netmap(1, [2, 3]).model_copy(update={"containers": (web, api)})
    assert [n.name for n in resolve_target(nm, "h3").nodes] == ["h3"]
    target = resolve_target(nm, "web")
    assert (target.label, target.ip, [n.name for n in target.nodes]) == (
        "container web", IPv4Address("10.42.2.5"), ["h2"],
    )  # fmt: skip
    assert [n.name for n in resolve_target(nm, "api").nodes] == ["h2", "h3"]
    target = resolve_target(nm, "10.42.3.7:8080")
    assert (target.ip, target.port, [n.name for n in target.nodes]) == (
        IPv4Address("10.42.3.7"), 8080, ["h3"],
    )  # fmt: skip
    assert [n.name for n in resolve_target(nm, "100.64.0.1").nodes] == ["h1"]
    for bad, message in (
        ("nope", "no node, container or service named 'nope'"),
        ("10.99.0.1", "10.99.0.1 is no mesh IP and in no host's container subnet"),
        ("10.42.2.5:99999", "bad port in '10.42.2.5:99999'"),
    ):
        with pytest.raises(UnknownTarget, match=message):
            resolve_target(nm, bad)


async def test_a_target_checks_only_its_hosts_and_probes_its_port() -> None:
    web = Container(id="c1", node_id="n2", name="web", ip=IPv4Address("10.42.2.5"))
    r = await rig(netmap(1, [2, 3]).model_copy(update={"containers": (web,)}))
    report = await r.doctor("10.42.2.5:8080")
    assert [c.subject for c in report.checks if c.code == "peer"] == ["h2"]
    check = only_failure(report, "target", "10.42.2.5:8080")
    assert check.summary == "TCP 10.42.2.5:8080: Connection refused"
    r.probe.tcp_open.add((IPv4Address("10.42.2.5"), 8080))
    assert failed(await r.doctor("10.42.2.5:8080")) == []
    report = await r.doctor("web")
    target = next(c for c in report.checks if c.code == "target")
    assert target.summary == "10.42.2.5 answers in 0.5 ms"


# -- DNS inside a container ---------------------------------------------------------------------


async def test_a_container_resolves_a_remote_containers_name_through_dockers_resolver() -> None:
    r = await rig(with_containers(LOCAL, REMOTE))
    check = next(c for c in (await r.doctor()).checks if c.code == "container-dns")
    assert (check.verdict, check.summary) == (
        Verdict.OK, "db resolves to 10.42.2.2 inside container app",
    )  # fmt: skip


async def test_port_53_dropped_from_the_containers_is_named_while_the_responder_answers() -> None:
    r = await rig(with_containers(LOCAL, REMOTE))
    r.probe.containers_dns_blocked = True
    check = only_failure(await r.doctor(), "container-dns")
    assert check.summary == "db inside container app: no answer (no answer within 2s)"
    assert check.cause is not None and check.fix is not None
    assert "the responder answers this host, but Docker's resolver in app" in check.cause
    assert "UDP 53 from 10.42.1.0/24" in check.fix


async def test_a_silent_responder_fails_container_dns_too_and_says_which_comes_first() -> None:
    r = await rig(with_containers(LOCAL, REMOTE))
    r.probe.dns_blocked = True
    report = await r.doctor()
    assert {c.code for c in failed(report)} == {"dns-responder", "container-dns"}
    check = next(c for c in report.checks if c.code == "container-dns")
    assert check.cause == "the responder at 100.64.0.1:53 does not answer (see dns-responder)"


async def test_without_a_remote_container_the_hosts_own_name_is_asked() -> None:
    r = await rig(with_containers(LOCAL))
    check = next(c for c in (await r.doctor()).checks if c.code == "container-dns")
    assert check.summary == "h1.shoal resolves to 100.64.0.1 inside container app"


async def test_no_container_or_a_stopped_one_is_not_asked() -> None:
    r = await rig(with_containers(REMOTE))
    check = next(c for c in (await r.doctor()).checks if c.code == "container-dns")
    assert check.verdict is Verdict.SKIP
    r = await rig(with_containers(LOCAL, REMOTE))
    r.probe.stopped.add("c1")
    check = next(c for c in (await r.doctor()).checks if c.code == "container-dns")
    assert (check.verdict, check.summary) == (
        Verdict.SKIP, "container app is not running: not asked",
    )  # fmt: skip


def test_a_wrong_or_foreign_answer_is_named() -> None:
    question = container_question(with_containers(LOCAL, REMOTE))
    assert question is not None
    mesh = IPv4Address("100.64.0.1")
    stale = check_container_dns(
        question, DnsAnswer("NOERROR", addresses=("10.42.2.9",)), mesh, responder_ok=True
    )
    assert stale.summary == "db inside container app: NOERROR, 10.42.2.9"
    assert stale.cause is not None and "the netmap says 10.42.2.2" in stale.cause
    foreign = check_container_dns(question, DnsAnswer("NXDOMAIN"), mesh, responder_ok=True)
    assert foreign.cause is not None
    assert foreign.cause.startswith("Docker's resolver answered NXDOMAIN for db")


# -- the policy verdict for a target ------------------------------------------------------------

POLICY = """\
rules:
  - from: node:h1
    to: service:db
    ports: 5432
"""


def with_policy(*containers: Container) -> NetworkMap:
    policy = parse(POLICY, "mesh.yaml").model_copy(update={"revision": 2})
    return with_containers(*containers).model_copy(update={"policy": policy})


async def test_a_denied_target_names_the_policy_and_how_to_test_it() -> None:
    db = REMOTE.model_copy(update={"service": "db", "project": "app"})
    r = await rig(with_policy(LOCAL, db))
    report = await r.doctor("10.42.2.2:8080")
    check = next(c for c in report.checks if c.code == "policy")
    assert check.verdict is Verdict.FAIL
    assert check.summary == "tcp 100.64.0.1 → 10.42.2.2:8080: denied by h2's firewall"
    assert check.cause == "no rule of mesh.yaml r2 allows it: h2 drops new flows no rule allows"
    assert check.fix is not None
    assert "`shoal policy test --from h1 --to db:8080` explains the verdict" in check.fix
    r.probe.tcp_open.add((IPv4Address("10.42.2.2"), 5432))
    report = await r.doctor("10.42.2.2:5432")
    check = next(c for c in report.checks if c.code == "policy")
    assert (check.verdict, check.summary) == (
        Verdict.OK, "tcp 100.64.0.1 → 10.42.2.2:5432: allowed by mesh.yaml:2",
    )  # fmt: skip


async def test_without_a_policy_the_default_decides() -> None:
    r = await rig(with_containers(LOCAL, REMOTE))
    check = next(c for c in (await r.doctor("db")).checks if c.code == "policy")
    assert check.summary == "icmp 100.64.0.1 → 10.42.2.2: no policy: containers reach containers"
    check = next(c for c in (await r.doctor("100.64.0.2:22")).checks if c.code == "policy")
    assert check.verdict is Verdict.FAIL
    assert check.cause is not None
    assert check.cause.startswith("no policy: hosts' own services are closed")
    check = next(c for c in (await r.doctor("app")).checks if c.code == "policy")
    assert (
        check.summary
        == "icmp 100.64.0.1 → 10.42.1.2: same host, the mesh policy does not filter it"
    )
