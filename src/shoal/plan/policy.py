"""The policy compiled for one host: what its kernel enforces, and the same form `shoal policy
test` explains verdicts from.

Enforcement is at the destination: a host compiles only the rules whose destinations live on
it (its containers, its own mesh IP), each into a set of source networks and a set of
destination networks. Rules are kept even while their sets are empty, so a container starting
or stopping changes set elements, never the rule list. Selectors mean what
`shoal.model.policy.matches` says they mean for test endpoints, here over real addresses.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, collapse_addresses

from shoal.model.netmap import Container, Frozen, NetworkMap, Node
from shoal.model.policy import Policy, PortRange, Proto, Rule, Selector


class HostRule(Frozen):
    origin: str  # "policy.yaml:12": where the rule is written
    sources: tuple[IPv4Network, ...]  # collapsed, sorted
    dests: tuple[IPv4Network, ...]  # collapsed, sorted
    proto: Proto
    ports: tuple[PortRange, ...] = ()  # empty: every port

    def allows(self, src: IPv4Address, dst: IPv4Address, proto: Proto, port: int | None) -> bool:
        return any(src in n for n in self.sources) and self.opens(dst, proto, port)

    def opens(self, dst: IPv4Address, proto: Proto, port: int | None) -> bool:
        """Whether some source of the mesh may reach `dst` on `proto`/`port` by this rule."""
        if self.proto != "any" and self.proto != proto:
            return False
        if self.ports and (port is None or not any(port in r for r in self.ports)):
            return False
        return bool(self.sources) and any(dst in n for n in self.dests)


class HostPolicy(Frozen):
    """The rules one host enforces on traffic arriving over the mesh; all else is dropped."""

    revision: int
    file: str
    mesh_ip: IPv4Address  # the host's own address on the mesh (`mesh-host`)
    rules: tuple[HostRule, ...]

    def decide(
        self, src: IPv4Address, dst: IPv4Address, proto: Proto, port: int | None
    ) -> HostRule | None:
        """The first rule allowing the flow, or None (denied)."""
        return next((r for r in self.rules if r.allows(src, dst, proto, port)), None)

    def opening(self, dst: IPv4Address, proto: Proto, port: int | None) -> HostRule | None:
        """The first rule letting any source of the mesh reach `dst` on `proto`/`port`."""
        return next((r for r in self.rules if r.opens(dst, proto, port)), None)


class Verdict(Frozen):
    allow: bool
    reason: str  # what decided: a rule (file:line) or a default


def _nodes(netmap: NetworkMap) -> tuple[Node, ...]:
    return (netmap.self_node, *netmap.peers)


def _collapsed(nets: Iterable[IPv4Network]) -> tuple[IPv4Network, ...]:
    return tuple(sorted(collapse_addresses(nets), key=lambda n: int(n.network_address)))


def _host(ip: IPv4Address) -> IPv4Network:
    return IPv4Network(f"{ip}/32")


def _container_matches(sel: Selector, c: Container) -> bool:
    if sel.kind == "project":
        return c.project == sel.value
    if sel.kind == "service":
        project, service = sel.service()
        return c.service == service and (project is None or c.project == project)
    return sel.kind == "label" and sel.label() in c.labels


def source_networks(sel: Selector, netmap: NetworkMap) -> list[IPv4Network]:
    """Where traffic `sel` selects may come from, anywhere in the mesh."""
    nodes = _nodes(netmap)
    if sel.kind == "any":
        return [netmap.settings.container_pool, netmap.settings.mesh_pool]
    if sel.kind == "cidr":
        return [sel.network()]
    if sel.kind == "mesh-host":
        return [_host(n.mesh_ip) for n in nodes if sel.value in (None, n.name)]
    if sel.kind in ("node", "tag"):
        chosen = [n for n in nodes if sel.value in ((n.name,) if sel.kind == "node" else n.tags)]
        return [net for n in chosen for net in (*_containers_of(n), _host(n.mesh_ip))]
    return [_host(c.ip) for c in netmap.containers if _container_matches(sel, c)]


def _containers_of(node: Node) -> list[IPv4Network]:
    """The node's container subnet, if it has one (a host without Docker has none)."""
    return [] if node.subnet is None else [node.subnet]


