from ipaddress import IPv4Address
from operator import attrgetter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.control import encoding
from shoal.control.encoding import MapEncoder, RecordPieces
from shoal.model.api import RegisterResponse
from shoal.model.netmap import Container, MapUpdate, NetworkMap, PortSpec
from shoal.testing.builders import netmap, node


def container(i: int, health: str = "none") -> Container:
    return Container.model_validate(
        {
            "id": f"{i:012x}",
            "node_id": f"n{i % 7 + 1}",
            "name": f"c{i}",
            "ip": IPv4Address(0x0A2A0002 + i),
            "project": "shop" if i % 2 else None,
            "service": "api" if i % 2 else None,
            "ports": (PortSpec(port=80 + i % 3),) if i % 3 else (),
            "health": health,
        }
    )


def a_map(peers: list[int], containers: list[int], revision: int) -> NetworkMap:
    return netmap(200, peers, revision=revision).model_copy(
        update={"containers": tuple(container(i) for i in containers)}
    )


indexes = st.lists(st.integers(1, 150), unique=True, max_size=20).map(sorted)


@settings(deadline=None)  # a property, not a timing: a loaded machine missed the 200 ms default
@given(peers=indexes, containers=indexes, revision=st.integers(1, 10**9))
def test_spliced_maps_parse_to_the_model_encoded(
    peers: list[int], containers: list[int], revision: int
) -> None:
    encoder = MapEncoder()
    m = a_map(peers, containers, revision)
    assert NetworkMap.model_validate_json(encoder.network_map(m)) == m

    full = MapUpdate(kind="full", revision=revision, full=m)
    assert MapUpdate.model_validate_json(encoder.update(full)) == full

    delta = MapUpdate(
        kind="delta",
        revision=revision,
        self_node=node(200),
        peers_changed=m.peers,
        peers_removed=("n999",),
        containers_changed=m.containers,
        containers_removed=(("n1", "dead"),),
    )
    assert MapUpdate.model_validate_json(encoder.update(delta)) == delta

    none = MapUpdate(kind="none", revision=revision)
    assert MapUpdate.model_validate_json(encoder.update(none)) == none

    reply = RegisterResponse(node_id="n200", netmap=m)
    assert RegisterResponse.model_validate_json(encoder.register_response(reply)) == reply


def test_a_changed_record_is_encoded_again() -> None:
    encoder = MapEncoder()
    before = a_map([1, 2], [3], revision=1)
    assert b'"health":"none"' in encoder.network_map(before)

    sick = container(3, health="unhealthy")
    after = before.model_copy(update={"revision": 2, "containers": (sick,)})
    body = encoder.network_map(after)
    assert b'"health":"unhealthy"' in body and b'"health":"none"' not in body


def test_one_delta_object_is_encoded_once() -> None:
    encoder = MapEncoder()
    delta = MapUpdate(kind="delta", revision=3, peers_changed=(node(4),))
    first = encoder.update(delta)
    assert encoder.update(delta) is first
    assert encoder.update(delta.model_copy()) == first


def test_every_stream_gets_the_same_frame_of_one_delta() -> None:
    encoder = MapEncoder()
    delta = MapUpdate(kind="delta", revision=3, peers_changed=(node(4),))
    frame = encoder.line(delta)
    assert encoder.line(delta) is frame
    assert frame == encoder.update(delta) + b"\n" and frame.count(b"\n") == 1
    assert MapUpdate.model_validate_json(frame) == delta


def test_records_no_longer_asked_for_are_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encoding, "MIN_RECORDS_KEPT", 4)
    pieces: RecordPieces[Container] = RecordPieces(attrgetter("key"))
    for i in range(100):
        pieces.encode(container(i))
    held = len(pieces._young) + len(pieces._old)
    assert held <= 8

    # A map larger than the limit grows it, so a map's own records are never evicted by it.
    many = tuple(container(i) for i in range(50))
    pieces.array(many)
    cached = {**pieces._old, **pieces._young}
    assert all(cached[c.key][0] is c for c in many)
