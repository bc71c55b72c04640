"""shoal's own nftables table, `inet shoal`, as pure text in the form `nft list table` prints.

Who may reach the mesh is decided here; the iptables side (`rules`) only exempts mesh traffic
from Docker's FORWARD policy DROP and does the NAT. Every base chain at a hook runs whatever
the others decided, and a drop anywhere is final: so these drops hold whatever order they
take against Docker's iptables(-nft) chains, and an accept here never opens anything Docker
closes.

    input: lo accepted; from shoal0, `from_mesh`: replies and ICMP only, the host's own
        services (a server on 0.0.0.0, the DNS responder) closed to the mesh; from shoal-br0,
        `from_containers`; from any other interface a destination in the container or mesh
        pool is dropped: the underlay (or another Docker bridge) never reaches the mesh in
        plaintext
    forward: anything not from shoal0 first: from shoal-br0, `from_containers` (nothing
        leaves the bridge from outside this host's container range; each container is held
        to its own address before, on its bridge port: `firewall.antispoof`'s `bridge shoal`
        table); from any other interface, a flow whose first packet went to a pool address
        (`ct original`: before Docker's DNAT, and not the container a masqueraded flow's
        reply goes to) is dropped, as is an untracked or invalid packet to one. Then
        established flows end the chain; from shoal0 a packet may only go into the shoal
        bridge (not to Docker-published ports of other bridges, not back out); outgoing SYNs
        to shoal0 get their MSS clamped to the route's MTU
    mesh_policy (only with a policy): new flows from shoal0 to this host or its containers,
        one statement per rule matching two address sets (`p<N>_src`, `p<N>_dst`), then
        drop; flows a policy change denies are cut in conntrack (`firewall.conntrack`)

A container starting or stopping changes set elements only, and only those are loaded
(`element_patch`: flush and refill the sets that differ, one transaction); anything else
replaces the table whole, atomically.

Per-packet cost (issue 14): no prerouting chain. One at priority raw (the guards above, before
conntrack) was the one part of shoal's path that cost measurable CPU against a hand-written
setup (`python -m benchmarks.dataplane.parity`: 3-6 % path CPU per Gbit; the input and forward
chains, the bridge table and the extra FORWARD jump were within the noise), since every packet
of the host meets it, the WireGuard underlay's included. Now a packet of an established mesh
flow from shoal0 evaluates one interface match and one conntrack-state match in forward; from
the bridge, the range check too; a WireGuard datagram one port and one interface match in
input (any other underlay packet one vmap miss and one set lookup).
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Network, summarize_address_range

from shoal.plan.hostconfig import FirewallConfig, gateway_of
from shoal.plan.policy import HostPolicy, HostRule

FAMILY = "inet"
TABLE = "shoal"
POOLS_SET = "pools"
POLICY_CHAIN = "mesh_policy"


def container_sources(subnet: IPv4Network) -> tuple[IPv4Address, IPv4Address]:
    """The addresses a container on the bridge of `subnet` may send from: the subnet's hosts
    after the gateway (the host's own address on the bridge, which no container may claim)."""
    return gateway_of(subnet) + 1, subnet.broadcast_address - 1


def render(cfg: FirewallConfig) -> str:
    """The table, exactly as `nft list table inet shoal` prints it once loaded."""
    mesh, bridge = cfg.mesh_interface, cfg.bridge
    pools = ", ".join(str(p) for p in sorted((cfg.container_pool, cfg.mesh_pool)))
    lines = [
        f"table {FAMILY} {TABLE} {{",
        '\tcomment "managed by shoal: only WireGuard carries the mesh"',
        f"\tset {POOLS_SET} {{",
        "\t\ttype ipv4_addr",
        "\t\tflags interval",
        f"\t\telements = {{ {pools} }}",
        "\t}",
        *(_policy_sets(cfg.policy) if cfg.policy is not None else ()),
        "",
        "\tchain input {",
        "\t\ttype filter hook input priority filter; policy accept;",
        *_wireguard_first(cfg),
        f"\t\tiifname vmap {{ {_input_verdicts(cfg)} }}",
        f"\t\tip daddr @{POOLS_SET} drop",
        "\t}",
        "",
        "\tchain from_mesh {",
        "\t\tct state established,related accept",
        "\t\tmeta l4proto icmp accept",
        *((f"\t\tjump {POLICY_CHAIN}",) if cfg.policy is not None else ()),
        f"\t\t{host_services_verdict(cfg)}",
        "\t}",
        "",
        "\tchain forward {",
        "\t\ttype filter hook forward priority filter; policy accept;",
        *_established_first(cfg),
        f'\t\tiifname != "{mesh}" jump from_host_side',
        "\t\tct state established,related accept",
        *route_forwarding(cfg),
        f'\t\tiifname "{mesh}" oifname != "{bridge}" drop',
        *(
            (
                f'\t\tiifname "{mesh}" jump {POLICY_CHAIN}',
                # A flow the policy cut must not come back from the other side: a mid-stream
                # packet of the server would track it anew, outbound, and the client's next
                # packets would pass as its replies. New TCP flows start with a SYN.
                f'\t\toifname "{mesh}" tcp flags != syn / syn,ack drop',
            )
            if cfg.policy is not None
            else ()
        ),
        # Outgoing SYNs are enough: each host clamps its own side of every connection.
        f'\t\toifname "{mesh}" tcp flags syn / syn,rst tcp option maxseg size set rt mtu',
        "\t}",
        "",
        "\tchain from_host_side {",
        *((f'\t\tiifname "{bridge}" goto from_containers',) if cfg.local_subnet else ()),
        # The destination its flow's first packet had: before Docker's DNAT to a container's
        # published port, and not the container a reply to its masqueraded traffic goes to.
        f"\t\tct original ip daddr @{POOLS_SET} drop",
        f"\t\tct state invalid,untracked ip daddr @{POOLS_SET} drop",
        "\t}",
        *_from_containers(cfg),
        *(_policy_chain(cfg.policy) if cfg.policy is not None else ()),
        "}",
    ]
    return "\n".join(lines) + "\n"


def _established_first(cfg: FirewallConfig) -> list[str]:
    """The mesh's established flows, each packet in one rule: from WireGuard, and from this
    host's containers when they send from the host's range (what `from_containers` holds every
    packet to; one that does not goes on to it and is dropped there). The rest of the chain is
    for new flows and for what comes from elsewhere. Saves the jumps a container's packets
    took on their way to the established accept (issue 14, perf: the forward chain cost 0.8 %
    of the machine's CPU under iperf3)."""
    lines = [f'\t\tiifname "{cfg.mesh_interface}" ct state established,related accept']
    if cfg.local_subnet is not None:
        first, last = container_sources(cfg.local_subnet)
        lines.append(
            f'\t\tiifname "{cfg.bridge}" ip saddr {first}-{last} '
            "ct state established,related accept"
        )
    return lines


def _wireguard_first(cfg: FirewallConfig) -> list[str]:
    """WireGuard's own datagrams, accepted before anything else looks at them: on a busy mesh
    they are most of what the host receives, and the interface map and the pools lookup
    after this rule cost each one more than the rest of its way through netfilter (issue 14:
    1.3 % of the machine's CPU under iperf3, measured with perf). They reach only WireGuard's
    socket, which authenticates every one. Not from shoal0: the host's ports stay closed to
    the mesh, as `shoal policy test` says they are, and a member's own handshake sent through
    the tunnel cannot make WireGuard roam that member's endpoint into shoal0 (a routing loop).
    The interface match costs a copy of the name per datagram (perf, iperf3: the chain's share
    of the machine was 0.41 % without it, 0.65 % with it); it stays."""
    if cfg.wireguard_port is None:
        return []
    return [f'\t\tudp dport {cfg.wireguard_port} iifname != "{cfg.mesh_interface}" accept']


def _input_verdicts(cfg: FirewallConfig) -> str:
    """The input vmap's elements: the mesh to `from_mesh`, this host's own stack accepted,
    (on a Docker host) its containers held to their range; any other interface goes on to the
    pools' drop."""
    verdicts = [("lo", "accept"), (cfg.mesh_interface, "jump from_mesh")]
    if cfg.local_subnet is not None:
        verdicts.append((cfg.bridge, "goto from_containers"))
    return ", ".join(f'"{name}" : {verdict}' for name, verdict in verdicts)


def _from_containers(cfg: FirewallConfig) -> list[str]:
    """Nothing leaves the bridge from outside this host's container range (a host without
    Docker has no bridge)."""
    if cfg.local_subnet is None:
        return []
    first, last = container_sources(cfg.local_subnet)
    return ["", "\tchain from_containers {", f"\t\tip saddr != {first}-{last} drop", "\t}"]


def host_services_verdict(cfg: FirewallConfig) -> str:
    """What new flows from the mesh to this host's own services get once the policy (if any)
    did not accept them: a Docker host's are closed (its containers are the workload); a host
    without Docker is the workload (a database on a VM), open unless a policy decides."""
    return "accept" if cfg.local_subnet is None and cfg.policy is None else "drop"


def route_forwarding(cfg: FirewallConfig) -> list[str]:
    """Forward-chain rules of this host's subnet routes: the mesh may reach the networks the
    admin approved for it (the one way out of shoal0 besides the bridge), before the drop of
    everything else leaving shoal0's traffic."""
    if not cfg.subnet_routes:
        return []
    nets = ", ".join(str(n) for n in cfg.subnet_routes)
    # nft lists a one-element set as the bare prefix: rendered as it lists, or every apply
    # would see a change.
    match = nets if len(cfg.subnet_routes) == 1 else f"{{ {nets} }}"
    return [f'\t\tiifname "{cfg.mesh_interface}" ip daddr {match} accept']


def _policy_sets(policy: HostPolicy) -> list[str]:
    """Two address sets per rule, `p<N>_src` and `p<N>_dst`: containers coming and going
    change their elements, never the rules."""
    lines: list[str] = []
    for i, rule in enumerate(policy.rules, 1):
        for side, nets in (("src", rule.sources), ("dst", rule.dests)):
            lines += ["", f"\tset p{i}_{side} {{", "\t\ttype ipv4_addr", "\t\tflags interval"]
            if nets:
                lines.append(f"\t\telements = {{ {', '.join(elements(nets))} }}")
            lines.append("\t}")
    return lines


def elements(nets: tuple[IPv4Network, ...]) -> list[str]:
    """Set elements for collapsed, sorted `nets` as nft lists them: each run of adjacent
    networks one element (an address, a prefix when the run is one, else `first-last`)."""
    runs: list[list[IPv4Address]] = []
    for n in nets:
        if runs and int(runs[-1][1]) + 1 == int(n.network_address):
            runs[-1][1] = n.broadcast_address
        else:
            runs.append([n.network_address, n.broadcast_address])
    out = []
    for first, last in runs:
        if first == last:
            out.append(str(first))
            continue
        prefixes = list(summarize_address_range(first, last))
        out.append(str(prefixes[0]) if len(prefixes) == 1 else f"{first}-{last}")
    return out


def _match(rule: HostRule) -> str:
    """The protocol and port part of a rule's nft statement."""
    if not rule.ports:
        return "" if rule.proto == "any" else f" meta l4proto {rule.proto}"
    ports = ", ".join(str(p) for p in rule.ports)
    return f" {rule.proto} dport " + (ports if len(rule.ports) == 1 else f"{{ {ports} }}")


def _policy_chain(policy: HostPolicy) -> list[str]:
    """New flows from the mesh to this host or its containers: one statement per rule (two
    set lookups each), then drop. Only first packets get here: established flows were
    accepted at the top of `forward` and `from_mesh`."""
    lines = ["", f"\tchain {POLICY_CHAIN} {{"]
    lines += [
        f"\t\tip saddr @p{i}_src ip daddr @p{i}_dst{_match(rule)} accept"
        f' comment "{rule.origin} r{policy.revision}"'
        for i, rule in enumerate(policy.rules, 1)
    ]
    lines += ["\t\tdrop", "\t}"]
    return lines


def enforces_policy(listing: str) -> bool:
    """Whether a listing of the table has a policy chain."""
    return f"chain {POLICY_CHAIN} {{" in listing


def replace(family: str, table: str) -> str:
    """`nft -f` input replacing shoal's table of `family` by `table` (its rendering) whole
    (created first, so the delete never fails on a host that has none yet)."""
    return f"table {family} {TABLE}\ndelete table {family} {TABLE}\n{table}"


def load_script(cfg: FirewallConfig) -> str:
    """`nft -f` input replacing the inet table whole in one transaction."""
    return replace(FAMILY, render(cfg))


_ELEMENTS = re.compile(r"\{ ([^{}]*) \}")
_SET = re.compile(r"\tset (\S+) \{$")
_MEMBERS = "elements = { "


def _joined(listing: str) -> list[str]:
    """Non-empty lines, with a `{ ... }` that nft wrapped over several lines (long element
    lists) joined back into one."""
    out: list[str] = []
    for line in listing.splitlines():
        if not line.strip():
            continue
        if out and out[-1].count("{") > out[-1].count("}") and "elements = {" in out[-1]:
            out[-1] += " " + line.strip()
        else:
            out.append(line)
    return out


def canonical(listing: str) -> list[str]:
    """`listing`'s lines with the members of every `{ ... }` sorted: the kernel lists hashed
    sets and maps in bucket order, which changes each time the table is loaded."""
    return [
        _ELEMENTS.sub(lambda m: "{ " + ", ".join(sorted(m.group(1).split(", "))) + " }", line)
        for line in _joined(listing)
    ]


def _split_sets(lines: list[str]) -> tuple[list[str], dict[str, str]]:
    """Canonical `lines` without their sets' element lines, and each set's members by name
    ("" for an empty set)."""
    skeleton: list[str] = []
    members: dict[str, str] = {}
    current: str | None = None
    for line in lines:
        if (m := _SET.match(line)) is not None:
            current = m.group(1)
            members[current] = ""
        elif line == "\t}":
            current = None
        elif current is not None and line.strip().startswith(_MEMBERS):
            members[current] = line.strip().removeprefix(_MEMBERS).removesuffix(" }")
            continue
        skeleton.append(line)
    return skeleton, members


def element_patch(family: str, live: str, table: str) -> str | None:
    """`nft -f` input turning shoal's live table of `family` into `table` by set elements
    alone (each set that differs flushed and refilled, in one transaction), or None when more
    than elements differ (then the table is replaced whole). A container starting or stopping
    changes elements only: the rules, their handles and their counters stay."""
    have, have_members = _split_sets(canonical(live))
    want, want_members = _split_sets(canonical(table))
    if have != want:
        return None
    out: list[str] = []
    for name, members in want_members.items():
        if have_members.get(name) != members:
            out.append(f"flush set {family} {TABLE} {name}")
            if members:
                out.append(f"add element {family} {TABLE} {name} {{ {members} }}")
    return "".join(f"{line}\n" for line in out)


def changes(cfg: FirewallConfig, live: str | None) -> list[str]:
    """What loading `render(cfg)` changes in `live` (the current listing, None: no table), as
    readable lines; empty when nothing."""
    return diff(FAMILY, live, render(cfg))


def diff(family: str, live: str | None, table: str) -> list[str]:
    """What loading `table` changes in `live` (shoal's table of `family` as listed, None:
    none), as readable lines; empty when nothing."""
    if live is None:
        return [f"firewall: table {family} {TABLE} created"]
    have, want = canonical(live), canonical(table)
    removed = [line.strip() for line in have if line not in want]
    added = [line.strip() for line in want if line not in have]
    lines = [f"firewall: {family} {TABLE} - {line}" for line in removed]
    lines += [f"firewall: {family} {TABLE} + {line}" for line in added]
    if not lines and have != want:
        lines.append(f"firewall: table {family} {TABLE} reordered")
    return lines
