"""What each part of shoal's firewall costs per packet, measured apart (issue 14).

`python -m benchmarks.dataplane.nfcost [--rounds N] [--copies K] [--seconds S]` (root; wrap it
in `flock /tmp/shoal-bench.lock`). The parity runs see shoal's firewall as a whole, through
wireguard-go and Docker, but not its parts: each moves a run by less than a run varies. This
takes the data path out: no Docker, no WireGuard, three network namespaces.

    container  --veth--  [ shoal-br0 ]  host  [ shoal0 ]  --veth--  peer
                                         host  [ underlay ] --veth--  peer

The host forwards between a bridge with one container port and a veth named like the tunnel;
the tables loaded are shoal's own, rendered by `shoal.firewall` for this topology. Traffic is
iperf3 UDP, 64-byte datagrams at full rate: the sender's core is busy, and the forwarding
runs on it (a veth hands a packet to its peer in the sender's softirq), so the time per packet
sent is the path's cost per packet.

A part's cost is amplified: its tables are loaded `--copies` times under distinct names, each
copy its own base chains at the same hooks, and (time per packet with K copies - without) / K
is what one copy costs a packet, the hook call included. Rounds alternate the order of the
parts. The caches are hot here: on a path that also runs wireguard-go and two iperf3 processes
a part costs more, so these figures are each part's share, not the whole of it.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from benchmarks.dataplane.probes import serve_iperf, stop
from benchmarks.dataplane.publish import add_arguments, publish
from benchmarks.dataplane.render import nfcost_md
from benchmarks.dataplane.results import NfCost, NfCostPart
from benchmarks.dataplane.systems import SHOAL_BRIDGE, SHOAL_IF
from benchmarks.log import progress
from shoal.firewall import antispoof, nft
from shoal.lab import LabError
from shoal.plan.hostconfig import FirewallConfig

CONTAINER, HOST, PEER = "shoal-nfc-container", "shoal-nfc-host", "shoal-nfc-peer"
PORT_NAME = "vethnfc0"  # the container's bridge port
UNDERLAY = "underlay0"
WG_PORT = 51820
LOCAL = IPv4Network("10.1.0.0/24")
CONTAINER_IP, GATEWAY = IPv4Address("10.1.0.2"), IPv4Address("10.1.0.1")
HOST_MESH_IP, PEER_MESH_IP = IPv4Address("10.2.0.1"), IPv4Address("10.2.0.2")
HOST_UNDERLAY_IP, PEER_UNDERLAY_IP = IPv4Address("192.168.77.1"), IPv4Address("192.168.77.2")
# Conntrack on in the host, as Docker's NAT has it on every Docker host: the baseline is a
# host with no table of shoal's, not a host without conntrack.
CONNTRACK_ON = (
    "table inet nfcost_conntrack {\n\tchain output {\n"
    "\t\ttype filter hook output priority filter; policy accept;\n"
    "\t\tct state invalid drop\n\t}\n}\n"
)


@dataclass(frozen=True)
class Flow:
    """One direction of traffic: where iperf3's server and client run, and to what."""

    name: str
    server: str
    client: str
    address: IPv4Address
    port: int


FLOWS = {
    "out": Flow("container → mesh", PEER, CONTAINER, PEER_MESH_IP, 5201),
    "in": Flow("mesh → container", CONTAINER, PEER, CONTAINER_IP, 5201),
    "wireguard": Flow("underlay → WireGuard's port", HOST, PEER, HOST_UNDERLAY_IP, WG_PORT),
}


def firewall_config() -> FirewallConfig:
    return FirewallConfig(
        mesh_interface=SHOAL_IF,
        bridge=SHOAL_BRIDGE,
        local_subnet=LOCAL,
        container_pool=IPv4Network("10.1.0.0/16"),
        mesh_pool=IPv4Network("10.2.0.0/16"),
        dns_address=HOST_MESH_IP,
        local_containers=(CONTAINER_IP,),
        wireguard_port=WG_PORT,
    )


