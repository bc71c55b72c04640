"""The responder over real sockets on 127.0.0.1: answers, forwarding, truncation, TCP."""

from __future__ import annotations

import asyncio
import socket
import struct
from ipaddress import IPv4Address
from pathlib import Path

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from shoal.dns.errors import DnsBindFailed
from shoal.dns.records import RecordTable
from shoal.dns.server import DnsServer, upstreams_from_resolv_conf
from tests.dns.helpers import DB, SEED, WEB1, WEB3, container, mesh
from tests.dns.upstream import Upstream, address


def q(name: str, rdtype: str = "A", **kw: object) -> dns.message.Message:
    return dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]


async def udp(server: DnsServer, message: dns.message.Message) -> dns.message.Message:
    host, port = server.bound[0]
    return await dns.asyncquery.udp(message, host, port=port, timeout=3)


async def tcp(server: DnsServer, message: dns.message.Message) -> dns.message.Message:
    host, port = server.bound[0]
    return await dns.asyncquery.tcp(message, host, port=port, timeout=3)


def addresses(response: dns.message.Message) -> set[str]:
    return {r.address for rrset in response.answer for r in rrset if rrset.rdtype == 1}


async def test_answers_over_udp_and_tcp(server: DnsServer) -> None:
    for ask in (udp, tcp):
        r = await ask(server, q("web.app.shoal"))
        assert r.rcode() == dns.rcode.NOERROR
        assert r.flags & dns.flags.AA
        assert addresses(r) == {str(WEB1.ip), str(WEB3.ip)}
        assert r.answer[0].ttl == 2
        assert r.answer[0].name.to_text() == "web.app.shoal."


async def test_case_of_the_question_is_kept(server: DnsServer) -> None:
    r = await udp(server, q("DB.Shoal."))
    assert addresses(r) == {str(DB.ip)}
    assert r.answer[0].name.to_text() == "DB.Shoal."


async def test_nxdomain_carries_the_soa(server: DnsServer) -> None:
    r = await udp(server, q("nope.shoal"))
    assert r.rcode() == dns.rcode.NXDOMAIN
    (soa,) = r.authority
    assert soa.rdtype == dns.rdatatype.SOA and soa[0].minimum == 2 and soa.ttl == 2


async def test_srv_with_additional_addresses(server: DnsServer) -> None:
    r = await udp(server, q("_80._tcp.web.app.shoal", "SRV"))
    targets = {(s.port, s.target.to_text()) for s in r.answer[0]}
    assert targets == {(80, "app-web-1.h1.shoal."), (80, "app-web-3.h3.shoal.")}
    extra = {rrset.name.to_text(): rrset[0].address for rrset in r.additional if rrset.rdtype == 1}
    assert extra == {"app-web-1.h1.shoal.": str(WEB1.ip), "app-web-3.h3.shoal.": str(WEB3.ip)}


async def test_several_queries_on_one_tcp_connection(server: DnsServer) -> None:
    host, port = server.bound[0]
    reader, writer = await asyncio.open_connection(host, port)
    names = ["db", "web.app.shoal", "nope.shoal", "www.example.test"]
    queries = [q(n) for n in names]
    # Pipelined: all written before any answer is read.
    writer.write(b"".join(m.to_wire(prepend_length=True) for m in queries))
    await writer.drain()
    for m in queries:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
        reply = dns.message.from_wire(await reader.readexactly(length))
        assert m.is_response(reply)
    writer.close()


async def test_idle_tcp_connection_is_closed(server: DnsServer) -> None:
    host, port = server.bound[0]
    reader, writer = await asyncio.open_connection(host, port)
    assert await asyncio.wait_for(reader.read(), timeout=3) == b""  # idle timeout is 1 s
    writer.close()


async def test_table_is_read_per_query() -> None:
    tables = [RecordTable.from_netmap(SEED)]
    server = DnsServer(lambda: tables[0], [])
    await server.start([("127.0.0.1", 0)])
    try:
        assert (await udp(server, q("late.shoal"))).rcode() == dns.rcode.NXDOMAIN
        tables[0] = RecordTable.from_netmap(mesh(container("late", 2, 40)))
        assert addresses(await udp(server, q("late.shoal"))) == {"10.42.2.40"}
    finally:
        await server.close()


