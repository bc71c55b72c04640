"""RecordTable.resolve for every name form, straight from a netmap (no sockets)."""

from __future__ import annotations

import random
from ipaddress import IPv4Address

import dns.name
import pytest

from shoal.dns.records import TTL, ARecord, Outcome, RecordTable, SoaRecord, SrvRecord
from tests.dns.helpers import BLOG, CACHE, DB, SEED, WEB1, WEB2, WEB3, container, mesh


@pytest.fixture
def table() -> RecordTable:
    return RecordTable.from_netmap(SEED, rng=random.Random(1))


def ips(*containers: object) -> set[IPv4Address]:
    return {c.ip for c in containers}  # type: ignore[attr-defined]


def test_container_name_bare_and_in_zone(table: RecordTable) -> None:
    for name in ("db", "db.shoal", "db.shoal.", "DB.Shoal", "db.h3.shoal"):
        res = table.resolve(name, "A")
        assert res.outcome is Outcome.ANSWER, name
        assert set(res.addresses) == ips(DB), name
        assert all(r.name == name.lower().rstrip(".") + "." for r in res.answer)
    assert table.resolve("db.h1.shoal", "A").outcome is Outcome.NXDOMAIN


def test_same_container_name_on_two_hosts_answers_both() -> None:
    a, b = container("worker", 1, 9), container("worker", 2, 9)
    table = RecordTable.from_netmap(mesh(a, b))
    assert set(table.resolve("worker", "A").addresses) == ips(a, b)
    assert set(table.resolve("worker.shoal", "A").addresses) == ips(a, b)
    assert table.resolve("worker.h2.shoal", "A").addresses == (b.ip,)


def test_service_answers_serving_replicas_of_all_hosts(table: RecordTable) -> None:
    # web.app: WEB2 fails its health check and is left out.
    assert set(table.resolve("web.app.shoal", "A").addresses) == ips(WEB1, WEB3)
    assert set(table.resolve("cache.app.shoal", "A").addresses) == ips(CACHE)
    assert set(table.resolve("cache", "A").addresses) == ips(CACHE)
    # A bare service name asked from nowhere in particular: every project's replicas.
    assert set(table.resolve("web", "A").addresses) == ips(WEB1, WEB3, BLOG)
    assert set(table.resolve("web.blog.shoal", "A").addresses) == ips(BLOG)


def test_bare_service_name_prefers_the_askers_project(table: RecordTable) -> None:
    assert set(table.resolve("web", "A", source=CACHE.ip).addresses) == ips(WEB1, WEB3)
    assert set(table.resolve("web", "A", source=BLOG.ip).addresses) == ips(BLOG)
    # A project without that service, or a stranger: all of them.
    assert set(table.resolve("web", "A", source=DB.ip).addresses) == ips(WEB1, WEB3, BLOG)
    other = IPv4Address("192.0.2.99")
    assert set(table.resolve("web", "A", source=other).addresses) == ips(WEB1, WEB3, BLOG)


def test_health_changes_what_a_service_answers() -> None:
    starting = WEB1.model_copy(update={"health": "starting"})
    table = RecordTable.from_netmap(mesh(starting, WEB2))
    # Known service, nobody serving: ours (NODATA), never forwarded upstream.
    for name in ("web.app.shoal", "web"):
        res = table.resolve(name, "A")
        assert (res.outcome, res.answer) == (Outcome.NODATA, ()), name
        assert isinstance(res.authority[0], SoaRecord)
    healed = RecordTable.from_netmap(mesh(WEB1, WEB2.model_copy(update={"health": "healthy"})))
    assert set(healed.resolve("web.app.shoal", "A").addresses) == ips(WEB1, WEB2)


def test_name_of_both_a_container_and_a_service_answers_both() -> None:
    named_web = container("web", 3, 7, health="unhealthy")  # asked by name: given regardless
    table = RecordTable.from_netmap(mesh(WEB1, WEB2, named_web))
    assert set(table.resolve("web", "A").addresses) == ips(WEB1, named_web)
    assert set(table.resolve("web.shoal", "A").addresses) == ips(WEB1, named_web)


def test_answers_are_shuffled_per_answer() -> None:
    many = [container(f"r{i}", 1 + i % 3, 10 + i, "app", "api") for i in range(12)]
    table = RecordTable.from_netmap(mesh(*many), rng=random.Random(3))
    orders = {table.resolve("api.app.shoal", "A").addresses for _ in range(20)}
    assert len(orders) > 1
    assert all(set(order) == ips(*many) for order in orders)


