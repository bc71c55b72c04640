"""Parsing Docker's container JSON into reports (pure, no dockerd)."""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

from shoal.dockerhost.containers import (
    Inspected,
    health_hint,
    hint_of,
    make_report,
    parse_inspect,
    report_from_inspect,
)
from shoal.dockerhost.events import DockerEvent, since_arg
from shoal.dockerhost.watch import describe_change
from shoal.model.api import ContainerReport
from shoal.model.netmap import PortSpec


def summary(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "Id": "c1" * 32,
        "Names": ["/api/db", "/db"],
        "Labels": {"com.docker.compose.project": "app", "com.docker.compose.service": "db"},
        "Status": "Up 3 seconds (health: starting)",
        "NetworkSettings": {
            "Networks": {
                "bridge": {"IPAddress": "172.17.0.2"},
                "shoal": {"IPAddress": "10.42.1.7"},
            }
        },
    }
    return base | over


def test_health_hint_reads_the_status_line() -> None:
    assert health_hint("Up 3 seconds (health: starting)") == "health: starting"
    assert health_hint("Up About a minute (healthy)") == "healthy"
    assert health_hint("Up 2 hours (unhealthy)") == "unhealthy"
    assert health_hint("Up 2 hours") == ""
    assert health_hint("Up 2 hours (Paused)") == ""


def test_inspect_gives_ports_and_health() -> None:
    attrs = {
        "Config": {"ExposedPorts": {"80/tcp": {}, "53/udp": {}, "53/tcp": {}, "9/sctp": {}}},
        "State": {"Health": {"Status": "unhealthy", "FailingStreak": 3}},
    }
    assert parse_inspect(attrs) == Inspected(
        ports=(
            PortSpec(port=53, protocol="tcp"),
            PortSpec(port=53, protocol="udp"),
            PortSpec(port=80, protocol="tcp"),
        ),
        health="unhealthy",
    )
    assert parse_inspect({"Config": {"ExposedPorts": None}, "State": {}}) == Inspected((), "none")


def test_report_uses_the_networks_address_and_the_compose_labels() -> None:
    ins = Inspected(ports=(PortSpec(port=5432),), health="starting")
    assert make_report(summary(), ins, "shoal") == ContainerReport(
        id="c1" * 32,
        name="db",
        ip=IPv4Address("10.42.1.7"),
        project="app",
        service="db",
        ports=(PortSpec(port=5432),),
        health="starting",
    )
    plain = make_report(summary(Labels=None, Names=["/web"]), Inspected((), "none"), "shoal")
    assert plain is not None and (plain.name, plain.project, plain.service) == ("web", None, None)
    # Not on the network, or no address there yet: nothing to report.
    assert make_report(summary(), ins, "other") is None
    no_ip = summary(NetworkSettings={"Networks": {"shoal": {"IPAddress": ""}}})
    assert make_report(no_ip, ins, "shoal") is None


def test_report_from_an_inspect_alone() -> None:
    attrs = {
        "Id": "c2" * 32,
        "Name": "/cache",
        "State": {"Status": "running", "Health": {"Status": "healthy"}},
        "Config": {"Labels": {}, "ExposedPorts": {"6379/tcp": {}}},
        "NetworkSettings": {"Networks": {"shoal": {"IPAddress": "10.42.1.9"}}},
    }
    assert report_from_inspect(attrs, "shoal") == ContainerReport(
        id="c2" * 32,
        name="cache",
        ip=IPv4Address("10.42.1.9"),
        ports=(PortSpec(port=6379),),
        health="healthy",
    )
    assert report_from_inspect(attrs | {"State": {"Status": "exited"}}, "shoal") is None
    assert hint_of("starting") == health_hint("Up 1 second (health: starting)")
    assert hint_of("none") == health_hint("Up 1 second")


def test_event_parsing_and_since() -> None:
    raw: dict[str, Any] = {
        "Type": "network",
        "Action": "connect",
        "Actor": {"ID": "n1", "Attributes": {"container": "c1", "name": "shoal"}},
        "time": 1700000000,
        "timeNano": 1700000000012345678,
    }
    ev = DockerEvent.parse(raw)
    assert ev == DockerEvent(
        "network", "connect", "n1", 1700000000012345678, raw["Actor"]["Attributes"]
    )
    assert since_arg(1700000000012345678) == "1700000000.012345678"
    assert DockerEvent.parse("garbage") is None


def test_changes_are_logged_as_a_diff() -> None:
    a = ContainerReport(id="a" * 64, name="web", ip=IPv4Address("10.42.1.2"), health="starting")
    b = ContainerReport(id="b" * 64, name="db", ip=IPv4Address("10.42.1.3"))
    assert describe_change(None, [a]) == "+web 10.42.1.2 (starting)"
    healthy = a.model_copy(update={"health": "healthy"})
    assert describe_change([a, b], [healthy]) == "~web health starting => healthy, -db"


def test_reports_stay_within_the_servers_bounds() -> None:
    """The server refuses a whole report past its bounds (shoal.model.api): the agent trims
    ports, drops labels that are not names and leaves out a container it cannot name."""
    attrs = {
        "Id": "c3" * 32,
        "Name": "/media",
        "State": {"Status": "running"},
        "Config": {
            "Labels": {"com.docker.compose.project": "a/b", "com.docker.compose.service": "rtp"},
            "ExposedPorts": {f"{p}/udp": {} for p in range(10000, 10040)},
        },
        "NetworkSettings": {"Networks": {"shoal": {"IPAddress": "10.42.1.9"}}},
    }
    report = report_from_inspect(attrs, "shoal")
    assert report is not None
    assert [p.port for p in report.ports] == list(range(10000, 10032))
    assert (report.project, report.service) == (None, "rtp")
    assert report_from_inspect(attrs | {"Name": "/" + "x" * 129}, "shoal") is None