def _containers_part(subnet: IPv4Network | None, net: IPv4Network) -> list[IPv4Network]:
    """The part of `net` inside `subnet` that containers may hold: without the bridge's
    gateway, which is the host itself (its services are only ever opened by `mesh-host`);
    nothing on a host without Docker (no subnet)."""
    if subnet is None:
        return []
    part = subnet if net.supernet_of(subnet) else net if subnet.supernet_of(net) else None
    if part is None:
        return []
    gateway = _host(next(subnet.hosts()))
    return list(part.address_exclude(gateway)) if part.supernet_of(gateway) else [part]


def dest_networks(sel: Selector, netmap: NetworkMap) -> list[IPv4Network]:
    """What `sel` selects on this host (`netmap.self_node`): containers, or its mesh IP."""
    me = netmap.self_node
    if sel.kind == "mesh-host":
        return [_host(me.mesh_ip)] if sel.value in (None, me.name) else []
    every = sel.kind == "any" or (sel.kind == "node" and sel.value == me.name)
    if every or (sel.kind == "tag" and sel.value in me.tags):
        return [] if me.subnet is None else _containers_part(me.subnet, me.subnet)
    if sel.kind in ("node", "tag"):
        return []
    if sel.kind == "cidr":
        return _containers_part(me.subnet, sel.network())
    return [
        _host(c.ip) for c in netmap.containers if c.node_id == me.id and _container_matches(sel, c)
    ]


def _static_dest(sel: Selector, netmap: NetworkMap) -> bool:
    """Whether `sel` can select anything on this host, whatever containers come and go."""
    if sel.kind in ("project", "service", "label"):
        return True
    return bool(dest_networks(sel, netmap))


def compile_rule(policy: Policy, rule: Rule, netmap: NetworkMap) -> HostRule:
    return HostRule(
        origin=policy.where(rule.line),
        sources=_collapsed(n for s in rule.sources for n in source_networks(s, netmap)),
        dests=_collapsed(n for s in rule.dests for n in dest_networks(s, netmap)),
        proto=rule.proto,
        ports=rule.ports,
    )


def compile_for(policy: Policy, netmap: NetworkMap) -> HostPolicy:
    """`policy` as `netmap.self_node` enforces it: the rules that may ever select something on
    this host (a rule for `mesh-host:h2` is not h2's neighbours' business)."""
    return HostPolicy(
        revision=policy.revision,
        file=policy.file,
        mesh_ip=netmap.self_node.mesh_ip,
        rules=tuple(
            compile_rule(policy, rule, netmap)
            for rule in policy.rules
            if any(_static_dest(s, netmap) for s in rule.dests)
        ),
    )


def publishable(netmap: NetworkMap) -> NetworkMap:
    """`netmap` minus the containers whose host may not publish their names (the policy's
    `publish` claims); what service discovery serves."""
    policy = netmap.policy
    if policy is None or not policy.publish:
        return netmap
    tags = {n.id: n.tags for n in _nodes(netmap)}
    kept = tuple(
        c for c in netmap.containers if not refused_names(policy, tags.get(c.node_id, ()), c)
    )
    return (
        netmap
        if len(kept) == len(netmap.containers)
        else netmap.model_copy(update={"containers": kept})
    )


def refused_names(policy: Policy, tags: tuple[str, ...], c: Container) -> tuple[str, ...]:
    """The names of `c` (its container and compose service names) its host may not publish."""
    names = (c.name,) if c.service is None else (c.name, c.service)
    return tuple(n for n in names if not policy.may_publish(tags, n))


def explain(
    policy: HostPolicy | None,
    mesh_ip: IPv4Address,
    src: IPv4Address,
    dst: IPv4Address,
    proto: Proto,
    port: int | None,
) -> Verdict:
    """The verdict the firewall of the host at `mesh_ip` gives a new flow `src` -> `dst`
    arriving over the mesh, and what decided it; `policy` is that host's compiled policy
    (None: there is none). The nft table (`shoal.firewall.nft`) renders the same decisions."""
    to_host = dst == mesh_ip
    if to_host and proto == "icmp":
        return Verdict(allow=True, reason="ICMP to a host's mesh IP is always allowed")
    if policy is None:
        if to_host:
            return Verdict(allow=False, reason="no policy: hosts' own services are closed")
        return Verdict(allow=True, reason="no policy: containers reach containers")
    rule = policy.decide(src, dst, proto, port)
    if rule is None:
        return Verdict(allow=False, reason=f"no rule of {policy.file} r{policy.revision} allows it")
    return Verdict(allow=True, reason=f"allowed by {rule.origin}")
