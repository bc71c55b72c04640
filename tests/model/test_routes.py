"""`--advertise-routes` as the agent parses it and the server validates it."""

from __future__ import annotations

from ipaddress import IPv4Network

import pytest
from pydantic import ValidationError

from shoal.model.api import RegisterRequest
from shoal.model.keys import PrivateKey
from shoal.model.routes import MAX_ROUTES, parse_routes, route_id


def test_parse_sorts_and_dedups() -> None:
    assert parse_routes("192.168.7.0/24, 10.1.0.0/16,192.168.7.0/24,") == (
        IPv4Network("10.1.0.0/16"),
        IPv4Network("192.168.7.0/24"),
    )
    assert parse_routes("") == ()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (
            "192.168.7.1/24",
            "--advertise-routes: '192.168.7.1/24': 192.168.7.1/24 has host bits set",
        ),
        ("lan", "--advertise-routes: 'lan':"),
        ("0.0.0.0/0", "a default route is not a subnet route"),
        ("127.0.0.0/8", "loopback, multicast, link-local or reserved"),
        ("10.0.0.0/8,10.1.0.0/16", "the advertised routes 10.0.0.0/8 and 10.1.0.0/16 overlap"),
    ],
)
def test_bad_routes_say_which_and_why(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=r"^--advertise-routes: ") as err:
        parse_routes(text)
    assert says in str(err.value)


def test_the_server_bounds_what_it_is_sent() -> None:
    key = PrivateKey.generate().public_key()
    many = tuple(IPv4Network(f"10.{i}.0.0/16") for i in range(MAX_ROUTES + 1))
    with pytest.raises(ValidationError):
        RegisterRequest(name="h1", public_key=key, advertise_routes=many)
    with pytest.raises(ValidationError, match="overlap"):
        RegisterRequest(
            name="h1",
            public_key=key,
            advertise_routes=(IPv4Network("10.0.0.0/8"), IPv4Network("10.9.0.0/16")),
        )
    assert RegisterRequest(name="h1", public_key=key).advertise_routes is None


def test_route_ids_are_stable_per_node_and_prefix() -> None:
    lan = IPv4Network("192.168.7.0/24")
    assert route_id("n1", lan) == route_id("n1", lan) != route_id("n2", lan)
    assert len(route_id("n1", lan)) == 10
