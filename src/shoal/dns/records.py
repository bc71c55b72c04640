"""The record table: which names the mesh answers, computed from the netmap. Pure, no I/O.

`RecordTable.from_netmap(netmap)` indexes containers and nodes once (O(containers + nodes));
`table.resolve(qname, qtype)` then costs O(size of the answer). The agent builds a new table per
netmap and the responder calls `resolve` per query.

Names (case-insensitive, a trailing dot or none; `shoal` is the default zone):

    <name>                       single label: the containers named <name> (on any host) plus
                                 the serving replicas of compose service <name> (see "project
                                 scoping" below); nothing matches -> NOT_OURS (forwarded, since
                                 Docker sends us every single-label name)
    <node>.shoal                 that node's mesh IP (this node and its peers), always: a
                                 container or service of the same name never shadows it
    <name>.shoal                 otherwise the same set as the single label <name>
    <container>.<node>.shoal     container <container> running on node <node>, and only that:
                                 a compose project named like a node never joins the answer
    <service>.<project>.shoal    serving replicas of compose service <service> of <project>
    _<port>._tcp.<NAME>          SRV: one record per container of <NAME> (any in-zone name
    _<port>._udp.<NAME>          above that names containers) exposing <port>/<proto>; target
                                 `<container>.<node>.shoal` with its A in the additional section
    shoal                        the apex: SOA; NODATA for other types
    anything else under shoal    NXDOMAIN (with the zone's SOA, minimum 2 s)
    anything else                NOT_OURS

Choices:
- A name that is both a container name and a service answers the service's serving replicas
  plus that container: someone asking for a container by name wants it, health or not; a
  service name hands out only replicas whose `serves_traffic()` is true.
- A known name with nothing to hand out right now (a service whose replicas all fail their
  health check) is NODATA, not NOT_OURS: an upstream resolver must not answer for it.
- Project scoping: a single-label `<service>` asked from a container of compose project P
  (identified by the query's source IP, which Docker's embedded DNS preserves) answers P's
  replicas when P has such a service, as compose users expect; otherwise every project's.
- Node names win over container and service names for `<name>.shoal`: what a host reports
  about its containers never redirects another host's name. Single-label node names are not
  ours (they usually mean the machine's own host names, which upstream resolves).
- Two hosts running containers of the same name: `<name>` and `<name>.shoal` answer both,
  `<name>.<node>.shoal` each one.
- Names that cannot be DNS names are left out (and listed in `skipped`): container names
  holding a dot (they cannot be told from the name forms), and container or node names that
  are not a DNS label (longer than 63 bytes, empty, characters outside letters, digits, `-`
  and `_`) or whose `<container>.<node>.<zone>.` exceeds 255 bytes. The rest still answer.
- Who may ask: `admits(source)` is true for this host (loopback, its mesh IP) and its own
  containers (its container subnet); the responder refuses everyone else.
- SRV names use the numeric port (`_6379._tcp.cache.app.shoal`): Docker labels give ports, not
  service names. Priority 0, weight 1 for all.
- TTL 2 s everywhere: convergence beats caching.
"""

from __future__ import annotations

import enum
import logging
import random
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Protocol

import dns.rdatatype
from dns.rdatatype import RdataType

from shoal.model.netmap import Container, NetworkMap

TTL = 2  # seconds, for every record and for negative answers (SOA minimum)
DEFAULT_ZONE = "shoal"
MAX_LABEL = 63  # bytes (RFC 1035)
MAX_NAME = 255  # bytes in wire form; the length of the text with the final dot, plus one
# Docker allows [a-zA-Z0-9][a-zA-Z0-9_.-]* for container names; dots are handled apart.
_LABEL = re.compile(r"[a-z0-9_-]+")

log = logging.getLogger(__name__)


class Outcome(enum.Enum):
    ANSWER = "answer"  # records in `answer` (and `additional`)
    NODATA = "nodata"  # the name exists, no record of that type (SOA in `authority`)
    NXDOMAIN = "nxdomain"  # no such name in our zone (SOA in `authority`)
    NOT_OURS = "not_ours"  # forward upstream