async def test_single_label_service_is_scoped_to_the_askers_project() -> None:
    # The query's source address is the asking container's (Docker's embedded DNS keeps it).
    me = container("blog-web-1", 1, 1, "blog", "web")
    me = me.model_copy(update={"ip": IPv4Address("127.0.0.1")})
    other = container("app-web-1", 2, 2, "app", "web")
    table = RecordTable.from_netmap(mesh(me, other))
    server = DnsServer(lambda: table, [])
    await server.start([("127.0.0.1", 0)])
    try:
        assert addresses(await udp(server, q("web"))) == {"127.0.0.1"}
    finally:
        await server.close()


async def test_upstream_names_are_forwarded(server: DnsServer, upstream: Upstream) -> None:
    for ask in (udp, tcp):
        query = q("www.example.test")
        r = await ask(server, query)
        assert query.is_response(r)  # the client's id is restored
        assert addresses(r) == {str(address("www"))}
        r = await ask(server, q("nope"))  # single label matching nothing: upstream decides
        assert r.rcode() == dns.rcode.NXDOMAIN and not r.authority
    assert server.stats.forwarded == 4


async def test_truncated_upstream_answer_is_retried_over_tcp(
    server: DnsServer, upstream: Upstream
) -> None:
    upstream.truncate_udp = True
    r = await tcp(server, q("www.example.test"))
    assert addresses(r) == {str(address("www"))}
    assert upstream.tcp_queries == 1


async def test_big_answers_are_truncated_over_udp_without_edns(server: DnsServer) -> None:
    # 60 A records: about 1 KB, more than 512 bytes.
    r = await udp(server, q("big.example.test"))
    assert r.flags & dns.flags.TC and not r.answer
    r = await tcp(server, q("big.example.test"))
    assert len(addresses(r)) == 60
    r = await udp(server, q("big.example.test", use_edns=0, payload=4096))
    assert len(addresses(r)) == 60 and not r.flags & dns.flags.TC


async def test_our_big_answers_are_truncated_too() -> None:
    many = [container(f"r{i}", 1 + i % 3, 10 + i, "app", "api") for i in range(60)]
    table = RecordTable.from_netmap(mesh(*many))
    server = DnsServer(lambda: table, [])
    await server.start([("127.0.0.1", 0)])
    try:
        r = await udp(server, q("api.app.shoal"))
        assert r.flags & dns.flags.TC and not r.answer
        r = await udp(server, q("api.app.shoal", use_edns=0, payload=1232))
        assert len(addresses(r)) == 60
        assert len(addresses(await tcp(server, q("api.app.shoal")))) == 60
        assert server.stats.truncated == 1
    finally:
        await server.close()


async def test_servfail_when_every_upstream_is_dead(upstream: Upstream) -> None:
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()  # nothing listens there: ICMP port unreachable, next upstream at once
    silent = Upstream()
    await silent.start()
    silent.silent = True
    table = RecordTable.from_netmap(SEED)
    try:
        # Dead, then silent (times out), then the live one answers.
        server = DnsServer(
            lambda: table, [("127.0.0.1", dead_port), silent.address, upstream.address], 0.3
        )
        await server.start([("127.0.0.1", 0)])
        try:
            assert addresses(await udp(server, q("www.example.test"))) == {str(address("www"))}
        finally:
            await server.close()
        server = DnsServer(lambda: table, [("127.0.0.1", dead_port), silent.address], 0.3)
        await server.start([("127.0.0.1", 0)])
        try:
            for ask in (udp, tcp):
                query = q("www.example.test")
                r = await ask(server, query)
                assert query.is_response(r) and r.rcode() == dns.rcode.SERVFAIL
            # Our own names do not need an upstream.
            assert addresses(await udp(server, q("db"))) == {str(DB.ip)}
            assert server.stats.servfail == 2
        finally:
            await server.close()
    finally:
        await silent.close()


