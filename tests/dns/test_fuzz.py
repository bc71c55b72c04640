"""Bad packets never stop the responder: FORMERR (NOTIMP for other opcodes) when a header can be
read, silence otherwise, and the next good query is answered right.

The server runs on its own event loop in a thread, so hypothesis drives it with plain sockets.
After every example a valid query on the same socket must get the right answer."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.dns.records import RecordTable
from shoal.dns.server import DnsServer
from tests.dns.helpers import DB, SEED

HEADER = struct.Struct("!HHHHHH")
GOOD = dns.message.make_query("db.shoal", "A", id=4242).to_wire()
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


class ThreadedServer:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        table = RecordTable.from_netmap(SEED, rng=random.Random(0))
        self.server = DnsServer(lambda: table, [])  # no upstream: SERVFAIL, fast
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        self.call(self.server.start([("127.0.0.1", 0)]))
        return self

    def __exit__(self, *exc: object) -> None:
        self.call(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def call(self, coro: object) -> None:
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(5)  # type: ignore[arg-type]

    @property
    def address(self) -> tuple[str, int]:
        return self.server.bound[0]


@pytest.fixture(scope="module")
def srv() -> Iterator[ThreadedServer]:
    with ThreadedServer() as s:
        yield s
        assert s.server.stats.errors == 0, "a packet's handling raised: a bug"


@pytest.fixture(scope="module")
def sock(srv: ThreadedServer) -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.connect(srv.address)
    yield s
    s.close()


def exchange(sock: socket.socket, packet: bytes) -> list[bytes]:
    """Send `packet`, then the good query; the replies that came before the good answer.
    Checks the good answer on the way."""
    sock.send(packet)
    sock.send(GOOD)
    before = []
    while True:
        reply = sock.recv(65535)
        if reply[:2] == GOOD[:2]:
            message = dns.message.from_wire(reply)
            assert {r.address for r in message.answer[0]} == {str(DB.ip)}
            return before
        before.append(reply)


def assert_error_reply(packet: bytes, replies: list[bytes], rcodes: set[int]) -> None:
    """Exactly one reply, a header-only error for the packet's id; none if it has no header."""
    if len(packet) < HEADER.size or HEADER.unpack_from(packet)[1] & dns.flags.QR:
        assert replies == []
        return
    (reply,) = replies
    qid, flags, qd, an, ns, ar = HEADER.unpack_from(reply)
    assert (qid, len(reply), qd + an + ns + ar) == (HEADER.unpack_from(packet)[0], 12, 0)
    assert flags & dns.flags.QR
    assert flags & 0xF in rcodes


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes(sock: socket.socket, packet: bytes) -> None:
    if packet[:2] == GOOD[:2]:
        return
    replies = exchange(sock, packet)
    assert len(replies) <= 1
    if replies:
        # Random bytes may form a valid query by chance; anything answered is a response to it.
        assert HEADER.unpack_from(replies[0])[0] == HEADER.unpack_from(packet)[0]


@FUZZ
@given(st.integers(min_value=0, max_value=len(GOOD) - 1), st.integers(0, 65535))
def test_truncations_of_a_valid_query(sock: socket.socket, cut: int, qid: int) -> None:
    packet = struct.pack("!H", qid) + GOOD[2:]
    packet = packet[:cut]
    if packet[:2] == GOOD[:2]:
        return
    assert_error_reply(packet, exchange(sock, packet), {dns.rcode.FORMERR})


@FUZZ
@given(st.binary(min_size=1, max_size=60000))
def test_oversized_and_trailing_junk(sock: socket.socket, junk: bytes) -> None:
    packet = struct.pack("!H", 7) + GOOD[2:] + junk
    assert_error_reply(packet, exchange(sock, packet), {dns.rcode.FORMERR})


def raw_query(qname: bytes, qid: int = 9, flags: int = 0x0100, qdcount: int = 1) -> bytes:
    return HEADER.pack(qid, flags, qdcount, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)


