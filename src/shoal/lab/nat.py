"""NAT routers for the lab: put a host behind its own (or a shared) NAT of a chosen kind.

`shoal lab up --nat h2=easy,h3=hard,h4=udp-blocked,h5=easy:home,h6=easy:home` puts each named
host in a private LAN behind a router namespace `sl-<lab>-nat-<router>`; the router (named
after its first host unless `:ROUTER` names it, so h5 and h6 above share router `home`) sits on
the underlay at the address its first host would have had (192.0.2.10 + index) and the host
gets 192.168.<r>.<index>/24 with the router at .254 as its default route. The router has no
default route itself, so nothing leaves the lab. The server stays on the underlay ("public").

How each kind is built (nftables, table `ip shoal_lab_nat` in the router):

- easy: endpoint-independent mapping and filtering ("full cone"). Linux `masquerade` keeps
  the source port when it is free, so one inside port maps to one outside port whatever the
  destination (the second host behind one NAT using the same port gets another one). For
  the filtering, a dynamic map learns every UDP mapping on its way out (outside port →
  inside address and port, from conntrack's original tuple, 180 s) and a prerouting DNAT
  sends any new inbound UDP to a learned port to its inside owner. Ports never used from
  inside stay closed.
- hard: address-and-port-dependent mapping (symmetric): `masquerade fully-random` picks a new
  random outside port for every new conntrack entry, i.e. per destination address and port;
  inbound only as replies (conntrack established).
- udp-blocked: only TCP out to ports 80, 443 and the lab server's control port 8443 (the lab
  serves its API there; a real deployment would use 443); no UDP at all, nothing in.

`reconfigure` changes a running router (its kind, or a rebinding: new outside ports, the old
mappings forgotten); `tests/e2e/test_nat.py` uses it for upgrades and rebinding.

`tests/lab/test_nat.py` checks each kind from the outside: a UDP reflector on the underlay
reports the source address and port it sees for two destinations, and a third party tries to
come in through the mapping.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from typing import Any, Literal, get_args

from shoal.lab.errors import LabError

NatKind = Literal["easy", "hard", "udp-blocked"]
NAT_KINDS: tuple[str, ...] = get_args(NatKind)
TABLE = "shoal_lab_nat"
WAN = "wan"  # the router's interface on the underlay
LAN = "lan"  # the router's bridge on the hosts' side
CONE_TIMEOUT_SECONDS = 180
TCP_OUT_PORTS = (80, 443, 8443)  # 8443: the lab server's control API (lab.SERVER_PORT)
_ROUTER = re.compile(r"^[a-z0-9][a-z0-9-]{0,9}$")

Runner = Callable[..., Any]  # lab.run: (argv, *, input=None) -> CompletedProcess


@dataclass(frozen=True, slots=True)
class NatSpec:
    """Host `host` sits behind router `router`, a NAT of kind `kind`."""

    host: str
    kind: NatKind
    router: str


def parse_nat(text: str) -> dict[str, NatSpec]:
    """`h2=easy,h3=hard:r1,...` → {host: spec}; LabError naming the bad part otherwise.

    Hosts naming the same router share it; they must then agree on its kind."""
    specs: dict[str, NatSpec] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        host, sep, rest = part.partition("=")
        kind, _, router = rest.partition(":")
        if not sep or not host or kind not in NAT_KINDS:
            raise LabError(
                f"bad --nat entry {part!r}: expected HOST=KIND[:ROUTER] with KIND one of "
                + ", ".join(NAT_KINDS)
            )
        router = router or host
        if not _ROUTER.match(router):
            raise LabError(f"bad router name {router!r} in --nat: 1-10 of a-z, 0-9, '-'")
        if host in specs:
            raise LabError(f"host {host} named twice in --nat")
        specs[host] = NatSpec(host=host, kind=kind, router=router)  # type: ignore[arg-type]
    kinds: dict[str, str] = {}
    for spec in specs.values():
        if kinds.setdefault(spec.router, spec.kind) != spec.kind:
            raise LabError(f"router {spec.router} given two kinds in --nat")
    return specs


def lan_prefix(router_index: int) -> str:
    return f"192.168.{router_index}"


def router_lan_address(router_index: int) -> IPv4Interface:
    return IPv4Interface(f"{lan_prefix(router_index)}.254/24")


def host_lan_address(router_index: int, host_index: int) -> IPv4Interface:
    return IPv4Interface(f"{lan_prefix(router_index)}.{host_index}/24")


def ruleset(kind: NatKind, moved: Mapping[int, int] | None = None) -> str:
    """The router's nftables table for `kind` (see the module docstring); pure.

    `moved` maps inside UDP ports to the outside port they get instead of their own (a NAT
    that rebound: one outside port for every destination still, so an easy NAT stays easy)."""
    ports = ", ".join(str(p) for p in TCP_OUT_PORTS)
    if kind == "udp-blocked":
        forward_out = f'iifname "{LAN}" oifname "{WAN}" tcp dport {{ {ports} }} accept'
    else:
        forward_out = f'iifname "{LAN}" oifname "{WAN}" accept'
    masquerade = "masquerade fully-random" if kind == "hard" else "masquerade"
    lines = [
        f"table ip {TABLE} {{",
        "  chain forward {",
        "    type filter hook forward priority filter; policy drop;",
        "    ct state established,related accept",
        f"    {forward_out}",
    ]
    if kind == "easy":
        # DNAT'ed inbound UDP (the cone's filtering) arrives here as a new connection.
        lines.append(f'    iifname "{WAN}" oifname "{LAN}" ct status dnat accept')
    lines += [
        "  }",
        "  chain postrouting {",
        "    type nat hook postrouting priority srcnat; policy accept;",
        *(
            f'    oifname "{WAN}" udp sport {inside} masquerade to :{outside}'
            for inside, outside in sorted((moved or {}).items())
        ),
        f'    oifname "{WAN}" {masquerade}',
        "  }",
    ]
    if kind == "easy":
        lines += [
            "  map cone {",
            "    type inet_service : ipv4_addr . inet_service;",
            f"    flags dynamic,timeout; timeout {CONE_TIMEOUT_SECONDS}s;",
            "  }",
            "  chain learn {",
            # After srcnat: the packet carries its outside port, conntrack the inside one.
            "    type filter hook postrouting priority srcnat + 10; policy accept;",
            f'    oifname "{WAN}" meta l4proto udp update @cone '
            "{ udp sport : ct original ip saddr . ct original proto-src }",
            "  }",
            "  chain prerouting {",
            "    type nat hook prerouting priority dstnat; policy accept;",
            f'    iifname "{WAN}" meta l4proto udp dnat ip to udp dport map @cone',
            "  }",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"


def build_router(
    run: Runner,
    netns_dir: str,
    router_ns: str,
    kind: NatKind,
    wan_address: IPv4Interface,
    router_index: int,
) -> None:
    """Configure an existing namespace `router_ns` (its `wan` already cabled to the underlay)
    as a NAT router of `kind` with an empty LAN bridge."""
    run(["ip", "-n", router_ns, "addr", "add", str(wan_address), "dev", WAN])
    run(["ip", "-n", router_ns, "link", "set", WAN, "up"])
    run(["ip", "-n", router_ns, "link", "add", LAN, "type", "bridge"])
    run(["ip", "-n", router_ns, "addr", "add", str(router_lan_address(router_index)), "dev", LAN])
    run(["ip", "-n", router_ns, "link", "set", LAN, "up"])
    # Forwarding on; the LAN bridge must not run netfilter (hosts behind one NAT talk
    # directly, as on a home switch).
    script = (
        "echo 1 > /proc/sys/net/ipv4/ip_forward && "
        "for f in /proc/sys/net/bridge/bridge-nf-call-iptables "
        "/proc/sys/net/bridge/bridge-nf-call-arptables; do "
        '[ ! -e "$f" ] || echo 0 > "$f"; done'
    )
    enter = ["nsenter", f"--net={netns_dir}/{router_ns}"]
    run([*enter, "sh", "-c", script])
    run([*enter, "nft", "-f", "-"], input=ruleset(kind))


def reconfigure(
    run: Runner,
    netns_dir: str,
    router_ns: str,
    kind: NatKind,
    moved: Mapping[int, int] | None = None,
    *,
    forget: bool = True,
) -> None:
    """Change a running router to `kind` (and `moved` ports, see `ruleset`) in one nft
    transaction. With `forget`, it also drops every mapping it holds (conntrack and the
    learned cone map), as a router that reboots or times its mappings out: hosts behind it
    get new outside ports (a NAT rebinding) and what came in through the old ones stops.
    Without, flows already open keep going (a firewall that starts to let UDP out); the cone
    map still starts empty."""
    enter = ["nsenter", f"--net={netns_dir}/{router_ns}"]
    run([*enter, "nft", "-f", "-"], input=f"delete table ip {TABLE}\n" + ruleset(kind, moved))
    if forget:
        run([*enter, "conntrack", "-F"])


def router_index_of(
    specs: Mapping[str, NatSpec], host_indexes: Mapping[str, int]
) -> dict[str, int]:
    """Each router's index: that of the first host behind it (its WAN is that host's spot)."""
    out: dict[str, int] = {}
    for spec in sorted(specs.values(), key=lambda s: host_indexes.get(s.host, 0)):
        if spec.host in host_indexes:
            out.setdefault(spec.router, host_indexes[spec.host])
    return out


def wan_address(base: IPv4Address, router_index: int, prefix: int) -> IPv4Interface:
    return IPv4Interface(f"{base + router_index}/{prefix}")