def _inet() -> str:
    return nft.render(firewall_config())


def _bridge() -> str:
    return antispoof.render(antispoof.bindings([CONTAINER_IP], {PORT_NAME: (CONTAINER_IP,)}))


def _hook_only() -> str:
    return (
        "table inet hook_only {\n\tchain forward {\n"
        "\t\ttype filter hook forward priority filter; policy accept;\n\t}\n}\n"
    )


@dataclass(frozen=True)
class Part:
    """A part of shoal's firewall and the flow whose packets meet it."""

    name: str
    description: str
    flow: str  # key of FLOWS
    tables: Callable[[], str]  # `nft -f` text of one copy


PARTS = (
    Part("bridge", "`bridge shoal`: prerouting, a bound port's frame", "out", _bridge),
    Part("forward-out", "`inet shoal`: forward, container → mesh, established", "out", _inet),
    Part("forward-in", "`inet shoal`: forward, mesh → container, established", "in", _inet),
    Part("input", "`inet shoal`: input, a WireGuard datagram", "wireguard", _inet),
    Part("hook", "an empty base chain at forward: the hook call alone", "out", _hook_only),
)

_TABLE = re.compile(r"^table (\w+) (\S+) \{", re.M)


def renamed_copies(tables: str, k: int) -> str:
    """`tables` k times, each table renamed `<name><i>`: k sets of base chains at the same
    hooks, each of which every packet meets."""
    return "".join(_TABLE.sub(rf"table \1 \g<2>{i} {{", tables) for i in range(k))


def per_copy(with_copies: float, without: float, k: int) -> float:
    return (with_copies - without) / k


def _ns(
    ns: str, argv: list[str], stdin: bytes | None = None, timeout: float | None = None
) -> bytes:
    """`argv`'s output, run in network namespace `ns`."""
    cmd = ["ip", "netns", "exec", ns, *argv]
    return subprocess.run(cmd, check=True, capture_output=True, input=stdin, timeout=timeout).stdout


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True)


