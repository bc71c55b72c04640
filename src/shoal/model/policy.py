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

from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

Proto = Literal["tcp", "udp", "icmp", "any"]
SelectorKind = Literal["any", "node", "tag", "project", "service", "label", "cidr", "mesh-host"]
MAX_POLICY_BYTES = 1024 * 1024
_PROTOS: tuple[Proto, ...] = ("tcp", "udp", "icmp", "any")
_KINDS: tuple[str, ...] = ("node", "tag", "project", "service", "label", "cidr", "mesh-host")


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
    if len(text.encode()) > MAX_POLICY_BYTES:
        raise PolicyError(f"{file}:1: larger than {MAX_POLICY_BYTES} bytes")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise PolicyError(f"{file}:{line}: not valid YAML: {problem}") from exc
    p = _Parser(file)
    if root is None:
        return Policy(file=file)
    top = p.mapping(root, "the policy", ("rules", "publish", "tests"))
    return Policy(
        file=file,
        rules=tuple(p.rule(n) for n in p.items(top.get("rules"))),
        publish=tuple(p.claim(n) for n in p.items(top.get("publish"))),
        tests=tuple(p.test(n) for n in p.items(top.get("tests"))),
    )


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


class _Parser:
    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, node: yaml.Node, message: str) -> PolicyError:
        return PolicyError(f"{self.file}:{node.start_mark.line + 1}: {message}")

    def mapping(self, node: yaml.Node, what: str, allowed: tuple[str, ...]) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a mapping")
        out: dict[str, yaml.Node] = {}
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else None
            if name not in allowed:
                raise self.fail(
                    key, f"unknown key {name!r} in {what} (allowed: {', '.join(allowed)})"
                )
            if name in out:
                raise self.fail(key, f"{name!r} given twice")
            out[name] = value
        return out

    def items(self, node: yaml.Node | None) -> Iterator[yaml.Node]:
        if node is None or (isinstance(node, yaml.ScalarNode) and node.value in ("", "null")):
            return iter(())
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, "must be a list")
        return iter(node.value)

    def scalars(self, node: yaml.Node, what: str) -> list[tuple[yaml.Node, str]]:
        nodes = node.value if isinstance(node, yaml.SequenceNode) else [node]
        out: list[tuple[yaml.Node, str]] = []
        for n in nodes:
            if not isinstance(n, yaml.ScalarNode) or n.value == "":
                raise self.fail(n, f"{what} must be a string or a list of strings")
            out.append((n, str(n.value)))
        if not out:
            raise self.fail(node, f"{what} must not be empty")
        return out

    def required(
        self, m: dict[str, yaml.Node], key: str, parent: yaml.Node, what: str
    ) -> yaml.Node:
        if key not in m:
            raise self.fail(parent, f"{what} needs {key!r}")
        return m[key]

    def selector(self, node: yaml.Node, text: str) -> Selector:
        if text == "*":
            return Selector(kind="any")
        if text == "mesh-host":
            return Selector(kind="mesh-host")
        kind, sep, value = text.partition(":")
        if not sep or kind not in _KINDS or not value:
            raise self.fail(
                node,
                f"bad selector {text!r} (one of *, node:NAME, tag:TAG, project:P, service:S, "
                "service:P/S, label:KEY=VALUE, cidr:NET, mesh-host, mesh-host:NAME)",
            )
        if kind == "cidr":
            try:
                net = IPv4Network(value, strict=True)
            except ValueError as exc:
                raise self.fail(node, f"bad CIDR {value!r}: {exc}") from exc
            value = str(net)
        if kind == "label" and "=" not in value:
            raise self.fail(node, f"label selector {text!r} needs KEY=VALUE")
        return Selector.model_validate({"kind": kind, "value": value})

    def selectors(self, node: yaml.Node, what: str) -> tuple[Selector, ...]:
        return tuple(self.selector(n, text) for n, text in self.scalars(node, what))

    def proto(self, node: yaml.Node | None, default: Proto) -> Proto:
        if node is None:
            return default
        text = node.value if isinstance(node, yaml.ScalarNode) else None
        for proto in _PROTOS:
            if text == proto:
                return proto
        raise self.fail(node, f"proto must be one of {', '.join(_PROTOS)}, not {text!r}")

    def port_range(self, node: yaml.Node, text: str) -> PortRange:
        first, sep, last = text.partition("-")
        try:
            lo, hi = int(first), int(last if sep else first)
        except ValueError:
            lo = hi = 0
        if not (1 <= lo <= hi <= 65535):
            raise self.fail(node, f"bad port {text!r} (a port 1-65535 or a range like 8000-8080)")
        return PortRange(first=lo, last=hi)

    def rule(self, node: yaml.Node) -> Rule:
        m = self.mapping(node, "a rule", ("from", "to", "ports", "proto"))
        ports = tuple(
            self.port_range(n, text)
            for n, text in (self.scalars(m["ports"], "ports") if "ports" in m else [])
        )
        proto = self.proto(m.get("proto"), "tcp" if ports else "any")
        if ports and proto in ("icmp", "any"):
            raise self.fail(m["ports"], f"ports need proto tcp or udp, not {proto}")
        return Rule(
            line=node.start_mark.line + 1,
            sources=self.selectors(self.required(m, "from", node, "a rule"), "from"),
            dests=self.selectors(self.required(m, "to", node, "a rule"), "to"),
            proto=proto,
            ports=tuple(sorted(set(ports), key=lambda r: (r.first, r.last))),
        )

    def claim(self, node: yaml.Node) -> Claim:
        m = self.mapping(node, "a publish entry", ("tags", "names"))
        return Claim(
            line=node.start_mark.line + 1,
            tags=tuple(t for _n, t in self.scalars(self.required(m, "tags", node, "it"), "tags")),
            names=tuple(
                n for _n, n in self.scalars(self.required(m, "names", node, "it"), "names")
            ),
        )

    def endpoint(self, node: yaml.Node, what: str) -> Endpoint:
        fields: dict[str, object] = {}
        tags: list[str] = []
        labels: list[tuple[str, str]] = []
        for sel in self.selectors(node, what):
            if sel.kind == "tag":
                tags.append(sel.value or "")
            elif sel.kind == "label":
                labels.append(sel.label())
            elif sel.kind == "mesh-host":
                fields["host"] = True
                if sel.value is not None:
                    fields["node"] = sel.value
            elif sel.kind == "cidr":
                net = sel.network()
                if net.num_addresses != 1:
                    raise self.fail(node, f"a test endpoint is one address, not {net}")
                fields["ip"] = net.network_address
            elif sel.kind == "service":
                project, service = sel.service()
                fields["service"] = service
                if project is not None:
                    fields["project"] = project
            elif sel.kind in ("node", "project"):
                fields[sel.kind] = sel.value
            else:
                raise self.fail(node, f"a test's {what} describes one endpoint: * is no endpoint")
        return Endpoint.model_validate(
            {**fields, "tags": tuple(sorted(tags)), "labels": tuple(sorted(labels))}
        )

    def test(self, node: yaml.Node) -> PolicyTest:
        m = self.mapping(node, "a test", ("from", "to", "port", "proto", "expect"))
        port: int | None = None
        if "port" in m:
            port = self.port_range(m["port"], str(m["port"].value)).first
        proto = self.proto(m.get("proto"), "tcp" if port is not None else "icmp")
        if port is None and proto != "icmp":
            raise self.fail(node, f"a {proto} test needs a port")
        expect = self.required(m, "expect", node, "a test")
        if expect.value not in ("allow", "deny"):
            raise self.fail(expect, f"expect must be allow or deny, not {expect.value!r}")
        return PolicyTest(
            line=node.start_mark.line + 1,
            src=self.endpoint(self.required(m, "from", node, "a test"), "from"),
            dst=self.endpoint(self.required(m, "to", node, "a test"), "to"),
            proto=proto,
            port=port if proto != "icmp" else None,
            expect=expect.value,
        )
