"""Per-container anti-spoofing on the shoal bridge: the `bridge shoal` table, as pure text in
the form `nft list table bridge shoal` prints it.

WireGuard binds each peer's container subnet to its key, so a receiver trusts a source address
only as far as the sending host keeps its containers honest. The `inet shoal` table holds them
to the host's container range; this table holds each one to its own address. In the bridge
family, a frame's input interface is the bridge port (the container's veth), so every frame a
container sends, to a neighbour on the bridge or routed to the mesh, meets:

    ip/arp source . port  in @bound        accept  (a container's own address, from its port)
    port in @bound_ports                   drop    (a bound container sends nothing else)
    ip/arp source in @owned                drop    (a neighbour's address, from another port)

Only addresses the netmap gives to containers of this host are bound, each to the port behind
which the kernel finds it (`shoal.hostnet.bridgeports`: the addresses of the veth's peer in the
container's namespace). A container with NET_ADMIN can put a neighbour's address on its own
interface: an address found behind more than one port is contested and stays owned without a
binding, so neither port may send from it (the owner loses it too, and the agent logs why)
rather than letting a forger through. A port the agent has not bound yet (a container started a
moment ago) is held to the host's range by `inet shoal` alone, and may not use a bound address.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address

FAMILY = "bridge"
TABLE = "shoal"


@dataclass(frozen=True, slots=True)
class Bindings:
    """Which address may be sent from which bridge port."""

    bound: tuple[tuple[IPv4Address, str], ...]  # (address, port), sorted
    owned: tuple[IPv4Address, ...]  # every address of a local container, sorted
    contested: tuple[IPv4Address, ...] = ()  # found behind several ports: bound to none

    @property
    def ports(self) -> tuple[str, ...]:
        return tuple(sorted({port for _addr, port in self.bound}))


def bindings(
    local: Iterable[IPv4Address], ports: Mapping[str, tuple[IPv4Address, ...]]
) -> Bindings:
    """The bindings of this host's containers (`local`, from the netmap) to the bridge ports
    behind which the kernel finds them (`ports`: port -> its peer's addresses)."""
    mine = set(local)
    behind: dict[IPv4Address, list[str]] = {}
    for port, addresses in ports.items():
        for addr in addresses:
            if addr in mine:
                behind.setdefault(addr, []).append(port)
    return Bindings(
        bound=tuple(sorted((a, p[0]) for a, p in behind.items() if len(p) == 1)),
        owned=tuple(sorted(mine)),
        contested=tuple(sorted(a for a, p in behind.items() if len(p) > 1)),
    )


def _set(name: str, kind: str, members: list[str]) -> list[str]:
    lines = [f"\tset {name} {{", f"\t\ttype {kind}"]
    if members:
        lines.append(f"\t\telements = {{ {', '.join(members)} }}")
    return [*lines, "\t}", ""]


def render(b: Bindings) -> str:
    """The table, exactly as `nft list table bridge shoal` prints it once loaded (element lists
    aside, which nft wraps: compare through `shoal.firewall.nft.canonical`)."""
    lines = [
        f"table {FAMILY} {TABLE} {{",
        '\tcomment "managed by shoal: each container sends from its own address only"',
        *_set("bound", "ipv4_addr . ifname", [f'{a} . "{p}"' for a, p in b.bound]),
        *_set("bound_ports", "ifname", [f'"{p}"' for p in b.ports]),
        *_set("owned", "ipv4_addr", [str(a) for a in b.owned]),
        "\tchain prerouting {",
        "\t\ttype filter hook prerouting priority filter; policy accept;",
        "\t\tip saddr . iifname @bound accept",
        "\t\tarp saddr ip . iifname @bound accept",
        "\t\tether type { ip, arp } iifname @bound_ports drop",
        "\t\tip saddr @owned drop",
        "\t\tarp saddr ip @owned drop",
        "\t}",
        "}",
    ]
    return "\n".join(lines) + "\n"
