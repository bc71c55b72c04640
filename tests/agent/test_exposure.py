"""The host exposure check over /proc/net/tcp{,6} tables."""

from __future__ import annotations

from pathlib import Path

from shoal.agent import exposure
from shoal.model.policy import Proto, parse
from shoal.plan.policy import HostPolicy, compile_for
from tests.policy.conftest import example, mesh

HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"
TCP = HEADER + (
    # 0.0.0.0:2375 LISTEN, 127.0.0.1:2376 LISTEN, 192.0.2.5:2377 LISTEN, 0.0.0.0:2375 ESTAB
    "   0: 00000000:0947 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0\n"
    "   1: 0100007F:0948 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0\n"
    "   2: 050200C0:0949 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0\n"
    "   3: 00000000:0947 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0\n"
)
TCP6 = HEADER + (
    # [::1]:2375 and [::]:2376, both LISTEN
    "   0: 00000000000000000000000001000000:0947 00000000000000000000000000000000:0000 0A 0\n"
    "   1: 00000000000000000000000000000000:0948 00000000000000000000000000000000:0000 0A 0\n"
)


def test_listeners_decode_addresses_and_ports() -> None:
    assert [(str(a), p) for a, p in exposure.listeners(TCP)] == [
        ("0.0.0.0", 2375),
        ("127.0.0.1", 2376),
        ("192.0.2.5", 2377),
    ]
    assert [(str(a), p) for a, p in exposure.listeners(TCP6)] == [("::1", 2375), ("::", 2376)]


def test_non_loopback_docker_and_swarm_listeners_are_warnings() -> None:
    found = exposure.exposed([TCP, TCP6])
    assert set(found) == {exposure.DOCKER_API_EXPOSED, exposure.SWARM_EXPOSED}
    docker = found[exposure.DOCKER_API_EXPOSED]
    assert "the Docker API (plain TCP) listens on 0.0.0.0:2375" in docker
    assert "the Docker API (TLS) listens on [::]:2376" in docker
    assert "on 127.0.0.1" not in docker and "[::1]" not in docker
    assert "Swarm management listens on 192.0.2.5:2377" in found[exposure.SWARM_EXPOSED]


def test_check_reads_the_tables_and_tolerates_a_missing_one(tmp_path: Path) -> None:
    (tmp_path / "tcp").write_text(HEADER)
    assert exposure.check(proc_net=tmp_path) == {}
    (tmp_path / "tcp").write_text(TCP)
    assert set(exposure.check(proc_net=tmp_path)) == {"docker-api-exposed", "swarm-exposed"}


# 100.64.0.2 is h2's mesh IP (tests.policy's mesh); little-endian words as /proc prints them.
MESH_TCP = HEADER + (
    # 0.0.0.0:22, 100.64.0.2:8080, 127.0.0.1:8000, 192.0.2.5:8001 (underlay only), all LISTEN
    "   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0\n"
    "   1: 02004064:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0\n"
    "   2: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0\n"
    "   3: 050200C0:1F41 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0\n"
)
MESH_TCP6 = HEADER + (
    # [::]:8002 LISTEN (dual stack: it takes the mesh IP too)
    "   0: 00000000000000000000000000000000:1F42 00000000000000000000000000000000:0000 0A 0\n"
)
MESH_UDP = HEADER + (
    # 0.0.0.0:8003 bound (07); 0.0.0.0:9000 connected (01): a client, nothing to reach
    "   0: 00000000:1F43 00000000:0000 07 00000000:00000000 00:00000000 00000000     0\n"
    "   1: 00000000:2328 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0\n"
)


def h2_policy() -> HostPolicy:
    """The README's example compiled for h2: tag:ops reaches mesh-host on 22 and 8000-8080."""
    return compile_for(example(), mesh(2, example()))


def test_listeners_the_policy_opens_to_the_mesh_are_named_with_the_rule() -> None:
    tables: dict[Proto, list[str]] = {"tcp": [MESH_TCP, MESH_TCP6], "udp": [MESH_UDP]}
    found = exposure.reachable_over_mesh(tables, h2_policy())
    assert set(found) == {exposure.MESH_LISTENER}
    assert found[exposure.MESH_LISTENER] == (
        "host services reachable over the mesh on 100.64.0.2: "
        "tcp 0.0.0.0:22 (opened by example.yaml:6); "
        "tcp 100.64.0.2:8080 (opened by example.yaml:6); "
        "tcp [::]:8002 (opened by example.yaml:6) "
        "(bind them to 127.0.0.1, or narrow the rule if the mesh is not meant to reach them)"
    )
    # loopback, an underlay address, a UDP port no rule opens: not reachable over the mesh
    assert "8000" not in found[exposure.MESH_LISTENER]
    assert "8001" not in found[exposure.MESH_LISTENER]
    assert "8003" not in found[exposure.MESH_LISTENER]


def test_a_rule_opening_every_port_reaches_udp_receivers_too() -> None:
    policy = parse("rules:\n  - {from: tag:ops, to: mesh-host:h2}\n", "p.yaml")
    compiled = compile_for(policy, mesh(2, policy))
    found = exposure.reachable_over_mesh({"udp": [MESH_UDP]}, compiled)
    assert found[exposure.MESH_LISTENER].startswith(
        "host services reachable over the mesh on 100.64.0.2: udp 0.0.0.0:8003 (opened by p.yaml:2)"
    )


def test_with_no_policy_or_no_mesh_host_rule_nothing_is_reachable() -> None:
    tables: dict[Proto, list[str]] = {"tcp": [MESH_TCP, MESH_TCP6], "udp": [MESH_UDP]}
    assert exposure.reachable_over_mesh(tables, None) == {}
    containers_only = parse("rules:\n  - {from: '*', to: '*'}\n", "p.yaml")
    compiled = compile_for(containers_only, mesh(2, containers_only))
    assert exposure.reachable_over_mesh(tables, compiled) == {}


def test_check_reads_udp_tables_with_the_enforced_policy(tmp_path: Path) -> None:
    (tmp_path / "tcp").write_text(MESH_TCP)
    (tmp_path / "udp").write_text(MESH_UDP)
    assert exposure.check(None, tmp_path) == {}
    assert set(exposure.check(h2_policy(), tmp_path)) == {exposure.MESH_LISTENER}
