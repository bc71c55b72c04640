"""shoal's iptables part as pure text, in iptables-save's own canonical form: the exemption
from Docker's FORWARD policy and the NAT. Who may reach the mesh is decided in shoal's own
nftables table (`nft`), whose drops hold whatever these chains accept.

Docker owns iptables on a Docker host (FORWARD policy DROP, its DOCKER-USER chain, MASQUERADE
rules it inserts at the top of nat POSTROUTING). shoal keeps to three chains of its own, each
reached by one jump:

    filter DOCKER-USER (position 1) -> SHOAL-FORWARD    accept mesh <-> bridge forwarding
    nat    POSTROUTING (position 1) -> SHOAL-POSTROUTING no NAT inside the mesh, else masquerade
    nat    PREROUTING  (position 1) -> SHOAL-DNS         containers' DNS to the agent's resolver

SHOAL-FORWARD is two interface matches and no conntrack: the routes make anything between
shoal0 and the bridge mesh traffic, and the nft table already dropped what may not pass, so
a packet of an established flow costs two rules here and skips Docker's isolation chains.
Not `-i shoal0` and `-o shoal0` alone (one name read less per packet, issue 14): the nft
table only guards the pools, so the underlay or another Docker network could then send into
a peer's approved subnet route, and with the table gone (deleted by hand, until the agent
restores it) the mesh would reach every network this host routes to.
The nat chains only see the first packet of each connection.

The Docker network is created with masquerading off, so shoal's own MASQUERADE is the only one
for its subnet and the order against Docker's rules does not matter. Rules are rendered exactly
as `iptables-save` prints them, so comparing the live dump to `desired()` decides whether
anything has to change. `RETIRED` chains (the MSS clamp, now in the nft table) are removed
wherever an older shoal left them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shoal.plan.hostconfig import FirewallConfig

FORWARD_CHAIN = "SHOAL-FORWARD"
NAT_CHAIN = "SHOAL-POSTROUTING"
DNS_CHAIN = "SHOAL-DNS"
DOCKER_USER = "DOCKER-USER"

# (table, chain shoal owns, built-in or Docker chain that jumps to it)
CHAINS = (
    ("filter", FORWARD_CHAIN, DOCKER_USER),
    ("nat", NAT_CHAIN, "POSTROUTING"),
    ("nat", DNS_CHAIN, "PREROUTING"),
)
# Chains older versions made that this one no longer needs; removed by apply and teardown.
RETIRED = (("mangle", "SHOAL-MSS", "FORWARD"),)


def desired(cfg: FirewallConfig) -> dict[str, tuple[str, ...]]:
    """The rules of each shoal chain, by chain name, as `-A CHAIN ...` lines."""
    mesh, bridge, local = cfg.mesh_interface, cfg.bridge, cfg.local_subnet
    pools = (cfg.container_pool, cfg.mesh_pool)
    forward = (
        f"-A {FORWARD_CHAIN} -i {mesh} -o {bridge} -j ACCEPT",
        f"-A {FORWARD_CHAIN} -i {bridge} -o {mesh} -j ACCEPT",
        *route_forward_rules(cfg),
    )
    # Inside the mesh source IPs stay real: peers check them against AllowedIPs. A host
    # without Docker has no container subnet to exempt or masquerade.
    containers = (
        ()
        if local is None
        else (
            *(f"-A {NAT_CHAIN} -s {local} -d {pool} -j RETURN" for pool in pools),
            f"-A {NAT_CHAIN} -s {local} ! -o {bridge} -j MASQUERADE",
        )
    )
    nat = (*containers, *route_nat_rules(cfg))
    # Whatever resolver a container (or Docker's embedded DNS on its behalf) asks, the query
    # leaves through the bridge: send it to the agent, which forwards what is not its own.
    dns = tuple(
        f"-A {DNS_CHAIN} -i {bridge} -p {proto} -m {proto} --dport 53 "
        f"-j DNAT --to-destination {cfg.dns_address}:53"
        for proto in ("udp", "tcp")
        if cfg.dns_address is not None
    )
    return {FORWARD_CHAIN: forward, NAT_CHAIN: nat, DNS_CHAIN: dns}


def route_forward_rules(cfg: FirewallConfig) -> tuple[str, ...]:
    """SHOAL-FORWARD rules of this host's subnet routes: the mesh's traffic to each approved
    network and its replies pass Docker's FORWARD policy DROP (the nft table decided who)."""
    mesh = cfg.mesh_interface
    return tuple(
        rule
        for net in cfg.subnet_routes
        for rule in (
            f"-A {FORWARD_CHAIN} -d {net} -i {mesh} -j ACCEPT",
            f"-A {FORWARD_CHAIN} -s {net} -o {mesh} -j ACCEPT",
        )
    )


def route_nat_rules(cfg: FirewallConfig) -> tuple[str, ...]:
    """SHOAL-POSTROUTING rules of this host's subnet routes: what the mesh sends into an
    approved network leaves with this host's address there, so the network's hosts answer
    without a route to the mesh's pools."""
    pools = (cfg.container_pool, cfg.mesh_pool)
    return tuple(
        f"-A {NAT_CHAIN} -s {pool} -d {net} -j MASQUERADE"
        for net in cfg.subnet_routes
        for pool in pools
    )


