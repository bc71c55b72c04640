"""Host exposure check: the Docker API or Swarm management listening beyond loopback, and host
services the mesh can reach.

An unauthenticated Docker API on TCP (2375, or 2376 with TLS that is often misconfigured) is
root on the host for anyone who reaches it, and Swarm's management port (2377) admits
managers; the seed's security notes say never to expose them. A host's own services are
closed to the mesh by default (ICMP aside), but a policy rule to `mesh-host` opens every
listener bound to the wildcard address or the mesh IP on its ports, whoever meant it for the
LAN or for containers only: each such listener is named too, with the rule that opens it.

The agent reads the sockets of its own network namespace (`/proc/net/{tcp,tcp6,udp,udp6}`,
no subprocess) each time `shoal status` asks, and names each finding as a health warning.
"""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

from shoal.model.policy import Proto
from shoal.plan.policy import HostPolicy

DOCKER_API_EXPOSED = "docker-api-exposed"
SWARM_EXPOSED = "swarm-exposed"
MESH_LISTENER = "mesh-reachable-listener"
CODES = (DOCKER_API_EXPOSED, SWARM_EXPOSED, MESH_LISTENER)
# port -> (warning code, what listens there)
WATCHED = {
    2375: (DOCKER_API_EXPOSED, "the Docker API (plain TCP)"),
    2376: (DOCKER_API_EXPOSED, "the Docker API (TLS)"),
    2377: (SWARM_EXPOSED, "Swarm management"),
}
_TCP_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column
_UDP_UNCONNECTED = "07"  # a bound, unconnected UDP socket (TCP_CLOSE): it takes any sender

Address = IPv4Address | IPv6Address


def _address(hex_addr: str) -> Address:
    """An address as /proc/net/tcp{,6} prints it: 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(hex_addr)
    return ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)))


def _sockets(table: str, state: str) -> list[tuple[Address, int]]:
    """(address, port) of each socket in `state` in a /proc/net/{tcp,udp}{,6} table."""
    out = []
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or fields[3] != state:
            continue
        addr, _, port = fields[1].partition(":")
        try:
            out.append((_address(addr), int(port, 16)))
        except ValueError:
            continue
    return out


def listeners(table: str) -> list[tuple[Address, int]]:
    """(address, port) of each listening socket in a /proc/net/tcp or tcp6 table."""
    return _sockets(table, _TCP_LISTEN)


def receivers(table: str) -> list[tuple[Address, int]]:
    """(address, port) of each bound, unconnected socket in a /proc/net/udp or udp6 table."""
    return _sockets(table, _UDP_UNCONNECTED)


def _shown(addr: Address, port: int) -> str:
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


def exposed(tables: list[str]) -> dict[str, str]:
    """Warning code -> message for each watched port listening on a non-loopback address."""
    found: dict[str, list[str]] = {}
    for table in tables:
        for addr, port in listeners(table):
            if port in WATCHED and not addr.is_loopback:
                code, what = WATCHED[port]
                found.setdefault(code, []).append(f"{what} listens on {_shown(addr, port)}")
    return {
        code: "; ".join(sorted(set(items)))
        + " (reachable beyond this host: bind it to 127.0.0.1 or a unix socket)"
        for code, items in found.items()
    }


def _takes_mesh_ip(addr: Address, mesh_ip: IPv4Address) -> bool:
    """Whether a socket bound to `addr` receives traffic sent to `mesh_ip` (a wildcard, the
    mesh IP itself, or its IPv4-mapped form on a dual-stack socket)."""
    if addr.is_unspecified or addr == mesh_ip:
        return True
    return isinstance(addr, IPv6Address) and addr.ipv4_mapped == mesh_ip


def reachable_over_mesh(
    tables: Mapping[Proto, list[str]], policy: HostPolicy | None
) -> dict[str, str]:
    """The MESH_LISTENER warning (empty: none) for each TCP listener or UDP receiver that
    traffic from the mesh to this host's mesh IP reaches under `policy`, the compiled policy
    this host enforces (None: no policy, every host service is closed to the mesh).

    `tables` are /proc/net tables by protocol (tcp: tcp and tcp6, udp: udp and udp6)."""
    if policy is None:
        return {}
    found = set()
    for proto, texts in tables.items():
        read = listeners if proto == "tcp" else receivers
        for table in texts:
            for addr, port in read(table):
                rule = policy.opening(policy.mesh_ip, proto, port)
                if rule is not None and _takes_mesh_ip(addr, policy.mesh_ip):
                    found.add(f"{proto} {_shown(addr, port)} (opened by {rule.origin})")
    if not found:
        return {}
    return {
        MESH_LISTENER: f"host services reachable over the mesh on {policy.mesh_ip}: "
        + "; ".join(sorted(found))
        + " (bind them to 127.0.0.1, or narrow the rule if the mesh is not meant to reach them)"
    }


def _read(proc_net: Path, name: str) -> list[str]:
    try:
        return [(proc_net / name).read_text()]
    except OSError:
        return []  # no IPv6 in this kernel: nothing listens there


def check(policy: HostPolicy | None = None, proc_net: Path = Path("/proc/net")) -> dict[str, str]:
    """`exposed` and `reachable_over_mesh` over this network namespace's socket tables (a
    missing one counts as empty); `policy` is the compiled policy this host enforces."""
    tcp = _read(proc_net, "tcp") + _read(proc_net, "tcp6")
    udp = _read(proc_net, "udp") + _read(proc_net, "udp6")
    return exposed(tcp) | reachable_over_mesh({"tcp": tcp, "udp": udp}, policy)
