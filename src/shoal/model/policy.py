"""The access-control policy: its YAML format parsed into frozen values, every error one line
naming the file and line (`policy.yaml:12: ...`).

A policy allows; everything it does not allow is denied (with no policy at all, shoal keeps
its defaults: containers reach containers across hosts, hosts' own services are closed but
ICMP). The format:

    rules:                       # each one allows traffic from -> to
      - from: service:web        # a selector or a list of them
        to: service:db
        ports: 5432              # a port, "8000-8080", or a list; none: every port
        proto: tcp               # tcp | udp | icmp | any; default tcp with ports, else any
    publish:                     # who may publish which DNS names (names not listed: anyone)
      - tags: [db]
        names: [db]
    tests:                       # checked by `policy check` and by `policy set`
      - {from: service:web, to: service:db, port: 5432, expect: allow}

Selectors: `*` (every mesh member), `node:NAME`, `tag:TAG` (the tags of the token that joined
the node), `project:P`, `service:S` or `service:P/S` (compose), `label:KEY=VALUE` (a
container's `shoal.*` label), `cidr:A.B.C.D/N`, `mesh-host` or `mesh-host:NAME` (a node's own
services on its mesh IP). As a source, `node:` and `tag:` cover the node's containers and the
host itself; as a destination they cover its containers only (a host's own services are only
ever opened by `mesh-host`).

A test's `from` and `to` describe one endpoint with the same syntax (`[service:db, tag:prod]`:
a replica of compose service db on a host tagged prod); a rule matches it when one of its
selectors names an attribute the endpoint has. Tests need no running mesh.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Proto = Literal["tcp", "udp", "icmp", "any"]
SelectorKind = Literal["any", "node", "tag", "project", "service", "label", "cidr", "mesh-host"]
MAX_POLICY_BYTES = 1024 * 1024


class Frozen(BaseModel):
    # shoal.model.netmap.Frozen's twin: the netmap carries a Policy, so this cannot import it.
    model_config = ConfigDict(frozen=True, extra="forbid")


class PolicyError(ValueError):
    """The policy is wrong (the author's fault): `str()` is one line `file:line: what`."""


class PortRange(Frozen):
    first: int = Field(ge=1, le=65535)
    last: int = Field(ge=1, le=65535)

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"

    def __contains__(self, port: int) -> bool:
        return self.first <= port <= self.last


class Selector(Frozen):
    """One selector: `kind` and its value (None for `*` and a bare `mesh-host`)."""

    kind: SelectorKind
    value: str | None = None

    def __str__(self) -> str:
        if self.kind == "any":
            return "*"
        return self.kind if self.value is None else f"{self.kind}:{self.value}"

    def network(self) -> IPv4Network:
        """The network of a `cidr:` selector."""
        return IPv4Network(self.value or "")

    def label(self) -> tuple[str, str]:
        """(key, value) of a `label:` selector."""
        key, _, value = (self.value or "").partition("=")
        return key, value

    def service(self) -> tuple[str | None, str]:
        """(project or None, service) of a `service:` selector."""
        project, _, service = (self.value or "").rpartition("/")
        return project or None, service


class Endpoint(Frozen):
    """What a test's `from` or `to` describes: one container, or a host (`host`) itself."""

    host: bool = False
    node: str | None = None
    tags: tuple[str, ...] = ()
    project: str | None = None
    service: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    ip: IPv4Address | None = None


class Rule(Frozen):
    line: int
    sources: tuple[Selector, ...]
    dests: tuple[Selector, ...]
    proto: Proto
    ports: tuple[PortRange, ...] = ()  # empty: every port

    def allows_port(self, proto: Proto, port: int | None) -> bool:
        """Whether this rule's protocol and ports cover `proto`/`port` (port None: icmp)."""
        if self.proto != "any" and self.proto != proto:
            return False
        return not self.ports or (port is not None and any(port in r for r in self.ports))

    def describe(self) -> str:
        ports = ",".join(str(p) for p in self.ports) or "all ports"
        return (
            f"{', '.join(str(s) for s in self.sources)} -> "
            f"{', '.join(str(s) for s in self.dests)} {self.proto} {ports}"
        )


class Claim(Frozen):
    """Only nodes with one of `tags` may publish `names` (compose services or containers)."""

    line: int
    tags: tuple[str, ...]
    names: tuple[str, ...]


class PolicyTest(Frozen):
    line: int
    src: Endpoint
    dst: Endpoint
    proto: Proto
    port: int | None
    expect: Literal["allow", "deny"]


class Policy(Frozen):
    """A parsed policy; `revision` is 0 until the server accepted it."""

    file: str
    revision: int = 0
    rules: tuple[Rule, ...] = ()
    publish: tuple[Claim, ...] = ()
    tests: tuple[PolicyTest, ...] = ()

    def where(self, line: int) -> str:
        return f"{self.file}:{line}"

    def may_publish(self, tags: tuple[str, ...], name: str) -> bool:
        """Whether a node with `tags` may publish DNS name `name`: names no claim lists are
        anyone's; a claimed name only its claimants'."""
        claims = [c for c in self.publish if name in c.names]
        return not claims or any(set(c.tags) & set(tags) for c in claims)


def parse(text: str, file: str = "policy.yaml") -> Policy:
    """The policy in `text`; raises PolicyError (`file:line: ...`) at the first mistake."""
    # Its reader (and PyYAML) is imported only here: an agent gets its policy parsed, in the
    # netmap, and a join does not pay for the import (~10 ms of CPU).
    from shoal.model.policyfile import read_policy

    return read_policy(text, file)


def run_tests(policy: Policy) -> list[str]:
    """The inline tests that fail, as `file:line: ...` lines (empty: all pass)."""
    failed = []
    for test in policy.tests:
        rule = decide(policy, test.src, test.dst, test.proto, test.port)
        got = "deny" if rule is None else "allow"
        if got != test.expect:
            why = "no rule allows it" if rule is None else f"rule at {policy.where(rule.line)}"
            failed.append(
                f"{policy.where(test.line)}: test expects {test.expect}, policy says {got} ({why})"
            )
    return failed


def decide(
    policy: Policy, src: Endpoint, dst: Endpoint, proto: Proto, port: int | None
) -> Rule | None:
    """The first rule allowing `src` -> `dst`, or None (denied)."""
    for rule in policy.rules:
        if (
            rule.allows_port(proto, port)
            and any(matches(s, src, source=True) for s in rule.sources)
            and any(matches(s, dst, source=False) for s in rule.dests)
        ):
            return rule
    return None


def matches(sel: Selector, ep: Endpoint, *, source: bool) -> bool:
    """Whether `sel` selects endpoint `ep` (as a source when `source`, else a destination);
    the same meaning `shoal.plan.policy` gives selectors over real addresses."""
    if sel.kind == "mesh-host":
        return ep.host and (sel.value is None or sel.value == ep.node)
    if ep.host and not source:
        return False  # a host's own services are only ever selected by mesh-host
    if sel.kind == "any":
        return True
    if sel.kind == "node":
        return ep.node == sel.value
    if sel.kind == "tag":
        return sel.value in ep.tags
    if sel.kind == "cidr":
        return ep.ip is not None and ep.ip in sel.network()
    if ep.host:
        return False  # container attributes never describe a host
    if sel.kind == "project":
        return ep.project == sel.value
    if sel.kind == "service":
        project, service = sel.service()
        return ep.service == service and (project is None or ep.project == project)
    return sel.label() in ep.labels  # label