def render(cfg: FirewallConfig) -> str:
    """`iptables-restore --noflush` input that (re)writes shoal's chains and nothing else.

    `apply_script` adds to it the jumps (and DOCKER-USER) a live ruleset still lacks, so one
    atomic restore per table converges everything.
    """
    return _script(cfg, None)


@dataclass
class Ruleset:
    """The parts of an `iptables-save` dump shoal cares about."""

    chains: dict[str, set[str]] = field(default_factory=dict)  # table -> chain names
    rules: dict[str, list[str]] = field(default_factory=dict)  # chain -> "-A ..." lines

    def has_chain(self, table: str, chain: str) -> bool:
        return chain in self.chains.get(table, set())

    def has_jump(self, parent: str, chain: str) -> bool:
        return f"-A {parent} -j {chain}" in self.rules.get(parent, [])


def parse_save(dump: str) -> Ruleset:
    """Chains per table and rules per chain from `iptables-save` output."""
    ruleset = Ruleset()
    table = ""
    for line in dump.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
            ruleset.chains.setdefault(table, set())
        elif line.startswith(":"):
            ruleset.chains.setdefault(table, set()).add(line[1:].split()[0])
        elif line.startswith("-A "):
            chain = line.split()[1]
            # Chain names are unique across the three tables shoal uses, except FORWARD
            # (filter and mangle): key built-in chains by table too.
            ruleset.rules.setdefault(_key(table, chain), []).append(line)
    return ruleset


def _key(table: str, chain: str) -> str:
    return chain if chain.startswith("SHOAL-") or chain == DOCKER_USER else f"{table}:{chain}"


def _parent_rules(ruleset: Ruleset, table: str, parent: str) -> list[str]:
    return ruleset.rules.get(_key(table, parent), [])


def changes(cfg: FirewallConfig, live: Ruleset) -> list[str]:
    """What `apply_script` changes, as readable lines (empty: nothing)."""
    want = desired(cfg)
    lines: list[str] = []
    if not live.has_chain("filter", DOCKER_USER):
        lines.append(f"firewall: filter chain {DOCKER_USER} created (Docker has not)")
    for table, chain, parent in CHAINS:
        if not live.has_chain(table, chain):
            lines.append(f"firewall: {table} chain {chain} created")
        have = live.rules.get(chain, [])
        removed = [rule for rule in have if rule not in want[chain]]
        added = [rule for rule in want[chain] if rule not in have]
        lines += [f"firewall: {chain} - {rule.removeprefix(f'-A {chain} ')}" for rule in removed]
        lines += [f"firewall: {chain} + {rule.removeprefix(f'-A {chain} ')}" for rule in added]
        if not removed and not added and have != list(want[chain]):
            lines.append(f"firewall: {chain} reordered")
        if f"-A {parent} -j {chain}" not in _parent_rules(live, table, parent):
            lines.append(f"firewall: {table} {parent} -> {chain} jump added")
    for table, chain, _parent in RETIRED:
        if live.has_chain(table, chain):
            lines.append(f"firewall: {table} chain {chain} retired")
    return lines


def _script(cfg: FirewallConfig, live: Ruleset | None) -> str:
    """Restore input writing shoal's chains whole, plus whatever jump or chain `live` lacks
    (with `live` None: the chains alone)."""
    want = desired(cfg)
    out: list[str] = []
    for table, chain, parent in CHAINS:
        out.append(f"*{table}")
        if table == "filter" and live is not None and not live.has_chain("filter", DOCKER_USER):
            out.append(f"-N {DOCKER_USER}")
        out.append(f":{chain} - [0:0]")
        out.append(f"-F {chain}")
        out += want[chain]
        if live is not None and f"-A {parent} -j {chain}" not in _parent_rules(live, table, parent):
            out.append(f"-I {parent} 1 -j {chain}")
        out.append("COMMIT")
    if live is not None:
        out += _removal(live, RETIRED)
    return "\n".join(out) + "\n"


def apply_script(cfg: FirewallConfig, live: Ruleset) -> str | None:
    """Restore input converging `live` to `cfg`, or None when it already matches."""
    want = desired(cfg)
    in_place = all(
        live.has_chain(table, chain)
        and live.rules.get(chain, []) == list(want[chain])
        and f"-A {parent} -j {chain}" in _parent_rules(live, table, parent)
        for table, chain, parent in CHAINS
    ) and live.has_chain("filter", DOCKER_USER)
    in_place &= not any(live.has_chain(table, chain) for table, chain, _p in RETIRED)
    return None if in_place else _script(cfg, live)


def teardown_script(live: Ruleset) -> str | None:
    """Restore input removing shoal's jumps and chains, or None when none are left."""
    out = _removal(live, CHAINS + RETIRED)
    return "\n".join(out) + "\n" if out else None


def _removal(live: Ruleset, chains: tuple[tuple[str, str, str], ...]) -> list[str]:
    """Restore lines removing each of `chains` and its jumps that `live` still has."""
    out: list[str] = []
    for table, chain, parent in chains:
        jumps = _parent_rules(live, table, parent).count(f"-A {parent} -j {chain}")
        if not jumps and not live.has_chain(table, chain):
            continue
        out.append(f"*{table}")
        out += [f"-D {parent} -j {chain}"] * jumps
        if live.has_chain(table, chain):
            out += [f"-F {chain}", f"-X {chain}"]
        out.append("COMMIT")
    return out
