"""Pure parsing of Docker's container JSON into `ContainerReport`s (no I/O).

A report combines two sources: the list summary (one call for all containers: id, name,
labels, addresses, a human `Status` line) and the inspect result (per container: exposed ports
and the health check state). Only the health state changes during a container's life, and the
summary's `Status` line mirrors it ("Up 3 seconds (health: starting)"), so `health_hint` of that
line is what an inspect result is cached under.

Docker records a container's state for the list only after some events announce it (a network
`connect` event comes before the list shows the new address), so the containers an event names
are described from a fresh inspect instead, which waits for the container's lock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, ip_address
from typing import Any

from shoal.model.api import (
    CONTAINER_ID,
    DOCKER_NAME,
    LABEL_PREFIX,
    MAX_LABEL,
    MAX_LABELS,
    MAX_PORTS,
    ContainerReport,
)
from shoal.model.netmap import Health, PortSpec

COMPOSE_PROJECT = "com.docker.compose.project"
COMPOSE_SERVICE = "com.docker.compose.service"
_HEALTH_HINT = re.compile(r"\((health: starting|healthy|unhealthy)\)\s*$")
_NAME = re.compile(DOCKER_NAME)
_ID = re.compile(CONTAINER_ID)
_HEALTHS: dict[str, Health] = {
    "starting": "starting",
    "healthy": "healthy",
    "unhealthy": "unhealthy",
}


@dataclass(frozen=True, slots=True)
class Inspected:
    """What only an inspect tells: exposed ports and the health check state."""

    ports: tuple[PortSpec, ...]
    health: Health


def health_hint(status: str) -> str:
    """The health part of a summary's `Status` line ("" for a container without a check)."""
    m = _HEALTH_HINT.search(status)
    return m.group(1) if m else ""


def primary_name(names: list[str]) -> str | None:
    """The container's own name: the one without a link prefix ("/web", not "/app/web")."""
    for name in names:
        if name.count("/") == 1 and name.startswith("/"):
            return name[1:]
    return None


def network_ip(attrs: dict[str, Any], network: str) -> IPv4Address | None:
    """The container's IPv4 address on `network` (from a summary or an inspect), else None."""
    nets = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
    raw = (nets.get(network) or {}).get("IPAddress") or ""
    try:
        ip = ip_address(raw)
    except ValueError:
        return None
    return ip if isinstance(ip, IPv4Address) else None


def parse_inspect(attrs: dict[str, Any]) -> Inspected:
    """Exposed ports (tcp and udp, sorted) and health ("none" without a check) of an inspect."""
    ports: set[PortSpec] = set()
    for key in (attrs.get("Config") or {}).get("ExposedPorts") or {}:
        port, _, proto = str(key).partition("/")
        if proto in ("tcp", "udp") and port.isdigit() and 1 <= int(port) <= 65535:
            ports.add(PortSpec(port=int(port), protocol=proto))
    status = ((attrs.get("State") or {}).get("Health") or {}).get("Status") or ""
    return Inspected(
        ports=tuple(sorted(ports, key=lambda p: (p.port, p.protocol))),
        health=_HEALTHS.get(status, "none"),
    )


def _report(
    cid: str, name: str | None, ip: IPv4Address | None, labels: Any, inspected: Inspected
) -> ContainerReport | None:
    # Within the server's bounds (shoal.model.api), or the whole report would be refused:
    # a container whose name is not one is left out, compose labels that are not names are
    # dropped, and only the lowest MAX_PORTS ports are served as SRV records.
    if name is None or ip is None or not _valid(name) or not _ID.match(cid):
        return None
    labels = labels or {}
    project, service = labels.get(COMPOSE_PROJECT), labels.get(COMPOSE_SERVICE)
    return ContainerReport(
        id=cid,
        name=name,
        ip=ip,
        project=project if _valid(project) else None,
        service=service if _valid(service) else None,
        ports=inspected.ports[:MAX_PORTS],
        health=inspected.health,
        labels=shoal_labels(labels),
    )


def _valid(text: object) -> bool:
    return isinstance(text, str) and len(text) <= MAX_LABEL and _NAME.match(text) is not None


def shoal_labels(labels: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """The container's `shoal.*` labels, sorted; at most MAX_LABELS, each within the report's
    bounds (longer ones are left out rather than refusing the whole report)."""
    mine = sorted(
        (str(k), str(v))
        for k, v in labels.items()
        if str(k).startswith(LABEL_PREFIX) and len(str(k)) <= 64 and len(str(v)) <= 256
    )
    return tuple(mine[:MAX_LABELS])


def make_report(
    summary: dict[str, Any], inspected: Inspected, network: str
) -> ContainerReport | None:
    """The report for a list summary, or None when it has no name or no IPv4 on `network`."""
    name = primary_name(summary.get("Names") or [])
    ip = network_ip(summary, network)
    return _report(summary["Id"], name, ip, summary.get("Labels"), inspected)


def report_from_inspect(attrs: dict[str, Any], network: str) -> ContainerReport | None:
    """The report for an inspect result alone; None unless running with an IPv4 on `network`."""
    if (attrs.get("State") or {}).get("Status") != "running":
        return None
    name = str(attrs.get("Name") or "").removeprefix("/") or None
    labels = (attrs.get("Config") or {}).get("Labels")
    return _report(attrs["Id"], name, network_ip(attrs, network), labels, parse_inspect(attrs))


def hint_of(health: Health) -> str:
    """The `health_hint` a summary shows for a container in this health state."""
    return {"none": "", "starting": "health: starting"}.get(health, health)