@dataclass(frozen=True)
class ARecord:
    name: str  # absolute, lower case, with the final dot
    address: IPv4Address


@dataclass(frozen=True)
class SrvRecord:
    name: str
    priority: int
    weight: int
    port: int
    target: str  # absolute, with the final dot


@dataclass(frozen=True)
class SoaRecord:
    name: str  # the zone apex, "shoal."
    mname: str
    rname: str
    serial: int  # the netmap revision
    refresh: int = 60
    retry: int = 10
    expire: int = 3600
    minimum: int = TTL  # negative caching TTL (RFC 2308)


Record = ARecord | SrvRecord | SoaRecord


@dataclass(frozen=True)
class Resolution:
    outcome: Outcome
    answer: tuple[Record, ...] = ()
    additional: tuple[ARecord, ...] = ()
    authority: tuple[SoaRecord, ...] = ()
    ttl: int = TTL

    @property
    def addresses(self) -> tuple[IPv4Address, ...]:
        """The A addresses of the answer section (convenience for callers and tests)."""
        return tuple(r.address for r in self.answer if isinstance(r, ARecord))


NOT_OURS = Resolution(Outcome.NOT_OURS)
QType = RdataType | int | str  # 1, "A" or RdataType.A


class Resolver(Protocol):
    """What the responder asks per query; `RecordTable` is the mesh's, tests and the lab bring
    static ones. Must be fast and pure: it runs on the event loop."""

    def resolve(
        self, qname: str, qtype: QType, source: IPv4Address | None = None
    ) -> Resolution: ...

    def admits(self, source: IPv4Address | None) -> bool:
        """Whether a query from `source` (None: not IPv4) gets an answer at all."""
        ...


_PROTOCOLS = {"_tcp": "tcp", "_udp": "udp"}


@dataclass
class _Index:
    by_name: dict[str, list[Container]] = field(default_factory=lambda: defaultdict(list))
    by_name_node: dict[tuple[str, str], list[Container]] = field(
        default_factory=lambda: defaultdict(list)
    )
    # (service, project) -> serving replicas; `services` holds every known key, serving or not.
    serving: dict[tuple[str, str], list[Container]] = field(
        default_factory=lambda: defaultdict(list)
    )
    services: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    nodes: dict[str, IPv4Address] = field(default_factory=dict)
    node_names: dict[str, str] = field(default_factory=dict)  # node id -> lower-case name
    by_ip: dict[IPv4Address, Container] = field(default_factory=dict)
    # Who may ask: this host's own addresses and its container subnet (loopback always).
    local: tuple[IPv4Address | IPv4Network, ...] = ()
    skipped: list[str] = field(default_factory=list)  # names left out, with the reason


