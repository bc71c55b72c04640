"""The host exposure check over /proc/net/tcp{,6} tables."""

from __future__ import annotations

from pathlib import Path

from shoal.agent import exposure

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
    assert exposure.check(tmp_path) == {}
    (tmp_path / "tcp").write_text(TCP)
    assert set(exposure.check(tmp_path)) == {"docker-api-exposed", "swarm-exposed"}
