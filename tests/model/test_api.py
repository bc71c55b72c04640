"""Bounds of the API bodies, parsed at the edge (issue 7, findings 3 and 9)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shoal.model.api import (
    MAX_CONTAINERS,
    MAX_PORTS,
    ContainerReport,
    ContainersReport,
    RegisterRequest,
    TokenCreateRequest,
)
from shoal.model.keys import PrivateKey
from shoal.model.netmap import MAX_ENDPOINTS

KEY = str(PrivateKey(bytes([7]) * 32).public_key())


def endpoints(*hosts: str, port: int = 51820) -> RegisterRequest:
    """A registration advertising `hosts`: the one place endpoints enter the server."""
    return RegisterRequest.model_validate(
        {
            "name": "h1",
            "public_key": KEY,
            "endpoints": [{"host": h, "port": port} for h in hosts],
        }
    )


@pytest.mark.parametrize(
    "host",
    [
        "0.0.0.0",
        "127.0.0.1",
        "127.9.9.9",
        "255.255.255.255",
        "224.0.0.1",
        "169.254.1.1",
        "240.0.0.1",
    ],
)
def test_endpoints_that_peers_cannot_send_to_are_refused(host: str) -> None:
    with pytest.raises(ValidationError, match=r"not a unicast|reserved or broadcast"):
        endpoints("192.0.2.1", host)


def test_lan_and_public_unicast_endpoints_are_accepted() -> None:
    got = endpoints("192.168.1.2", "10.1.2.3", "203.0.113.5", "8.8.8.8")
    assert [str(e) for e in got.endpoints] == [
        "192.168.1.2:51820",
        "10.1.2.3:51820",
        "203.0.113.5:51820",
        "8.8.8.8:51820",
    ]


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_endpoint_ports_are_1_to_65535(port: int) -> None:
    with pytest.raises(ValidationError):
        endpoints("192.0.2.1", port=port)


def test_endpoints_per_node_are_bounded() -> None:
    assert len(endpoints(*[f"192.0.2.{i}" for i in range(1, MAX_ENDPOINTS + 1)]).endpoints) == 16
    with pytest.raises(ValidationError, match=f"at most {MAX_ENDPOINTS} items"):
        endpoints(*[f"192.0.2.{i}" for i in range(1, MAX_ENDPOINTS + 2)])


@pytest.mark.parametrize("seconds", [1e20, 10**30, 0, -5])
def test_token_lifetimes_out_of_range_are_validation_errors(seconds: float) -> None:
    """`expires_in_seconds: 1e20` was a 500 (timedelta overflow); now a 400 at the edge."""
    with pytest.raises(ValidationError):
        TokenCreateRequest.model_validate({"expires_in_seconds": seconds})


def report(n: int, ports: int = 0) -> dict[str, object]:
    return {
        "id": f"{n:064x}",
        "name": f"c{n}",
        "ip": f"10.42.0.{n % 250 + 2}",
        "ports": [{"port": p} for p in range(1, ports + 1)],
    }


def test_containers_per_node_and_ports_per_container_are_bounded() -> None:
    ContainersReport.model_validate({"containers": [report(n) for n in range(MAX_CONTAINERS)]})
    with pytest.raises(ValidationError, match=f"at most {MAX_CONTAINERS} items"):
        ContainersReport.model_validate(
            {"containers": [report(n) for n in range(MAX_CONTAINERS + 1)]}
        )
    ContainerReport.model_validate(report(1, ports=MAX_PORTS))
    with pytest.raises(ValidationError, match=f"at most {MAX_PORTS} items"):
        ContainerReport.model_validate(report(1, ports=MAX_PORTS + 1))


def test_the_largest_valid_report_stays_under_a_megabyte_as_a_delta() -> None:
    """The bound's reason: the worst report a node may send is what every node downloads."""
    from shoal.model.netmap import Container, MapUpdate

    long = "x" * 128
    worst = ContainersReport.model_validate(
        {
            "containers": [
                {
                    **report(n, ports=MAX_PORTS),
                    "name": long,
                    "project": long,
                    "service": long,
                    "health": "unhealthy",
                }
                for n in range(MAX_CONTAINERS)
            ]
        }
    )
    delta = MapUpdate(
        kind="delta",
        revision=2**40,
        containers_changed=tuple(
            Container(node_id="n0123456789ab", **c.model_dump()) for c in worst.containers
        ),
    )
    assert len(delta.model_dump_json()) < 1_000_000


@pytest.mark.parametrize(
    ("field", "value"),
    [("id", "xyz"), ("id", "a" * 65), ("name", "a b"), ("name", "x" * 129), ("service", "a/b")],
)
def test_container_ids_and_names_are_checked(field: str, value: str) -> None:
    with pytest.raises(ValidationError):
        ContainerReport.model_validate({**report(1), field: value})