class RecordTable:
    """An immutable index of the names of one netmap; build with `from_netmap`."""

    def __init__(self, index: _Index, zone: str, serial: int, rng: random.Random) -> None:
        self._ix = index
        self.zone = zone.lower().strip(".")
        self._zone_labels = tuple(self.zone.split("."))
        self._origin = self.zone + "."
        self._soa = SoaRecord(
            name=self._origin,
            mname=f"ns.{self._origin}",
            rname=f"hostmaster.{self._origin}",
            serial=serial % 2**32,
        )
        self._rng = rng

    @classmethod
    def from_netmap(
        cls, netmap: NetworkMap, zone: str = DEFAULT_ZONE, rng: random.Random | None = None
    ) -> RecordTable:
        """Index `netmap`'s nodes and containers. `rng` shuffles answers (tests seed it)."""
        me = netmap.self_node
        ix = _Index(local=(me.mesh_ip,) if me.subnet is None else (me.mesh_ip, me.subnet))
        zone_length = len(zone.strip(".")) + 2  # its labels, the dot before it, the final one
        for node in (me, *netmap.peers):
            name = node.name.lower()
            ix.node_names[node.id] = name
            if not _is_label(name):
                ix.skipped.append(f"node {node.name!r}: not a DNS label")
                continue
            ix.nodes[name] = node.mesh_ip
        for c in netmap.containers:
            name = c.name.lower()
            ix.by_ip[c.ip] = c
            if "." in name:
                continue
            host = ix.node_names.get(c.node_id, c.node_id.lower())
            if not _is_label(name):
                ix.skipped.append(f"container {c.name!r} on {host!r}: not a DNS label")
                continue
            if host not in ix.nodes:
                ix.skipped.append(f"container {c.name!r}: its node {host!r} is not in DNS")
                continue
            # The SRV target <name>.<node>.<zone>. must fit, in wire form (one byte more).
            if len(name) + 1 + len(host) + zone_length + 1 > MAX_NAME:
                ix.skipped.append(f"container {c.name!r} on {host!r}: name too long")
                continue
            ix.by_name[name].append(c)
            ix.by_name_node[(name, host)].append(c)
            if c.service and c.project:
                key = (c.service.lower(), c.project.lower())
                ix.services[key[0]].add(key[1])
                if c.serves_traffic():
                    ix.serving[key].append(c)
        if ix.skipped:
            # Logged per table: the operator renames the container, the warning stops.
            log.warning(
                "dns: %d name(s) left out of DNS: %s%s",
                len(ix.skipped),
                "; ".join(ix.skipped[:5]),
                " ..." if len(ix.skipped) > 5 else "",
            )
        return cls(ix, zone, netmap.revision, rng or random.Random())

    @classmethod
    def empty(cls, zone: str = DEFAULT_ZONE) -> RecordTable:
        """A table with no names (before the first netmap): our zone is NXDOMAIN throughout."""
        return cls(_Index(), zone, 0, random.Random())

    @property
    def skipped(self) -> tuple[str, ...]:
        """The node and container names left out of DNS, each with the reason."""
        return tuple(self._ix.skipped)

    # -- queries ----------------------------------------------------------------------------

    def admits(self, source: IPv4Address | None) -> bool:
        """True for this host (loopback, its mesh IP) and its own containers."""
        if source is None:
            return False
        if source.is_loopback:
            return True
        return any(
            source == entry if isinstance(entry, IPv4Address) else source in entry
            for entry in self._ix.local
        )

    def resolve(
        self,
        qname: str,
        qtype: QType,
        source: IPv4Address | None = None,
    ) -> Resolution:
        """What to answer for `qname`/`qtype` asked from `source` (the client's address)."""
        rdtype = RdataType.make(qtype)
        labels = tuple(qname.lower().rstrip(".").split(".")) if qname.strip(".") else ()
        if not labels:
            return NOT_OURS
        zl = self._zone_labels
        if labels[-len(zl) :] != zl:
            if len(labels) != 1:
                return NOT_OURS
            found = self._named(labels[0], source)
            if found is None:
                return NOT_OURS
            return self._a_answer(labels, found, rdtype)
        rel = labels[: -len(zl)]
        if not rel:
            if rdtype in (RdataType.SOA, RdataType.ANY):
                return Resolution(Outcome.ANSWER, answer=(self._soa,))
            return self._negative(Outcome.NODATA)
        if rel[0].startswith("_"):
            return self._srv(labels, rel, rdtype, source)
        if len(rel) == 1 and (ip := self._ix.nodes.get(rel[0])) is not None:
            if rdtype in (RdataType.A, RdataType.ANY):
                return Resolution(Outcome.ANSWER, answer=(ARecord(_absolute(labels), ip),))
            return self._negative(Outcome.NODATA)
        found = self._containers(rel, source)
        if found is not None:
            return self._a_answer(labels, found, rdtype)
        return self._negative(Outcome.NXDOMAIN)

    # -- internals --------------------------------------------------------------------------

    def _named(self, name: str, source: IPv4Address | None) -> list[Container] | None:
        """Containers named `name` plus serving replicas of service `name`; None if unknown."""
        containers = self._ix.by_name.get(name)
        projects = self._ix.services.get(name)
        if containers is None and projects is None:
            return None
        found = list(containers or ())
        if projects:
            asker = self._ix.by_ip.get(source) if source is not None else None
            mine = asker.project.lower() if asker and asker.project else None
            chosen = (mine,) if mine in projects else sorted(projects)
            for project in chosen:
                found += self._ix.serving.get((name, project), ())
        return _unique(found)

    def _containers(
        self, rel: tuple[str, ...], source: IPv4Address | None
    ) -> list[Container] | None:
        """The containers a zone-relative name names; None if it names none (or a node only)."""
        if len(rel) == 1:
            return self._named(rel[0], source)
        if len(rel) == 2:
            key = (rel[0], rel[1])
            on_node = self._ix.by_name_node.get(key)
            if rel[1] in self._ix.nodes:
                # <name>.<node>: that node's own container only, whatever projects say.
                return list(on_node) if on_node is not None else None
            known = rel[1] in self._ix.services.get(rel[0], ())
            if on_node is None and not known:
                return None
            return _unique([*(on_node or ()), *self._ix.serving.get(key, ())])
        return None

    def _a_answer(
        self, labels: tuple[str, ...], found: list[Container], rdtype: RdataType
    ) -> Resolution:
        if rdtype not in (RdataType.A, RdataType.ANY) or not found:
            return self._negative(Outcome.NODATA)
        name = _absolute(labels)
        records = [ARecord(name, c.ip) for c in found]
        self._rng.shuffle(records)
        return Resolution(Outcome.ANSWER, answer=tuple(records))

    def _srv(
        self,
        labels: tuple[str, ...],
        rel: tuple[str, ...],
        rdtype: RdataType,
        source: IPv4Address | None,
    ) -> Resolution:
        port_label, proto_label, base = rel[0], rel[1], rel[2:]
        protocol = _PROTOCOLS.get(proto_label)
        port = port_label[1:]
        if protocol is None or not port.isdigit() or not base:
            return self._negative(Outcome.NXDOMAIN)
        found = self._containers(base, source) or []
        matching = [
            c for c in found if any(p.port == int(port) and p.protocol == protocol for p in c.ports)
        ]
        if not matching:
            return self._negative(Outcome.NXDOMAIN)
        if rdtype not in (RdataType.SRV, RdataType.ANY):
            return self._negative(Outcome.NODATA)
        name = _absolute(labels)
        self._rng.shuffle(matching)
        answer: list[Record] = []
        additional: list[ARecord] = []
        for c in matching:
            target = self._target(c)
            answer.append(SrvRecord(name, 0, 1, int(port), target))
            additional.append(ARecord(target, c.ip))
        return Resolution(Outcome.ANSWER, answer=tuple(answer), additional=tuple(additional))

    def _target(self, c: Container) -> str:
        node = self._ix.node_names.get(c.node_id, c.node_id.lower())
        return f"{c.name.lower()}.{node}.{self._origin}"

    def _negative(self, outcome: Outcome) -> Resolution:
        return Resolution(outcome, authority=(self._soa,))


def _is_label(name: str) -> bool:
    """Whether `name` fits as one DNS label of the names we hand out."""
    return 0 < len(name.encode()) <= MAX_LABEL and _LABEL.fullmatch(name) is not None


def _absolute(labels: Iterable[str]) -> str:
    return ".".join(labels) + "."


def _unique(containers: list[Container]) -> list[Container]:
    seen: dict[str, Container] = {}
    for c in containers:
        seen.setdefault(c.id, c)
    return list(seen.values())


def rdtype_name(qtype: QType) -> str:
    """`A`, `SRV`, `TYPE65280`: the type's mnemonic, for logs and for resolvers that do not
    import dnspython."""
    return dns.rdatatype.to_text(RdataType.make(qtype))
