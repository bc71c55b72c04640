"""NAT traversal in the lab: hosts behind easy (full-cone), shared, symmetric NATs and on the
public underlay learn their endpoints and find a direct path wherever one exists; symmetric
NATs on both sides go through the server's UDP relay; a host without UDP goes through the
server's relay over TCP/443 to every other host, and `shoal status` says so. Then the NATs
change under the running mesh: a rebinding is followed within 5 s, a relayed pair whose UDP
opens moves to direct losing at most a second of pings, and standalone relays announced by
the server take over from each other when one is killed.

Lab (its own; the session lab has no NATs): h1 public, h2 and h3 behind one easy NAT "home",
h4 behind its own easy NAT, h5 and h6 each behind a symmetric ("hard") NAT, h7 behind a
firewall that passes only TCP to web ports (and the lab server's control port).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from shoal.control.relayhost import load_or_create_identity
from shoal.lab import Lab, LabHost, sweep
from shoal.lab.lab import run
from shoal.lab.nat import NatKind, parse_nat, reconfigure
from shoal.lab.procs import NETNS_DIR
from tests.e2e.runbook import SHOAL, admin, host_ping, ping, shoal, status, up, wait_until

pytestmark = pytest.mark.e2e

WG_PORT = 51820


@pytest.fixture(scope="module")
def natlab() -> Iterator[Lab]:
    sweep()
    nat = parse_nat("h2=easy:home,h3=easy:home,h4=easy,h5=hard,h6=hard,h7=udp-blocked")
    lab = Lab.create(f"x{os.getpid()}", hosts=7, nat=nat)
    try:
        lab.start_server()
        token = lab.create_token(reusable=True)
        for host in lab.hosts:
            up(lab, host, token)
        yield lab
    finally:
        lab.destroy()


def nodes(lab: Lab) -> dict[str, dict[str, Any]]:
    out = admin(lab, "nodes", "--json").stdout
    return {n["name"]: n for n in json.loads(out)}


def endpoints(lab: Lab, name: str) -> set[tuple[str, str | None]]:
    return {(f"{e['host']}:{e['port']}", e.get("kind")) for e in nodes(lab)[name]["endpoints"]}


def peer(host: LabHost, name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(p for p in status(host)["peers"] if p["name"] == name)
    return found


def public_of(lab: Lab, name: str) -> str:
    return next(ep for ep, kind in endpoints(lab, name) if kind in ("public", "symmetric"))


def test_each_host_learns_its_endpoints_from_its_wireguard_port(natlab: Lab) -> None:
    h1, h4 = natlab.host("h1"), natlab.host("h4")
    wait_until("h1 and h4 reported", lambda: len(endpoints(natlab, "h4")) == 2, timeout=60)
    assert endpoints(natlab, "h1") == {(f"{h1.underlay_ip}:{WG_PORT}", "public")}
    # An easy NAT keeps the port: its outside mapping is the router's address, same port.
    assert endpoints(natlab, "h4") == {
        (f"{h4.underlay_ip}:{WG_PORT}", "lan"),
        (f"{h4.public_ip}:{WG_PORT}", "public"),
    }
    # Behind one NAT, both hosts share its address, and only one keeps port 51820.
    wait_until("h2, h3 reported", lambda: all(len(endpoints(natlab, h)) == 2 for h in ("h2", "h3")))
    shared = {public_of(natlab, h) for h in ("h2", "h3")}
    assert {ep.split(":")[0] for ep in shared} == {str(natlab.host("h2").public_ip)}
    assert len(shared) == 2
    wait_until("h5 reported", lambda: len(endpoints(natlab, "h5")) == 2, timeout=60)
    assert {kind for _ep, kind in endpoints(natlab, "h5")} == {"lan", "symmetric"}


def wait_path(host: LabHost, name: str, path: str, timeout: float = 60) -> dict[str, Any]:
    wait_until(
        f"{host.name} -> {name} path {path}",
        lambda: peer(host, name)["path"] == path and host_ping(host, peer(host, name)["mesh_ip"]),
        timeout=timeout,
    )
    return peer(host, name)


def test_easy_to_easy_goes_direct_through_both_nats(natlab: Lab) -> None:
    h2, h4 = natlab.host("h2"), natlab.host("h4")
    p = wait_path(h2, "h4", "public")
    assert p["endpoint"] == public_of(natlab, "h4")
    p = wait_path(h4, "h2", "public")
    assert p["endpoint"] == public_of(natlab, "h2")


def test_two_hosts_behind_one_nat_find_each_other_on_the_inside(natlab: Lab) -> None:
    h2, h3 = natlab.host("h2"), natlab.host("h3")
    assert wait_path(h2, "h3", "lan")["endpoint"] == f"{h3.underlay_ip}:{WG_PORT}"
    assert wait_path(h3, "h2", "lan")["endpoint"] == f"{h2.underlay_ip}:{WG_PORT}"


def test_easy_to_public_goes_direct_on_the_mapping_the_probe_saw(natlab: Lab) -> None:
    h1, h4 = natlab.host("h1"), natlab.host("h4")
    wait_path(h4, "h1", "direct")
    p = wait_path(h1, "h4", "public")
    # WireGuard on h1 sees h4's packets come from exactly the mapping h4's probe reported:
    # the probe from WireGuard's port shares WireGuard's NAT mapping.
    assert p["endpoint"] == public_of(natlab, "h4") == f"{h4.public_ip}:{WG_PORT}"


def test_public_to_hard_goes_direct_once_the_hard_side_reaches_out(natlab: Lab) -> None:
    h1, h5 = natlab.host("h1"), natlab.host("h5")
    wait_path(h5, "h1", "direct")
    p = wait_path(h1, "h5", "public")
    # h1 follows h5's packets to the port h5's NAT gave this destination.
    assert p["endpoint"].split(":")[0] == str(h5.public_ip)


def test_hard_to_hard_goes_through_the_servers_relay_and_says_why(natlab: Lab) -> None:
    h5, h6 = natlab.host("h5"), natlab.host("h6")

    def relayed(a: LabHost, b: str) -> bool:
        path = str(peer(a, b)["path"])
        return path.startswith("relayed via udp 192.0.2.2:") and path.endswith(
            "(symmetric NAT on both sides)"
        )

    wait_until("h5 <-> h6 relayed", lambda: relayed(h5, "h6") and relayed(h6, "h5"), timeout=60)
    wait_until("h5 pings h6", lambda: host_ping(h5, peer(h5, "h6")["mesh_ip"]), timeout=30)
    assert host_ping(h6, peer(h6, "h5")["mesh_ip"])
    # The endpoint each side uses is a port on the server: WireGuard stays on it.
    assert peer(h5, "h6")["endpoint"].startswith("192.0.2.2:")


def test_the_relay_moves_only_ciphertext(natlab: Lab) -> None:
    h5 = natlab.host("h5")
    wait_until("h5 -> h6 relayed", lambda: str(peer(h5, "h6")["path"]).startswith("relayed"))
    relay_port = str(peer(h5, "h6")["endpoint"]).split(":")[1]
    dst = peer(h5, "h6")["mesh_ip"]
    pcap = natlab.dir / "relay.pcap"
    capture = subprocess.Popen(
        ["nsenter", f"--net={NETNS_DIR / natlab.server_netns}", "tcpdump", "-i", "eth0", "-U",
         "-n", "-w", str(pcap), "udp"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    marker = f"shoal-relay-marker-{os.getpid()}"
    send = (
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"for _ in range(5): s.sendto(b'{marker}', ('{dst}', 9))"
    )
    try:
        wait_until("tcpdump to start", lambda: pcap.exists() and pcap.stat().st_size > 0, 10)
        h5.exec([sys.executable, "-c", send])
        assert host_ping(h5, dst)

        def relayed_packets() -> int:
            out = subprocess.run(
                ["tcpdump", "-n", "-r", str(pcap), f"udp port {relay_port}"],
                capture_output=True, text=True, check=False,
            ).stdout  # fmt: skip
            return len(out.splitlines())

        wait_until("the relayed packets in the capture", lambda: relayed_packets() >= 7, 10)
    finally:
        capture.send_signal(signal.SIGINT)
        capture.wait(10)
    assert marker.encode() not in pcap.read_bytes()


def tcp_relayed(host: LabHost, name: str) -> bool:
    blocked = "h7" if "h7" in (host.name, name) else "?"
    return str(peer(host, name)["path"]) == (
        f"relayed via tcp 192.0.2.2:443 (UDP blocked at {blocked})"
    )


def reach_over_tcp_relay(h7: LabHost, other: LabHost) -> None:
    wait_until(f"h7 -> {other.name} over tcp", lambda: tcp_relayed(h7, other.name), timeout=60)
    wait_until(f"{other.name} -> h7 over tcp", lambda: tcp_relayed(other, "h7"), timeout=60)
    other.run_container(f"c{other.name}")
    dst = other.container_ip(f"c{other.name}")
    wait_until(f"c7 pings c{other.name}", lambda: ping(h7, "c7", dst), timeout=30)
    assert ping(other, f"c{other.name}", h7.container_ip("c7"))


def test_udp_blocked_reaches_every_kind_of_host_over_the_tcp_relay(natlab: Lab) -> None:
    h7 = natlab.host("h7")
    # Its probes never come back: it reports its own address, unverified, and the relay.
    expected = {(f"{h7.underlay_ip}:{WG_PORT}", None), ("192.0.2.2:443", "relay")}
    wait_until("h7 reported", lambda: endpoints(natlab, "h7") == expected, timeout=30)
    h7.run_container("c7")
    for name in ("h1", "h4", "h5"):  # public, easy and hard NATs on the other side
        reach_over_tcp_relay(h7, natlab.host(name))
    # WireGuard's endpoint for a relayed peer is the agent's loopback socket for it; status
    # shows the relay as the endpoint and the socket only as the relay's local end.
    p = peer(h7, "h1")
    assert p["endpoint"] == "192.0.2.2:443"
    assert str(p["relay"]["local"]).startswith("127.0.0.1:")


def test_what_crosses_the_tcp_relay_is_wireguard_ciphertext(natlab: Lab) -> None:
    h7 = natlab.host("h7")
    wait_until("h7 -> h1 relayed", lambda: tcp_relayed(h7, "h1"), timeout=60)
    dst = peer(h7, "h1")["mesh_ip"]
    # On h7's loopback: WireGuard's datagrams to the agent, before TLS wraps them again.
    pcap = natlab.dir / "tcp-relay.pcap"
    capture = subprocess.Popen(
        ["nsenter", f"--net={NETNS_DIR / h7.netns}", "tcpdump", "-i", "lo", "-U", "-n", "-w",
         str(pcap), "udp"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    marker = f"shoal-tcp-relay-marker-{os.getpid()}"
    send = (
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"for _ in range(5): s.sendto(b'{marker}', ('{dst}', 9))"
    )
    try:
        wait_until("tcpdump to start", lambda: pcap.exists() and pcap.stat().st_size > 0, 10)
        h7.exec([sys.executable, "-c", send])
        assert host_ping(h7, dst)

        def captured() -> int:
            out = subprocess.run(
                ["tcpdump", "-n", "-r", str(pcap), "udp"],
                capture_output=True, text=True, check=False,
            ).stdout  # fmt: skip
            return len(out.splitlines())

        wait_until("the relayed datagrams in the capture", lambda: captured() >= 7, 10)
    finally:
        capture.send_signal(signal.SIGINT)
        capture.wait(10)
    assert marker.encode() not in pcap.read_bytes()


# Per pair: (path in one word, the relay's transport or None, the peer's NAT, why relayed).
EXPECTED: dict[tuple[str, str], tuple[str, str | None, str, str | None]] = {
    ("h2", "h3"): ("direct", None, "easy", None),  # behind one NAT
    ("h2", "h4"): ("direct", None, "easy", None),
    ("h4", "h1"): ("direct", None, "none", None),
    ("h1", "h4"): ("direct", None, "easy", None),
    ("h1", "h5"): ("direct", None, "hard", None),
    ("h5", "h1"): ("direct", None, "none", None),
    ("h5", "h6"): ("relayed", "udp", "hard", "symmetric NAT on both sides"),
    ("h6", "h5"): ("relayed", "udp", "hard", "symmetric NAT on both sides"),
    ("h7", "h1"): ("relayed", "tcp", "none", "UDP blocked at h7"),
    ("h1", "h7"): ("relayed", "tcp", "udp-blocked", "UDP blocked at h7"),
    ("h5", "h7"): ("relayed", "tcp", "udp-blocked", "UDP blocked at h7"),
}
OWN_NAT = {
    "h1": "none",
    "h2": "easy",
    "h4": "easy",
    "h5": "hard",
    "h6": "hard",
    "h7": "udp-blocked",
}


def shown(host: LabHost, name: str) -> tuple[str, str | None, str, str | None]:
    p = peer(host, name)
    return p["via"], (p["relay"] or {}).get("transport"), p["nat"], p["why"]


def shows(
    host: LabHost, name: str, expected: tuple[str, str | None, str, str | None]
) -> Callable[[], bool]:
    return lambda: shown(host, name) == expected


def test_status_json_shows_each_pairs_path_relay_and_both_nats(natlab: Lab) -> None:
    for (a, b), expected in EXPECTED.items():
        host = natlab.host(a)
        wait_until(f"{a} -> {b}: {expected}", shows(host, b, expected), timeout=60)
        p = peer(host, b)
        # Never the agent's loopback socket as if it were the peer's address.
        assert not str(p["endpoint"]).startswith("127."), (a, b, p)
        if p["relay"] is None:
            assert p["endpoint"] in {ep for ep, _kind in endpoints(natlab, b)} or (
                b == "h5" and str(p["endpoint"]).startswith(str(natlab.host("h5").public_ip))
            ), (a, b, p)
            continue
        # The relays of this lab are the server's own: UDP ports on it, and TCP 443.
        assert p["relay"]["on_server"] is True
        assert p["endpoint"] == p["relay"]["address"]
        assert str(p["endpoint"]).startswith("192.0.2.2:")
        if p["relay"]["transport"] == "tcp":
            assert p["endpoint"] == "192.0.2.2:443"
    for name, nat in OWN_NAT.items():
        assert status(natlab.host(name))["nat"] == nat, name
    # The table says the same: this host's NAT, and the peer's in its own column.
    text = shoal(natlab.host("h5"), "status", "--state-dir", str(natlab.host("h5").state_dir))
    assert "  nat hard (this host" in text.stdout
    (row,) = [line for line in text.stdout.splitlines() if line.startswith("h6 ")]
    assert "relayed via udp 192.0.2.2:" in row and " hard " in row


def netcheck(host: LabHost) -> dict[str, Any]:
    out = shoal(host, "netcheck", "--json", "--state-dir", str(host.state_dir), check=False)
    report: dict[str, Any] = json.loads(out.stdout)
    return report


def test_netcheck_names_each_hosts_nat_and_reachability(natlab: Lab) -> None:
    kinds = {name: netcheck(natlab.host(name)) for name in ("h1", "h4", "h5", "h7")}
    assert {name: r["nat"] for name, r in kinds.items()} == {
        "h1": "none",
        "h4": "easy",
        "h5": "hard",
        "h7": "udp-blocked",
    }
    assert [r["udp"] for r in kinds.values()] == [True, True, True, False]
    # TCP to the server host's 443 passes every NAT (nothing listens there: refused = open).
    assert all(r["tcp_443"]["open"] and r["control"]["open"] for r in kinds.values())
    # The server's TCP relay, reached from behind every kind of NAT, with its connect time.
    assert all(r["relays"][0]["open"] and r["relays"][0]["connect_ms"] for r in kinds.values())
    assert {r["nearest_relay"] for r in kinds.values()} == {"192.0.2.2:443"}
    h4 = kinds["h4"]
    assert h4["mapped"] == [f"{natlab.host('h4').public_ip}:{WG_PORT}"] * 2
    text = shoal(natlab.host("h5"), "netcheck", "--state-dir", str(natlab.host("h5").state_dir))
    assert text.stdout.splitlines()[0].startswith("nat:       hard (symmetric")


# The NATs change under the running mesh from here on: these tests come last in the module.


def router(
    lab: Lab, host: LabHost, kind: NatKind, moved: dict[int, int] | None = None, forget: bool = True
) -> None:
    assert host.router is not None
    ns = lab.router_netns(host.router)
    reconfigure(run, str(NETNS_DIR), ns, kind, moved, forget=forget)


class Pinger:
    """`busybox ping` every 0.1 s from a host, counting what it lost."""

    def __init__(self, host: LabHost, dst: str) -> None:
        self.proc = subprocess.Popen(
            ["nsenter", f"--net={NETNS_DIR / host.netns}", "busybox", "ping", "-i", "0.1", dst],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip

    def stop(self) -> tuple[int, int]:
        """(sent, received)."""
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=10)
        match = re.search(r"(\d+) packets transmitted, (\d+) packets received", out)
        assert match, out
        return int(match.group(1)), int(match.group(2))


def test_nat_rebinding_is_followed_within_5_seconds(natlab: Lab) -> None:
    h1, h4 = natlab.host("h1"), natlab.host("h4")
    dst = peer(h1, "h4")["mesh_ip"]
    wait_path(h1, "h4", "public")
    moved = f"{h4.public_ip}:21820"
    pinger = Pinger(h1, dst)
    try:
        wait_until("pings answered", lambda: host_ping(h1, dst), 10)
        # h4's NAT forgets its mappings and gives WireGuard's port another outside port: h1
        # keeps sending to the old one, which leads nowhere now.
        router(natlab, h4, "easy", {WG_PORT: 21820})
        wait_until("h4 re-probed", lambda: (moved, "public") in endpoints(natlab, "h4"), 10)
        wait_until("h1 reaches h4 again", lambda: host_ping(h1, dst), timeout=10)
    finally:
        sent, received = pinger.stop()
    # One ping every 0.1 s: what was lost is how long h4 was unreachable.
    assert (sent - received) * 0.1 <= 5.0, f"{sent - received} of {sent} pings lost"
    assert peer(h1, "h4")["endpoint"] == moved


def start_relay(lab: Lab, name: str, port: int) -> subprocess.Popen[bytes]:
    """`shoal relay` on the server host's address at `port` (its data dir made already)."""
    env = {**os.environ, "SHOAL_ADMIN_TOKEN": (lab.server_data_dir / "admin.token").read_text()}
    argv = [SHOAL, "relay", "--listen", f"192.0.2.2:{port}", "--data-dir", str(lab.dir / name),
            "--server", str(lab.server_url)]  # fmt: skip
    with (lab.dir / f"{name}.log").open("ab") as log:
        return subprocess.Popen(
            ["nsenter", f"--net={NETNS_DIR / lab.server_netns}", *argv],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip


def tcp_relay_in_use(host: LabHost, name: str) -> str | None:
    """The TCP relay `host` reaches peer `name` through ("ip:port"), None when not relayed."""
    match = re.match(r"relayed via tcp (\S+) ", str(peer(host, name)["path"]))
    return match.group(1) if match else None


def both_via_one_of(h1: LabHost, h7: LabHost, relays: list[str], timeout: float) -> str:
    """Wait until both sides of the pair go through the same one of `relays`; return it."""

    seen: list[str] = []

    def agreed() -> bool:
        used = tcp_relay_in_use(h7, "h1")
        if used not in relays or tcp_relay_in_use(h1, "h7") != used:
            return False
        seen.append(used)
        return True

    wait_until(f"h1 <-> h7 through one of {relays}", agreed, timeout)
    return seen[-1]


def test_standalone_relays_announced_by_the_server_and_failover(natlab: Lab) -> None:
    h1, h7 = natlab.host("h1"), natlab.host("h7")
    # Two `shoal relay`s (ports h7's firewall lets out); the server announces them instead
    # of its own relay.
    ports = {"r1": 443, "r2": 80}
    specs = [
        load_or_create_identity(natlab.dir / name, "192.0.2.2").spec("192.0.2.2", port)
        for name, port in ports.items()
    ]
    natlab.stop_server()
    flags = ["--relay-port", "off", "--relay-at", specs[0], "--relay-at", specs[1]]
    natlab.start_server(args=flags)
    relays = {f"192.0.2.2:{port}": start_relay(natlab, name, port) for name, port in ports.items()}
    mesh_ip = peer(h1, "h7")["mesh_ip"]
    try:
        # Which of the two h7 makes its home is not the test's to say: both are as near, and
        # a relay that was not listening yet when h7 first tried it is rightly passed over
        # (a CI run saw h7 settle on the second one).
        home = both_via_one_of(h1, h7, list(relays), 90)
        wait_until("h1 pings h7 via a standalone relay", lambda: host_ping(h1, mesh_ip), 30)
        # Status says which relay: a standalone one now, not the server's.
        wait_until("h7 shows it", lambda: (peer(h7, "h1")["relay"] or {}).get("on_server") is False)
        assert peer(h7, "h1")["relay"]["address"] in relays
        relays[home].kill()
        relays[home].wait(10)
        # Bounded by the waits, not timed: how fast is for a benchmark to say (the move is
        # usually seconds; a loaded CI run took 30.6 s once).
        (other,) = set(relays) - {home}
        both_via_one_of(h1, h7, [other], 60)
        wait_until("h1 pings h7 via the other relay", lambda: host_ping(h1, mesh_ip), 30)
    finally:
        for relay in relays.values():
            relay.kill()
            relay.wait(10)
        natlab.stop_server()
        natlab.start_server()  # its own relay again, for the tests after this one
    wait_until("h1 pings h7 via the server's relay", lambda: host_ping(h1, mesh_ip), 60)


def test_a_relayed_pair_moves_to_direct_when_udp_opens(natlab: Lab) -> None:
    h1, h7 = natlab.host("h1"), natlab.host("h7")
    wait_until("h1 -> h7 over tcp", lambda: tcp_relayed(h1, "h7"), timeout=60)
    pinger = Pinger(h1, peer(h1, "h7")["mesh_ip"])
    try:
        wait_until("pings answered", lambda: host_ping(h1, peer(h1, "h7")["mesh_ip"]), 10)
        # The firewall now lets UDP out (an easy NAT); the relay's TCP stream stays open.
        router(natlab, h7, "easy", forget=False)
        wait_path(h7, "h1", "direct", timeout=30)
        wait_path(h1, "h7", "public", timeout=30)  # and a ping answered over it
    finally:
        sent, received = pinger.stop()
    # At most a second's worth (10 pings) lost in the move.
    assert sent - received <= 10, f"{sent - received} of {sent} pings lost"