async def test_bind_errors_and_close() -> None:
    server = DnsServer(lambda: RecordTable.empty(), [])
    await server.start([("127.0.0.1", 0), ("127.0.0.1", 0)])
    (_, p1), (_, p2) = server.bound
    assert p1 != p2
    other = DnsServer(lambda: RecordTable.empty(), [])
    with pytest.raises(DnsBindFailed, match=f"127.0.0.1:{p1}"):
        await other.start([("127.0.0.1", p1)])
    assert other.bound == ()
    with pytest.raises(DnsBindFailed):
        await other.start([("192.0.2.254", 0)])  # not an address of this machine
    await server.close()
    await server.close()  # idempotent
    assert server.bound == ()


def test_upstreams_from_resolv_conf(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "# generated\nsearch lab.test\nnameserver 127.0.0.53\nnameserver 192.0.2.2 # lab\n"
        "nameserver 192.0.2.2\nnameserver fe80::1%eth0\nnameserver bogus\nnameserver\n"
        "options ndots:1\nnameserver 100.64.0.1\n"
    )
    assert upstreams_from_resolv_conf(conf) == [
        ("127.0.0.53", 53),
        ("192.0.2.2", 53),
        ("fe80::1%eth0", 53),
        ("100.64.0.1", 53),
    ]
    assert upstreams_from_resolv_conf(conf, exclude=["100.64.0.1"], skip_loopback=True) == [
        ("192.0.2.2", 53),
        ("fe80::1%eth0", 53),
    ]
    assert upstreams_from_resolv_conf(tmp_path / "missing") == []


class Strangers:
    """The seed mesh's table as seen by a source it does not admit (the test client is on
    127.0.0.1, which the real table always admits)."""

    def __init__(self) -> None:
        self.table = RecordTable.from_netmap(SEED)

    def admits(self, source: IPv4Address | None) -> bool:
        return False

    def resolve(self, qname: str, qtype: object, source: IPv4Address | None = None) -> object:
        raise AssertionError("a refused query must not be resolved")


async def test_strangers_are_refused_with_no_amplification(upstream: Upstream) -> None:
    server = DnsServer(Strangers, [upstream.address])  # type: ignore[arg-type]
    await server.start([("127.0.0.1", 0)])
    try:
        for query in (q("www.example.test"), q("web.app.shoal", "ANY"), q("db", want_dnssec=True)):
            for ask in (udp, tcp):
                r = await ask(server, query)
                assert r.rcode() == dns.rcode.REFUSED and not r.answer
                assert len(r.to_wire()) <= len(query.to_wire())
        assert upstream.udp_queries == upstream.tcp_queries == 0
        assert server.stats.refused == 6 and server.stats.forwarded == 0
    finally:
        await server.close()


async def test_other_classes_are_refused_not_forwarded(
    server: DnsServer, upstream: Upstream
) -> None:
    for name, rdtype in (("version.bind", "TXT"), ("db.shoal", "A")):
        query = dns.message.make_query(name, rdtype, rdclass="CH")
        r = await udp(server, query)
        assert r.rcode() == dns.rcode.REFUSED and not r.answer
    assert upstream.udp_queries == 0


async def test_an_srv_answer_survives_a_replica_whose_name_is_no_label() -> None:
    good = container("app-api-1", 1, 2, "app", "api", ports=((80, "tcp"),))
    bad = container("y" * 70, 2, 2, "app", "api", ports=((80, "tcp"),))
    table = RecordTable.from_netmap(mesh(good, bad))
    server = DnsServer(lambda: table, [])
    await server.start([("127.0.0.1", 0)])
    try:
        r = await udp(server, q("_80._tcp.api.app.shoal", "SRV"))
        assert r.rcode() == dns.rcode.NOERROR
        assert [str(rd.target) for rrset in r.answer for rd in rrset] == ["app-api-1.h1.shoal."]
    finally:
        await server.close()