@FUZZ
@given(st.integers(64, 191), st.binary(min_size=0, max_size=200))
def test_labels_longer_than_63(sock: socket.socket, length: int, rest: bytes) -> None:
    packet = raw_query(bytes([length]) + rest.ljust(length, b"a") + b"\x00")
    assert_error_reply(packet, exchange(sock, packet), {dns.rcode.FORMERR})


@FUZZ
@given(st.integers(5, 40), st.integers(1, 63))
def test_names_longer_than_255(sock: socket.socket, labels: int, size: int) -> None:
    name = (bytes([size]) + b"x" * size) * labels + b"\x00"
    packet = raw_query(name)
    replies = exchange(sock, packet)
    if len(name) > 255:
        assert_error_reply(packet, replies, {dns.rcode.FORMERR})
    else:  # a legal name: an answer (NXDOMAIN or forwarded and failed)
        assert len(replies) == 1 and dns.message.from_wire(replies[0]).id == 9


@pytest.mark.parametrize(
    "qname",
    [
        b"\xc0\x0c",  # points at itself
        b"\x01a\xc0\x0c",  # points back at its own start
        b"\x01a\xc0\x0e",  # points at the pointer
        b"\xc0\xff",  # points past the end
        b"\x01a\x40",  # extended label type
        b"\x01a",  # no terminating root label
    ],
)
def test_compression_loops_and_bad_labels(sock: socket.socket, qname: bytes) -> None:
    packet = raw_query(qname)
    assert_error_reply(packet, exchange(sock, packet), {dns.rcode.FORMERR})


def test_header_rules(sock: socket.socket) -> None:
    qname = b"\x02db\x05shoal\x00"
    for qdcount in (0, 2):
        packet = raw_query(qname, qdcount=qdcount)
        if qdcount == 2:
            packet += qname + struct.pack("!HH", 1, 1)
        (reply,) = exchange(sock, packet)
        assert HEADER.unpack_from(reply)[1] & 0xF == dns.rcode.FORMERR
    for opcode in (dns.opcode.IQUERY, dns.opcode.STATUS, dns.opcode.NOTIFY, dns.opcode.UPDATE):
        packet = raw_query(qname, flags=dns.opcode.to_flags(opcode))
        (reply,) = exchange(sock, packet)
        flags = HEADER.unpack_from(reply)[1]
        assert flags & 0xF == dns.rcode.NOTIMP and dns.opcode.from_flags(flags) == opcode
    # A response sent to us is never answered (two resolvers would ping-pong errors).
    assert exchange(sock, raw_query(qname, flags=0x8100)) == []
    # EDNS version 1: BADVERS.
    query = dns.message.make_query("db.shoal", "A", use_edns=1, id=11)
    (reply,) = exchange(sock, query.to_wire())
    assert dns.message.from_wire(reply).rcode() == dns.rcode.BADVERS


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=5))
def test_garbage_over_tcp_then_a_valid_query(srv: ThreadedServer, frames: list[bytes]) -> None:
    closed_early = False
    with socket.create_connection(srv.address, timeout=3) as conn:
        try:
            for frame in frames:
                conn.sendall(struct.pack("!H", len(frame)) + frame)  # an empty frame ends it
            conn.sendall(struct.pack("!H", len(GOOD)) + GOOD)
            conn.shutdown(socket.SHUT_WR)
        except OSError:  # the server closed first (broken pipe, reset, not connected)
            closed_early = True
        data = b""
        with contextlib.suppress(OSError):
            while chunk := conn.recv(65535):
                data += chunk
    # Walk the framed replies; the good answer is there unless an empty frame closed it early.
    ids = []
    while len(data) >= 2:
        (length,) = struct.unpack("!H", data[:2])
        ids.append(HEADER.unpack_from(data, 2)[0] if length >= 2 else None)
        data = data[2 + length :]
    if not closed_early and b"" not in frames:
        assert ids and ids[-1] == 4242
    # Whatever happened, UDP still answers.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(GOOD, srv.address)
        assert dns.message.from_wire(s.recv(65535)).answer