def _teardown() -> None:
    """The namespaces removed, and whatever still runs in them (an aborted run's iperf3) first."""
    for ns in (CONTAINER, HOST, PEER):
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
        for pid in pids.stdout.split():
            subprocess.run(["kill", "-9", pid], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _veth(a_ns: str, a: str, b_ns: str, b: str) -> None:
    _ip("-n", a_ns, "link", "add", a, "type", "veth", "peer", "name", b, "netns", b_ns)
    _ip("-n", a_ns, "link", "set", a, "up")
    _ip("-n", b_ns, "link", "set", b, "up")


@contextmanager
def topology() -> Iterator[None]:
    """The three namespaces, wired as the module says; removed on the way out, and any left
    by an aborted run removed first."""
    _teardown()
    try:
        for ns in (CONTAINER, HOST, PEER):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", HOST, "link", "add", SHOAL_BRIDGE, "type", "bridge")
        _ip("-n", HOST, "link", "set", SHOAL_BRIDGE, "up")
        _ip("-n", HOST, "addr", "add", f"{GATEWAY}/{LOCAL.prefixlen}", "dev", SHOAL_BRIDGE)
        _veth(HOST, PORT_NAME, CONTAINER, "eth0")
        _ip("-n", HOST, "link", "set", PORT_NAME, "master", SHOAL_BRIDGE)
        _ip("-n", CONTAINER, "addr", "add", f"{CONTAINER_IP}/{LOCAL.prefixlen}", "dev", "eth0")
        _ip("-n", CONTAINER, "route", "add", "default", "via", str(GATEWAY))
        _veth(HOST, SHOAL_IF, PEER, "eth0")
        _ip("-n", HOST, "addr", "add", f"{HOST_MESH_IP}/16", "dev", SHOAL_IF)
        _ip("-n", PEER, "addr", "add", f"{PEER_MESH_IP}/16", "dev", "eth0")
        _ip("-n", PEER, "route", "add", str(LOCAL), "via", str(HOST_MESH_IP))
        _veth(HOST, UNDERLAY, PEER, UNDERLAY)
        _ip("-n", HOST, "addr", "add", f"{HOST_UNDERLAY_IP}/24", "dev", UNDERLAY)
        _ip("-n", PEER, "addr", "add", f"{PEER_UNDERLAY_IP}/24", "dev", UNDERLAY)
        _ns(HOST, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        yield
    finally:
        _teardown()


def load(tables: str) -> None:
    """The host's ruleset replaced by conntrack's switch and `tables`."""
    _ns(HOST, ["nft", "flush", "ruleset"])
    _ns(HOST, ["nft", "-f", "-"], (CONNTRACK_ON + tables).encode())


def ns_per_packet(flow: Flow, seconds: int) -> float:
    """Nanoseconds per datagram iperf3's client sent, at full rate. A flow that lost most of
    what it sent did not take the accept path the part is meant to cost: an error, not a
    figure."""
    srv = serve_iperf(["ip", "netns", "exec", flow.server], flow.port, flow.server)
    try:
        udp = ["-u", "-l", "64", "-b", "0", "-t", str(seconds), "-J"]
        argv = ["iperf3", "-c", str(flow.address), "-p", str(flow.port), *udp]
        out = _ns(flow.client, argv, timeout=seconds + 30)
    finally:
        stop(srv)
    total = json.loads(out)["end"]["sum"]
    if int(total["packets"]) == 0 or float(total["lost_percent"]) > 50:
        raise LabError(f"{flow.name}: {total['lost_percent']:.0f} % of the datagrams lost")
    return 1e9 * float(total["seconds"]) / int(total["packets"])


def measure(rounds: int, k: int, seconds: int) -> list[NfCostPart]:
    """Each part's cost per round: the part's flow without tables, with K copies, without."""
    baseline: dict[str, list[float]] = {p.name: [] for p in PARTS}
    added: dict[str, list[float]] = {p.name: [] for p in PARTS}
    with topology():
        for r in range(rounds):
            for part in PARTS if r % 2 == 0 else tuple(reversed(PARTS)):
                flow = FLOWS[part.flow]
                load("")
                before = ns_per_packet(flow, seconds)
                load(renamed_copies(part.tables(), k))
                loaded = ns_per_packet(flow, seconds)
                load("")
                without = (before + ns_per_packet(flow, seconds)) / 2
                baseline[part.name].append(without)
                added[part.name].append(per_copy(loaded, without, k))
                progress(f"nfcost: round {r + 1}, {part.name}: {added[part.name][-1]:+.0f} ns")
    return [
        NfCostPart(
            part=p.name,
            description=p.description,
            packets=FLOWS[p.flow].name,
            baseline_ns=tuple(baseline[p.name]),
            added_ns=tuple(added[p.name]),
        )
        for p in PARTS
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.dataplane.nfcost", description=__doc__
    )
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--copies", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=3)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        if args.load is not None:
            result = NfCost.model_validate_json(args.load.read_text())
        else:
            result = NfCost(
                command=f"python -m benchmarks.dataplane.nfcost --rounds {args.rounds} "
                f"--copies {args.copies} --seconds {args.seconds}",
                generated=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                rounds=args.rounds,
                copies=args.copies,
                seconds=args.seconds,
                parts=tuple(measure(args.rounds, args.copies, args.seconds)),
            )
        result = result.model_copy(update={"notes": (*result.notes, *args.note)})
        if args.save is not None:
            args.save.write_text(result.model_dump_json(indent=2) + "\n")
        print("\n".join(nfcost_md(result)))
        if args.publish is not None:
            publish(args.publish, "nfcost", result)
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or b"").decode(errors="replace").strip()
        print(f"nfcost: {' '.join(exc.cmd)} failed: {detail}", file=sys.stderr)
        return 2
    except (LabError, OSError, KeyError, ValueError, subprocess.TimeoutExpired) as exc:
        print(f"nfcost: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
