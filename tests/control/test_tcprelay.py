"""The relay over TCP/TLS end to end on loopback: the server's `TcpRelay` and two agents'
`TcpRelayClient`s, with a UDP socket standing in for each host's WireGuard. Datagrams cross
unchanged both ways and come from one loopback endpoint per peer; a key that is no node, or
a hello not signed with the key it names, gets no session."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from shoal.agent.tcprelay import RelayTarget, TcpRelayClient
from shoal.control import tcprelay
from shoal.control.ca import load_or_create_ca
from shoal.control.config import parse_relay_spec
from shoal.control.errors import ServerConfigError
from shoal.control.nodeauth import LocalClaims, NodeVerifier
from shoal.control.relayhost import load_or_create_identity
from shoal.control.tcprelay import TcpRelay, bind_relay_socket
from shoal.controlclient.tls import ssl_context
from shoal.model.keys import PrivateKey, PublicKey
from shoal.model.nodeauth import shared_key, sign
from shoal.model.relaywire import (
    ERROR,
    HELLO,
    HELLO_METHOD,
    HELLO_TARGET,
    OK,
    PACKET,
    FrameBuffer,
    frame,
)


@dataclass
class Mesh:
    relay: TcpRelay
    target: RelayTarget
    auth: PrivateKey
    ca_pem: bytes
    members: set[PublicKey]


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    ca = load_or_create_ca(tmp_path, "127.0.0.1")
    auth = PrivateKey.generate()
    members: set[PublicKey] = set()
    relay = TcpRelay(NodeVerifier(auth, LocalClaims()), lambda key: key in members)
    sock = bind_relay_socket("127.0.0.1", 0)
    assert sock is not None
    port = sock.getsockname()[1]
    await relay.serve(sock, ca.server_ssl_context())
    try:
        yield Mesh(relay, RelayTarget(IPv4Address("127.0.0.1"), port), auth, ca.ca_pem, members)
    finally:
        await relay.close()


@dataclass
class Host:
    key: PrivateKey
    wireguard: socket.socket  # stands in for WireGuard's UDP port
    client: TcpRelayClient
    task: asyncio.Task[None]


def udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # WireGuard reads faster than this test; 100 datagrams of 1.2 KB fit in 1 MB (as root)
    s.setsockopt(socket.SOL_SOCKET, 33, 1 << 20)  # SO_RCVBUFFORCE
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


def start_host(mesh: Mesh, keys: list[PrivateKey] | None = None) -> Host:
    """A host whose current key is the last of `keys` (one new key by default)."""
    keys = keys if keys is not None else [PrivateKey.generate()]
    key = keys[-1]
    mesh.members.add(key.public_key())
    wireguard = udp()
    auth = mesh.auth.public_key()

    async def mac_key() -> bytes:  # as the control client derives it, for the current key
        return shared_key(keys[-1], auth, keys[-1].public_key(), auth)

    client = TcpRelayClient(
        listen_port=wireguard.getsockname()[1],
        ssl_context=lambda: ssl_context(mesh.ca_pem),
        private_key=lambda: keys[-1],
        server_mac_key=mac_key,
    )
    return Host(key, wireguard, client, asyncio.create_task(client.run()))


async def until(what: str, condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.01)  # real sockets and a TLS handshake in between
    assert condition(), what


def both_connected(mesh: Mesh, a: Host, b: Host) -> bool:
    """Both streams open as their clients see it (the relay's OK arrived, not only sent)."""
    return a.client.connected(mesh.target) and b.client.connected(mesh.target)


async def recv(s: socket.socket) -> tuple[bytes, tuple[str, int]]:
    data, addr = await asyncio.wait_for(asyncio.get_running_loop().sock_recvfrom(s, 2048), 5)
    return data, (str(addr[0]), int(addr[1]))


async def stop(*hosts: Host) -> None:
    for host in hosts:
        host.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await host.task
        host.wireguard.close()


async def test_datagrams_cross_both_ways_unchanged_from_one_endpoint_per_peer(mesh: Mesh) -> None:
    a, b = start_host(mesh), start_host(mesh)
    try:
        # b listens on the relay before a sends (in the mesh: its own peers use it).
        b.client.local(a.key.public_key(), mesh.target)
        to_b = a.client.local(b.key.public_key(), mesh.target)
        await until("both connected", lambda: both_connected(mesh, a, b))
        ciphertext = bytes(range(256)) * 5
        # Only WireGuard's port may use a loopback endpoint: anything else goes nowhere.
        stranger = udp()
        stranger.sendto(b"not from wireguard", (str(to_b.host), to_b.port))
        stranger.close()
        # A datagram larger than a frame carries (65503 bytes) is dropped, not truncated.
        a.wireguard.sendto(b"x" * 65507, (str(to_b.host), to_b.port))
        a.wireguard.sendto(ciphertext, (str(to_b.host), to_b.port))
        data, from_a = await recv(b.wireguard)
        assert data == ciphertext
        assert from_a == ("127.0.0.1", b.client.local(a.key.public_key(), mesh.target).port)
        b.wireguard.sendto(b"reply", from_a)
        assert await recv(a.wireguard) == (b"reply", ("127.0.0.1", to_b.port))
        assert mesh.relay.counters.forwarded == 2 and a.client.counters.dropped == 1
        # Many at once: batched into few writes, none lost on loopback.
        for i in range(100):
            a.wireguard.sendto(i.to_bytes(2, "big") * 600, (str(to_b.host), to_b.port))
        got = [(await recv(b.wireguard))[0] for _ in range(100)]
        assert [int.from_bytes(g[:2], "big") for g in got] == list(range(100))
    finally:
        await stop(a, b)


async def test_a_peer_reaching_us_first_gets_its_own_endpoint(mesh: Mesh) -> None:
    a, b = start_host(mesh), start_host(mesh)
    try:
        b.client.local(PrivateKey.generate().public_key(), mesh.target)  # b is on the relay
        to_b = a.client.local(b.key.public_key(), mesh.target)
        await until("both connected", lambda: both_connected(mesh, a, b))
        a.wireguard.sendto(b"first", (str(to_b.host), to_b.port))
        data, source = await recv(b.wireguard)
        # b never asked for a's endpoint: the relay client made one, WireGuard roams to it.
        assert data == b"first"
        assert source == ("127.0.0.1", b.client.local(a.key.public_key(), mesh.target).port)
    finally:
        await stop(a, b)


async def first_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    frames = FrameBuffer()
    while True:
        data = await asyncio.wait_for(reader.read(4096), 5)
        assert data, "closed without an answer"
        frames.free()[: len(data)] = data
        for kind, start, stop in frames.received(len(data)):
            return kind, bytes(frames.data[start:stop])


async def hello_answer(mesh: Mesh, header: str) -> tuple[int, bytes]:
    ctx = ssl_context(mesh.ca_pem)
    reader, writer = await asyncio.open_connection(str(mesh.target.host), mesh.target.port, ssl=ctx)
    writer.write(frame(HELLO, header.encode()))
    try:
        return await first_frame(reader)
    finally:
        writer.close()


async def test_keys_that_are_no_node_or_unproven_get_no_session(mesh: Mesh) -> None:
    stranger = PrivateKey.generate()
    auth = mesh.auth.public_key()
    key = shared_key(stranger, auth, stranger.public_key(), auth)
    header = sign(key, stranger.public_key(), HELLO_METHOD, HELLO_TARGET, b"", now()).header()
    kind, body = await hello_answer(mesh, header)
    assert (kind, body.decode()) == (
        ERROR,
        "this key is no node of the mesh (removed, or never joined)",
    )
    # A member's name on a hello keyed by someone else's secret.
    member = PrivateKey.generate().public_key()
    mesh.members.add(member)
    forged = sign(key, member, HELLO_METHOD, HELLO_TARGET, b"", now()).header()
    kind, body = await hello_answer(mesh, forged)
    assert kind == ERROR and "does not match" in body.decode()
    assert mesh.relay.connected() == () and mesh.relay.counters.refused == 2


def now() -> int:
    return int(time.time())


async def test_a_standalone_relay_is_reached_by_its_pinned_certificate(tmp_path: Path) -> None:
    """`shoal relay`'s identity: its own key for hellos, a self-signed certificate agents pin
    (another certificate at the same address is refused before the hello is sent)."""
    identity = load_or_create_identity(tmp_path / "relay", "127.0.0.1")
    assert load_or_create_identity(tmp_path / "relay", "127.0.0.1") == identity  # kept
    spec = parse_relay_spec(identity.spec("127.0.0.1", 443))
    assert (spec.public_key, spec.cert_sha256) == (identity.key.public_key(), identity.fingerprint)
    members: set[PublicKey] = set()
    relay = TcpRelay(NodeVerifier(identity.key, LocalClaims()), lambda key: key in members)
    sock = bind_relay_socket("127.0.0.1", 0)
    assert sock is not None
    await relay.serve(sock, identity.ssl_context())
    port = sock.getsockname()[1]
    key = PrivateKey.generate()
    members.add(key.public_key())

    async def server_mac_key() -> bytes:
        raise AssertionError("a standalone relay's hello is keyed with its own key")

    def client() -> TcpRelayClient:
        return TcpRelayClient(
            listen_port=9,
            ssl_context=lambda: ssl_context(b""),
            private_key=lambda: key,
            server_mac_key=server_mac_key,
        )

    target = RelayTarget(
        IPv4Address("127.0.0.1"), port, identity.key.public_key(), identity.fingerprint
    )
    good = client()
    task = asyncio.create_task(good.run())
    try:
        good.local(PrivateKey.generate().public_key(), target)
        await until("connected", lambda: good.connected(target))
        wrong = replace(target, cert_sha256="0" * 64)
        bad = client()
        assert not await bad._connect(wrong)
        assert "not the one the server announced" in bad.counters.failures[-1]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await relay.close()


@pytest.mark.parametrize(
    "text", ["192.0.2.9:443", "192.0.2.9,k,f", "host:443,AAAA,ff", "192.0.2.9:443,bad,zz"]
)
def test_relay_specs_that_do_not_parse_say_what_is_expected(text: str) -> None:
    with pytest.raises(ServerConfigError, match="--relay-at"):
        parse_relay_spec(text)


async def test_a_rotated_key_reopens_the_stream_as_the_new_key(mesh: Mesh) -> None:
    keys = [PrivateKey.generate()]
    a = start_host(mesh, keys)
    try:
        a.client.local(PrivateKey.generate().public_key(), mesh.target)
        await until("connected", lambda: mesh.relay.connected() == (a.key.public_key(),))
        a.client.follow_key()  # same key: nothing happens
        assert a.client.connected(mesh.target)
        new = PrivateKey.generate()
        mesh.members.add(new.public_key())
        keys.append(new)
        a.client.follow_key()
        await until("reopened", lambda: mesh.relay.connected() == (new.public_key(),))
    finally:
        await stop(a)


async def raw_session(
    mesh: Mesh, key: PrivateKey
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A node's stream to the relay spoken by hand: hello sent, OK received."""
    mesh.members.add(key.public_key())
    auth = mesh.auth.public_key()
    mac = shared_key(key, auth, key.public_key(), auth)
    header = sign(mac, key.public_key(), HELLO_METHOD, HELLO_TARGET, b"", now()).header()
    ctx = ssl_context(mesh.ca_pem)
    reader, writer = await asyncio.open_connection(str(mesh.target.host), mesh.target.port, ssl=ctx)
    writer.write(frame(HELLO, header.encode()))
    assert await read_frames(reader, 1) == [(OK, b"")]
    return reader, writer


async def read_frames(reader: asyncio.StreamReader, count: int) -> list[tuple[int, bytes]]:
    frames, got = FrameBuffer(), []
    while len(got) < count:
        data = await asyncio.wait_for(reader.read(65536), 5)
        assert data, f"closed after {got}"
        frames.free()[: len(data)] = data
        got += [(k, bytes(frames.data[s:e])) for k, s, e in frames.received(len(data))]
        frames.compact()
    return got


async def test_one_write_of_mixed_frames_reaches_each_destination_from_its_sender(
    mesh: Mesh,
) -> None:
    """Frames to several nodes in one TLS write (the relay rewrites keys in place and passes
    runs on): each arrives once, in order, naming the sender; unknown ones are counted."""
    a, b, c = PrivateKey.generate(), PrivateKey.generate(), PrivateKey.generate()
    (_ra, wa), (rb, wb), (rc, wc) = [await raw_session(mesh, k) for k in (a, b, c)]
    try:
        to = {"b": b.public_key().raw, "c": c.public_key().raw, "x": bytes(32)}
        sent = [("b", b"1" * 1400), ("b", b"2"), ("x", b"lost"), ("c", b"3"), ("b", b"4" * 60)]
        wa.write(b"".join(frame(PACKET, to[n] + data) for n, data in sent))
        src = a.public_key().raw
        want_b = [(PACKET, src + d) for n, d in sent if n == "b"]
        assert await read_frames(rb, 3) == want_b
        assert await read_frames(rc, 1) == [(PACKET, src + b"3")]
        counters = mesh.relay.counters
        assert (counters.forwarded, counters.dropped_no_peer) == (4, 1)
        assert counters.forwarded_bytes == 1400 + 1 + 1 + 60
    finally:
        for w in (wa, wb, wc):
            w.close()


@pytest.mark.parametrize(
    "hostile", [frame(PACKET, bytes(32)), frame(HELLO, b"again"), b"\x09\x00\x00"]
)
async def test_a_hostile_frame_in_a_session_ends_the_stream(mesh: Mesh, hostile: bytes) -> None:
    """A datagram-less PACKET, a second hello, an unknown type: ERROR, then the stream closes."""
    reader, writer = await raw_session(mesh, PrivateKey.generate())
    try:
        writer.write(hostile)
        [(kind, _why)] = await read_frames(reader, 1)
        assert kind == ERROR
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert mesh.relay.connected() == ()
    finally:
        writer.close()


async def test_a_hello_larger_than_a_signature_is_refused_unread(mesh: Mesh) -> None:
    """Until its key is proven a stream holds a few KiB, not a receive buffer: a "hello" of
    60 KiB is refused from its header."""
    ctx = ssl_context(mesh.ca_pem)
    reader, writer = await asyncio.open_connection(str(mesh.target.host), mesh.target.port, ssl=ctx)
    try:
        writer.write(frame(HELLO, bytes(60_000)))
        kind, why = await first_frame(reader)
        assert kind == ERROR and b"a hello of 60000 bytes" in why
        assert mesh.relay.unproven() == 0
    finally:
        writer.close()


async def test_one_address_holding_streams_without_a_hello_cannot_use_up_the_relay(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tcprelay, "MAX_UNPROVEN_PER_SOURCE", 3)
    ctx = ssl_context(mesh.ca_pem)
    host, port = str(mesh.target.host), mesh.target.port
    idle = [await asyncio.open_connection(host, port, ssl=ctx) for _ in range(3)]
    try:
        await until("three unproven streams", lambda: mesh.relay.unproven() == 3)
        reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
        kind, why = await first_frame(reader)
        assert kind == ERROR and b"too many streams without a proven key" in why
        writer.close()
    finally:
        for _, w in idle:
            w.close()
    await until("their slots freed", lambda: mesh.relay.unproven() == 0)
    # A node's stream is let in again, and proves its key as before.
    a, b = start_host(mesh), start_host(mesh)
    try:
        b.client.local(PrivateKey.generate().public_key(), mesh.target)
        a.client.local(b.key.public_key(), mesh.target)
        await until("both connected", lambda: both_connected(mesh, a, b))
        assert mesh.relay.unproven() == 0
    finally:
        await stop(a, b)
