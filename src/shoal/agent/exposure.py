"""Host exposure check: the Docker API or Swarm management listening beyond loopback.

An unauthenticated Docker API on TCP (2375, or 2376 with TLS that is often misconfigured) is
root on the host for anyone who reaches it, and Swarm's management port (2377) admits
managers; the seed's security notes say never to expose them. The agent reads the listening
TCP sockets of its own network namespace (`/proc/net/tcp` and `tcp6`, no subprocess) each
time `shoal status` asks, and names each such listener as a health warning.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

DOCKER_API_EXPOSED = "docker-api-exposed"
SWARM_EXPOSED = "swarm-exposed"
# port -> (warning code, what listens there)
WATCHED = {
    2375: (DOCKER_API_EXPOSED, "the Docker API (plain TCP)"),
    2376: (DOCKER_API_EXPOSED, "the Docker API (TLS)"),
    2377: (SWARM_EXPOSED, "Swarm management"),
}
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column


def _address(hex_addr: str) -> IPv4Address | IPv6Address:
    """An address as /proc/net/tcp{,6} prints it: 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(hex_addr)
    return ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)))


def listeners(table: str) -> list[tuple[IPv4Address | IPv6Address, int]]:
    """(address, port) of each listening socket in a /proc/net/tcp or tcp6 table."""
    out = []
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or fields[3] != _LISTEN:
            continue
        addr, _, port = fields[1].partition(":")
        try:
            out.append((_address(addr), int(port, 16)))
        except ValueError:
            continue
    return out


def exposed(tables: list[str]) -> dict[str, str]:
    """Warning code -> message for each watched port listening on a non-loopback address."""
    found: dict[str, list[str]] = {}
    for table in tables:
        for addr, port in listeners(table):
            if port in WATCHED and not addr.is_loopback:
                code, what = WATCHED[port]
                shown = f"[{addr}]" if addr.version == 6 else str(addr)
                found.setdefault(code, []).append(f"{what} listens on {shown}:{port}")
    return {
        code: "; ".join(sorted(set(items)))
        + " (reachable beyond this host: bind it to 127.0.0.1 or a unix socket)"
        for code, items in found.items()
    }


def check(proc_net: Path = Path("/proc/net")) -> dict[str, str]:
    """`exposed` over this network namespace's TCP tables (a missing one counts as empty)."""
    tables = []
    for name in ("tcp", "tcp6"):
        try:
            tables.append((proc_net / name).read_text())
        except OSError:
            continue  # no IPv6 in this kernel: nothing listens there
    return exposed(tables)
