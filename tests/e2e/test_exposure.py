"""What the mesh exposes, tried the way an attacker or a careless neighbour would: only
WireGuard carries the mesh, hosts' own services are closed to it (ICMP aside), the DNS
responder answers only its own host and containers, and a container cannot forge its source
(neither another host's or subnet's address nor its neighbour's on the same bridge).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv4Network

import pytest

from shoal.lab import IMAGE, Lab, LabHost, LabOutsider
from shoal.lab.lab import listening
from tests.e2e.runbook import host_ping, ping, shoal, start_web, status, up, wait_until, whoami

pytestmark = pytest.mark.e2e

# The lab server's pools (its defaults).
POOLS = (IPv4Network("10.42.0.0/16"), IPv4Network("100.64.0.0/10"))
HOST_PORT = 9090  # a host service on 0.0.0.0, as a careless operator would leave it

# Prints "open" or "closed: <reason>" for a TCP connect to argv[1]:argv[2].
_TCP_PROBE = textwrap.dedent(
    """
    import socket, sys
    try:
        socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()
        print("open")
    except OSError as exc:
        print("closed:", exc)
    """
)
# Prints the rcode of an A query for argv[3] to argv[1] over argv[2] (udp|tcp), or "silent".
_DNS_PROBE = textwrap.dedent(
    """
    import sys
    import dns.exception, dns.message, dns.query, dns.rcode
    query = dns.message.make_query(sys.argv[3], "A")
    ask = dns.query.udp if sys.argv[2] == "udp" else dns.query.tcp
    try:
        print(dns.rcode.to_text(ask(query, sys.argv[1], timeout=2).rcode()))
    except (dns.exception.Timeout, OSError) as exc:
        print("silent:", exc)
    """
)

# Sends three ICMP echo requests from argv[1] to argv[2] with the IP header written by hand (a
# raw socket: what any container may do with Docker's default NET_RAW capability).
_FORGE = textwrap.dedent(
    """
    import socket, struct, sys
    def checksum(data):
        total = sum(struct.unpack(f"!{len(data) // 2}H", data))
        total = (total >> 16) + (total & 0xFFFF)
        return ~(total + (total >> 16)) & 0xFFFF
    icmp = struct.pack("!BBHHH", 8, 0, 0, 0x5348, 1) + b"forged!!"
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    src, dst = socket.inet_aton(sys.argv[1]), socket.inet_aton(sys.argv[2])
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0, 0, 64, 1, 0, src, dst)
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    for _ in range(3):
        sock.sendto(header + icmp, (sys.argv[2], 0))
    """
)

Run = Callable[[list[str]], str]


def on_host(host: LabHost) -> Run:
    return lambda argv: host.exec(argv, check=False, timeout=30).stdout.strip()


def on_outsider(outsider: LabOutsider) -> Run:
    return lambda argv: outsider.exec(argv, check=False, timeout=30).stdout.strip()


def tcp_open(run: Run, ip: IPv4Address, port: int) -> bool:
    return run([sys.executable, "-c", _TCP_PROBE, str(ip), str(port)]) == "open"


def dns_rcode(run: Run, ip: IPv4Address, transport: str, name: str = "h1.shoal") -> str:
    return run([sys.executable, "-c", _DNS_PROBE, str(ip), transport, name])


def container_tcp_open(host: LabHost, container: str, ip: IPv4Address, port: int) -> bool:
    """busybox nc from inside `container`: exit 0 when the connection opens within 2 s."""
    argv = ["nc", "-w", "2", str(ip), str(port)]
    return host.container_exec(container, argv, check=False, timeout=15).returncode == 0


def mesh_ip(host: LabHost) -> IPv4Address:
    return IPv4Address(status(host)["mesh_ip"])


@pytest.fixture(scope="module")
def hosts(lab: Lab, join_token: str) -> Iterator[tuple[LabHost, LabHost]]:
    """h1 and h2 in the mesh, each with a web container (`exp-<host>`, port 8080) and a
    server on 0.0.0.0:9090 of the host itself."""
    h1, h2 = lab.hosts[:2]
    servers: list[subprocess.Popen[bytes]] = []
    for host in (h1, h2):
        up(lab, host, join_token)  # "already running" when another module joined it
        start_web(host, f"exp-{host.name}")
        server = host.popen(
            [sys.executable, "-m", "http.server", str(HOST_PORT), "--bind", "0.0.0.0"],
            log=host.dir / "exposure-http.log",
        )
        servers.append(server)
        wait_until(f"{host.name}:{HOST_PORT}", lambda s=server: listening(s.pid, HOST_PORT))
    try:
        yield h1, h2
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=10)
        for host in (h1, h2):
            host.docker("rm", "-f", f"exp-{host.name}", check=False)


@pytest.fixture(scope="module")
def outsider(lab: Lab, hosts: tuple[LabHost, LabHost]) -> LabOutsider:
    """A machine on the underlay, not in the mesh, routing both pools via h1."""
    return lab.add_outsider(via=hosts[0], routes=POOLS)


def test_a_non_member_on_the_underlay_reaches_nothing_on_the_mesh(
    hosts: tuple[LabHost, LabHost], outsider: LabOutsider
) -> None:
    h1, _ = hosts
    run = on_outsider(outsider)
    web, mesh = h1.container_ip(f"exp-{h1.name}"), mesh_ip(h1)
    # The underlay itself works: h1 answers on its underlay address, its 0.0.0.0 server too.
    alive = outsider.exec(["busybox", "ping", "-c", "1", "-W", "1", str(h1.underlay_ip)])
    assert alive.returncode == 0
    assert tcp_open(run, h1.underlay_ip, HOST_PORT)
    # Through h1's underlay address, nothing of the mesh: no container, no mesh IP.
    for target in (web, mesh):
        result = outsider.exec(["busybox", "ping", "-c", "2", "-W", "1", str(target)], check=False)
        assert result.returncode != 0, f"{target} answered a ping from the underlay"
    assert not tcp_open(run, web, 8080)
    assert not tcp_open(run, mesh, HOST_PORT)
    for transport in ("udp", "tcp"):
        assert dns_rcode(run, mesh, transport).startswith("silent"), transport


def test_host_services_are_closed_to_the_mesh_but_containers_are_not(
    hosts: tuple[LabHost, LabHost],
) -> None:
    h1, h2 = hosts
    c1, c2 = f"exp-{h1.name}", f"exp-{h2.name}"
    web2, mesh2 = h2.container_ip(c2), mesh_ip(h2)
    # Containers keep reaching containers on other hosts, with their real source address.
    wait_until("h1's container to reach h2's", lambda: ping(h1, c1, web2))
    assert whoami(h1, c1, web2) == str(h1.container_ip(c1))
    assert container_tcp_open(h1, c1, web2, 8080)
    # h2's server on 0.0.0.0 is closed over the mesh, to containers and to other hosts.
    assert not container_tcp_open(h1, c1, mesh2, HOST_PORT)
    assert not tcp_open(on_host(h1), mesh2, HOST_PORT)
    # ... while h2 itself and its own containers still reach it.
    assert tcp_open(on_host(h2), mesh2, HOST_PORT)
    assert container_tcp_open(h2, c2, mesh2, HOST_PORT)
    # ICMP stays open: containers, hosts and `shoal ping` reach the other host's mesh IP.
    assert ping(h1, c1, mesh2)
    assert host_ping(h1, str(mesh2))
    assert shoal(h1, "ping", h2.name, "--state-dir", str(h1.state_dir), check=False).returncode == 0


def test_the_dns_responder_answers_only_its_own_host_and_containers(
    hosts: tuple[LabHost, LabHost],
) -> None:
    h1, h2 = hosts
    mesh2 = mesh_ip(h2)
    assert dns_rcode(on_host(h2), mesh2, "udp") == "NOERROR"  # h2 asks itself
    for transport in ("udp", "tcp"):  # h1 asks h2's responder over the mesh
        assert dns_rcode(on_host(h1), mesh2, transport).startswith("silent"), transport
    # h2's containers still get names (their queries are redirected to h2's own responder).
    found = h2.container_exec(f"exp-{h2.name}", ["nslookup", "-type=a", "h1.shoal"], check=False)
    assert str(mesh_ip(h1)) in found.stdout


def test_a_container_cannot_send_from_a_forged_address(
    hosts: tuple[LabHost, LabHost], outsider: LabOutsider
) -> None:
    """A container with NET_ADMIN gives itself other addresses and pings from them: a peer's
    container subnet, an address outside every pool. None of it leaves h1 (the underlay would
    get it unmasqueraded, since only the host's own subnet is NATed), while its own address
    still does. h1's own addresses (mesh IP, bridge gateway), which peers would accept from
    h1, never leave either: the kernel drops a local source arriving on the bridge."""
    h1, h2 = hosts
    web2 = h2.container_ip(f"exp-{h2.name}")
    forged = (IPv4Address("198.51.100.7"), IPv4Address("10.42.250.7"))
    local = (mesh_ip(h1), IPv4Network(status(h1)["subnet"]).network_address + 1)
    name = "exp-forger"
    h1.run_container(name, network="shoal", image=IMAGE, options=("--cap-add", "NET_ADMIN"))
    try:
        own = h1.container_ip(name)
        for src in (*forged, *local):
            h1.container_exec(name, ["ip", "addr", "add", f"{src}/32", "dev", "eth0"])

        def pings(dst: IPv4Address, sources: tuple[IPv4Address, ...]) -> Callable[[], None]:
            def send() -> None:
                for src in sources:
                    argv = ["ping", "-c", "2", "-W", "1", "-I", str(src), str(dst)]
                    h1.container_exec(name, argv, check=False)

            return send

        on_underlay = captured_sources(
            outsider.netns, "eth0", outsider.ip, pings(outsider.ip, (own, *forged))
        )
        assert h1.underlay_ip in on_underlay  # the honest ping arrived (masqueraded)
        assert not set(forged) & on_underlay, on_underlay
        on_h2 = captured_sources(h2.netns, "shoal0", web2, pings(web2, (own, *forged, *local)))
        assert own in on_h2
        assert not (set(forged) | set(local)) & on_h2, on_h2
    finally:
        h1.docker("rm", "-f", name, check=False)


def test_a_container_cannot_send_from_a_neighbours_address(
    hosts: tuple[LabHost, LabHost],
) -> None:
    """A container with no extra capability writes IP headers by hand: echo requests to a
    container on h2 from its neighbour's address (the web container beside it on h1) never
    leave h1; the same packets from its own address arrive."""
    h1, h2 = hosts
    web2 = h2.container_ip(f"exp-{h2.name}")
    neighbour = h1.container_ip(f"exp-{h1.name}")
    name = "exp-spoofer"
    h1.run_container(name, network="shoal", image=IMAGE)
    try:
        own = h1.container_ip(name)

        def bound() -> bool:
            listed = h1.exec(["nft", "list", "set", "bridge", "shoal", "bound"], check=False)
            return f"{own} . " in listed.stdout and f"{neighbour} . " in listed.stdout

        wait_until("h1 to bind both containers to their bridge ports", bound)

        def forge() -> None:
            pid = str(h1.container_pid(name))
            for src in (neighbour, own):
                argv = ["nsenter", "-t", pid, "-n", sys.executable, "-c", _FORGE]
                subprocess.run([*argv, str(src), str(web2)], check=True, timeout=30)
            # An answered ping on the same path: what was sent before it has arrived.
            assert ping(h1, name, web2)

        on_h2 = captured_sources(h2.netns, "shoal0", web2, forge)
        assert own in on_h2, on_h2  # the raw socket works: its own address gets through
        assert neighbour not in on_h2, on_h2
    finally:
        h1.docker("rm", "-f", name, check=False)


def captured_sources(
    netns: str, interface: str, dst: IPv4Address, action: Callable[[], object]
) -> set[IPv4Address]:
    """Source addresses of the ICMP echo requests to `dst` arriving on `interface` of network
    namespace `netns` while `action` runs (only to `dst`: agents ping each other's mesh IPs
    for their reports, from their own)."""
    capture = subprocess.Popen(
        [
            "nsenter",
            f"--net=/var/run/netns/{netns}",
            "tcpdump",
            "-l",
            "-n",
            "-i",
            interface,
            f"icmp[icmptype] == icmp-echo and dst host {dst}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert capture.stderr is not None
        banner = ""
        while "listening on" not in banner:  # tcpdump says so once it captures
            line = capture.stderr.readline()
            assert line, f"tcpdump exited: {banner}"
            banner += line
        action()
    finally:
        capture.terminate()
        out, _ = capture.communicate(timeout=10)
    # "12:00:00.000000 IP 10.42.1.5 > 10.42.2.3: ICMP echo request, ..."
    return {IPv4Address(line.split()[2]) for line in out.splitlines() if " IP " in line}


def test_the_agent_restores_a_flushed_firewall(
    hosts: tuple[LabHost, LabHost], outsider: LabOutsider
) -> None:
    """Someone deletes shoal's table and flushes its iptables chain on h1: the agent's periodic
    resync (30 s) puts both back, and the mesh is closed to the underlay again."""
    h1, h2 = hosts
    c1, web2 = f"exp-{h1.name}", h2.container_ip(f"exp-{h2.name}")
    h1.exec(["nft", "delete", "table", "inet", "shoal"])
    h1.exec(["iptables", "-F", "SHOAL-FORWARD"])

    def restored() -> bool:
        table = h1.exec(["nft", "list", "table", "inet", "shoal"], check=False)
        return table.returncode == 0 and ping(h1, c1, web2)

    wait_until("the agent to restore h1's firewall", restored, timeout=45)
    assert not tcp_open(on_outsider(outsider), mesh_ip(h1), HOST_PORT)