def test_node_names(table: RecordTable) -> None:
    for i in (1, 2, 3):  # self and peers
        res = table.resolve(f"h{i}.shoal", "A")
        assert res.answer == (ARecord(f"h{i}.shoal.", IPv4Address(f"100.64.0.{i}")),)
    assert table.resolve("H2.SHOAL.", "A").addresses == (IPv4Address("100.64.0.2"),)
    # A bare node name is the machine's own business: upstream answers it.
    assert table.resolve("h2", "A").outcome is Outcome.NOT_OURS
    assert table.resolve("h2.shoal", "AAAA").outcome is Outcome.NODATA


def test_srv_for_a_service_with_targets_in_additional(table: RecordTable) -> None:
    res = table.resolve("_80._tcp.web.app.shoal", "SRV")
    assert res.outcome is Outcome.ANSWER
    assert {r for r in res.answer} == {
        SrvRecord("_80._tcp.web.app.shoal.", 0, 1, 80, "app-web-1.h1.shoal."),
        SrvRecord("_80._tcp.web.app.shoal.", 0, 1, 80, "app-web-3.h3.shoal."),
    }
    assert set(res.additional) == {
        ARecord("app-web-1.h1.shoal.", WEB1.ip),
        ARecord("app-web-3.h3.shoal.", WEB3.ip),
    }
    # The targets resolve on their own.
    assert table.resolve("app-web-3.h3.shoal", "A").addresses == (WEB3.ip,)
    only_8080 = table.resolve("_8080._tcp.web.app.shoal", "SRV").answer
    assert [r.target for r in only_8080] == ["app-web-3.h3.shoal."]  # type: ignore[union-attr]


def test_srv_for_a_container_and_protocols(table: RecordTable) -> None:
    res = table.resolve("_5432._tcp.db.shoal", "SRV")
    assert res.answer == (SrvRecord("_5432._tcp.db.shoal.", 0, 1, 5432, "db.h3.shoal."),)
    assert table.resolve("_53._udp.db.shoal", "SRV").outcome is Outcome.ANSWER
    assert table.resolve("_53._tcp.db.shoal", "SRV").outcome is Outcome.NXDOMAIN
    assert table.resolve("_5432._tcp.db.shoal", "A").outcome is Outcome.NODATA
    for bad in (
        "_x._tcp.db.shoal",
        "_5432._sctp.db.shoal",
        "_tcp.db.shoal",
        "_5432._tcp.nope.shoal",
    ):
        assert table.resolve(bad, "SRV").outcome is Outcome.NXDOMAIN, bad


def test_unknown_names_under_the_zone_are_nxdomain_with_a_short_soa(table: RecordTable) -> None:
    for name in ("nope.shoal", "a.b.c.shoal", "web.nope.shoal", "nope.app.shoal"):
        res = table.resolve(name, "A")
        assert res.outcome is Outcome.NXDOMAIN, name
        (soa,) = res.authority
        assert isinstance(soa, SoaRecord)
        assert (soa.name, soa.minimum, soa.serial) == ("shoal.", TTL, SEED.revision)


def test_other_names_are_not_ours(table: RecordTable) -> None:
    for name in ("example.com", "www.lab.test.", "nope", "shoal.example.com", ".", ""):
        assert table.resolve(name, "A").outcome is Outcome.NOT_OURS, name


def test_zone_apex_and_other_types(table: RecordTable) -> None:
    soa = table.resolve("shoal", "SOA")
    assert soa.outcome is Outcome.ANSWER and isinstance(soa.answer[0], SoaRecord)
    assert table.resolve("shoal.", "A").outcome is Outcome.NODATA
    for qtype in ("AAAA", "MX", "TXT", 65280):
        assert table.resolve("db.shoal", qtype).outcome is Outcome.NODATA
        assert table.resolve("db", qtype).outcome is Outcome.NODATA
    assert table.resolve("db", "ANY").addresses == (DB.ip,)


def test_another_zone_name() -> None:
    table = RecordTable.from_netmap(SEED, zone="mesh.internal")
    assert table.resolve("db.mesh.internal", "A").addresses == (DB.ip,)
    assert table.resolve("db.shoal", "A").outcome is Outcome.NOT_OURS
    assert table.resolve("nope.mesh.internal", "A").outcome is Outcome.NXDOMAIN


