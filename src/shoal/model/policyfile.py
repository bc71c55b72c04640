"""Reading a policy file (YAML) into `shoal.model.policy.Policy`, every mistake one line naming
the file and line. Apart from the model so that only what reads policy files imports PyYAML
(`shoal.model.policy.parse` imports this module when called)."""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Network

import yaml

from shoal.model.policy import (
    MAX_POLICY_BYTES,
    Claim,
    Endpoint,
    Policy,
    PolicyError,
    PolicyTest,
    PortRange,
    Proto,
    Rule,
    Selector,
)

_PROTOS: tuple[Proto, ...] = ("tcp", "udp", "icmp", "any")
_KINDS: tuple[str, ...] = ("node", "tag", "project", "service", "label", "cidr", "mesh-host")


def read_policy(text: str, file: str) -> Policy:
    """`shoal.model.policy.parse`: the policy in `text`, or PolicyError at the first mistake."""
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