def test_empty_table_knows_only_its_zone() -> None:
    table = RecordTable.empty()
    assert table.resolve("db.shoal", "A").outcome is Outcome.NXDOMAIN
    assert table.resolve("db", "A").outcome is Outcome.NOT_OURS


def test_every_answer_uses_the_short_ttl(table: RecordTable) -> None:
    assert table.resolve("db", "A").ttl == TTL == 2


def test_building_is_linear_enough_for_a_big_mesh() -> None:
    many = [container(f"c{i}", 1 + i % 3, 1 + i % 250, "p", f"s{i % 50}") for i in range(5000)]
    table = RecordTable.from_netmap(mesh(*many))
    assert len(table.resolve("s7.p.shoal", "A").answer) == 100
    assert len(table.resolve("c4999", "A").answer) == 1


def test_node_name_never_answers_a_container_of_that_name() -> None:
    """A host naming a container like another node cannot take over `<node>.shoal`."""
    impostor = container("h2", 3, 7)
    service = container("x", 3, 8, project="p", service="h1")
    table = RecordTable.from_netmap(mesh(impostor, service))
    assert table.resolve("h2.shoal", "A").addresses == (IPv4Address("100.64.0.2"),)
    assert table.resolve("h1.shoal", "A").addresses == (IPv4Address("100.64.0.1"),)
    # The container stays reachable by its own unambiguous name.
    assert table.resolve("h2.h3.shoal", "A").addresses == (impostor.ip,)


def test_name_on_node_is_never_a_compose_project_of_that_name() -> None:
    """`<name>.<node>.shoal` names one host's container; a project named like the node (on
    another host) does not join the answer."""
    real = container("db", 2, 5)
    forged = container("h2-db-1", 3, 5, project="h2", service="db")
    table = RecordTable.from_netmap(mesh(real, forged))
    assert table.resolve("db.h2.shoal", "A").addresses == (real.ip,)
    assert table.resolve("db.h1.shoal", "A").outcome is Outcome.NXDOMAIN
    assert table.resolve("_5432._tcp.db.h2.shoal", "SRV").outcome is Outcome.NXDOMAIN


def test_names_that_are_not_labels_are_skipped_and_the_rest_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    long = "x" * 64
    good = container("app-api-1", 1, 2, "app", "api", ports=((80, "tcp"),))
    bad = container(long, 2, 2, "app", "api", ports=((80, "tcp"),))
    odd = container("bad!name", 3, 2, "app", "api", ports=((80, "tcp"),))
    table = RecordTable.from_netmap(mesh(good, bad, odd))
    srv = table.resolve("_80._tcp.api.app.shoal", "SRV")
    assert [r.target for r in srv.answer] == ["app-api-1.h1.shoal."]  # type: ignore[union-attr]
    assert table.resolve("api.app.shoal", "A").addresses == (good.ip,)
    assert sorted(table.skipped) == [
        "container 'bad!name' on 'h3': not a DNS label",
        f"container {long!r} on 'h2': not a DNS label",
    ]
    assert "2 name(s) left out of DNS" in caplog.text


def test_srv_targets_must_fit_a_dns_name() -> None:
    # `<63 a>.h1.<zone>.` is 68 + len(zone) bytes as text, one more in wire form (<= 255).
    ok = container("a" * 63, 1, 2, ports=((80, "tcp"),))
    fits = ".".join(["z" * 60] * 3) + ".zzz"  # 186 bytes: a 255-byte target
    table = RecordTable.from_netmap(mesh(ok), zone=fits)
    assert table.skipped == ()
    srv = table.resolve(f"_80._tcp.{'a' * 63}.{fits}", "SRV")
    target = srv.answer[0].target  # type: ignore[union-attr]
    assert len(dns.name.from_text(target).to_wire()) == 255
    table = RecordTable.from_netmap(mesh(ok), zone=fits + "z")
    assert table.skipped == (f"container {'a' * 63!r} on 'h1': name too long",)


def test_only_this_host_and_its_containers_may_ask(table: RecordTable) -> None:
    admitted = ("127.0.0.1", "127.0.0.53", "100.64.0.1", "10.42.1.1", "10.42.1.77")
    refused = ("100.64.0.2", "10.42.2.5", "192.0.2.12", "10.42.0.1")
    assert all(table.admits(IPv4Address(a)) for a in admitted)
    assert not any(table.admits(IPv4Address(a)) for a in refused)
    assert not table.admits(None)
    assert RecordTable.empty().admits(IPv4Address("127.0.0.1"))
    assert not RecordTable.empty().admits(IPv4Address("10.42.1.5"))
