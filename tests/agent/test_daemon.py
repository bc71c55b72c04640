"""The agent against the real control server (in process, over loopback) and a faked host:
NEEDS_JOIN with the recovery command, DEGRADED while the server is away, a failed netmap
cache write, the first-apply rollback and `down`."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import json
import os
import socket
from collections.abc import AsyncIterator, Callable
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from shoal.agent import statefiles
from shoal.agent.config import AgentConfig
from shoal.agent.daemon import RETRY_SECONDS, Agent, down_offline, leave_mesh
from shoal.agent.errors import RotationFailed
from shoal.agent.statefiles import CachedNetmap, NodeIdentity, StateDir
from shoal.control.api import RATES
from shoal.control.app import RunningServer
from shoal.control.ca import rotate_ca
from shoal.control.limits import Rate, RateLimiter
from shoal.controlclient.errors import ControlRejected, ControlThrottled, ControlUnreachable
from shoal.dockerhost import DockerHost
from shoal.firewall.errors import FirewallError
from shoal.model.api import ContainerReport
from shoal.model.keys import PrivateKey
from shoal.model.netmap import Container, MapUpdate, NetworkMap
from shoal.model.policy import parse
from shoal.model.status import AgentState, DownReport
from shoal.testing.clock import ManualClock, settle
from shoal.testing.fakes import FakeHost
from tests.control.servers import admin_client, join, node_client, running_server

KEY = PrivateKey(b"\x07" * 32)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with running_server(tmp_path / "server") as running:
        yield running


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Rig:
    def __init__(self, tmp_path: Path, url: str, ca_pem: bytes, nm: NetworkMap):
        self.host = FakeHost()
        self.clock = ManualClock()
        self.state = StateDir(tmp_path / "state")
        self.state.ensure()
        identity = NodeIdentity(
            server_url=url,
            ca_pem=ca_pem.decode(),
            node_id=nm.self_node.id,
            name=nm.self_node.name,
        )
        self.state.save_identity(identity)
        cached = CachedNetmap(netmap=nm, received_at=self.clock.now())
        self.state.save_netmap(cached)
        self.agent = Agent(
            AgentConfig(state_dir=self.state.path, poll_wait_seconds=0),
            self.state,
            identity,
            cached,
            KEY,
            self.host.adapters,
            DockerHost("unix:///nonexistent.sock"),  # only the container watcher uses it
            self.clock,
        )


async def joined(tmp_path: Path, server: RunningServer) -> Rig:
    response = await join(server, "h1", key=KEY)
    return Rig(tmp_path, server.url, server.ca.ca_pem, response.netmap)


async def eventually(probe: Callable[[], bool], what: str, rounds: int = 500) -> None:
    """Let the agent's real I/O on loopback happen until `probe` holds."""
    for _ in range(rounds):
        if probe():
            return
        # Loopback I/O completes in the selector: give it a turn, bounded by `rounds`.
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def test_a_removed_node_needs_join_and_stops_asking(
    tmp_path: Path, server: RunningServer
) -> None:
    rig = await joined(tmp_path, server)
    await rig.agent.configure(fresh_join=True)
    async with admin_client(server) as admin:
        await admin.remove_node("h1")
    async with rig.agent.client:
        # Returns instead of retrying: a 4xx will not change by asking again.
        await rig.agent.follow_netmap()
    status = await rig.agent.status()
    assert status.state is AgentState.NEEDS_JOIN
    (warning,) = status.health
    assert warning.code == "needs-join"
    assert warning.message.endswith(
        f"join again: shoal down --leave --state-dir {rig.state.path} && "
        f"shoal up --server {server.url} --token-file FILE --state-dir {rig.state.path}"
    )
    assert "control" not in {w.code.split("-")[0] for w in status.health}


async def test_with_the_server_away_the_agent_is_degraded_on_its_last_netmap(
    tmp_path: Path, server: RunningServer
) -> None:
    response = await join(server, "h1", key=KEY)
    away = f"https://127.0.0.1:{closed_port()}"
    rig = Rig(tmp_path, away, server.ca.ca_pem, response.netmap)
    await rig.agent.configure(fresh_join=False)
    before = rig.host.dump()
    async with rig.agent.client, asyncio.TaskGroup() as tasks:
        poll = tasks.create_task(rig.agent.follow_netmap())
        await eventually(lambda: rig.clock.pending == 1, "the first retry to be scheduled")
        status = await rig.agent.status()
        assert status.state is AgentState.DEGRADED
        (warning,) = status.health
        assert warning.code == "control-unreachable"
        assert f"using netmap r{response.netmap.revision} from" in warning.message
        since = warning.since
        await rig.clock.advance(1)  # the second attempt fails too: same warning, same since
        await eventually(lambda: rig.clock.pending == 1, "the second retry")
        assert (await rig.agent.status()).health[0].since == since
        poll.cancel()
    assert rig.host.dump() == before, "the mesh stays as it was"


async def test_a_failed_netmap_cache_write_is_a_warning(
    tmp_path: Path, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = await joined(tmp_path, server)
    await rig.agent.configure(fresh_join=True)
    on_disk = (rig.state.path / "netmap.json").read_text()

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(statefiles.os, "fsync", disk_full)
    newer = rig.agent.cached.netmap.model_copy(update={"revision": 99})
    rig.agent.remember(newer)
    assert rig.agent.cached.netmap.revision == 99, "the agent follows the newest anyway"
    (warning,) = rig.agent.health.warnings()
    assert warning.code == "netmap-cache-failed"
    assert "No space left on device" in warning.message
    assert (rig.state.path / "netmap.json").read_text() == on_disk, "the old file is whole"
    assert sorted(p.name for p in rig.state.path.iterdir()) == [
        "netmap.json",
        "node.json",
    ]
    monkeypatch.undo()
    rig.agent.remember(newer)
    assert rig.agent.health.warnings() == ()
    assert json.loads((rig.state.path / "netmap.json").read_text())["netmap"]["revision"] == 99


async def test_a_failed_first_apply_of_a_fresh_join_undoes_the_host_and_keeps_the_node(
    tmp_path: Path, server: RunningServer
) -> None:
    rig = await joined(tmp_path, server)
    rig.state.mark_join_pending()  # as `_join_and_save` leaves it
    rig.host.firewall.fail = FirewallError("iptables-restore: line 3 failed")
    with pytest.raises(FirewallError):
        await rig.agent.configure(fresh_join=True)
    # No interface; forwarding stays on (Docker's too); the alone host had no routes.
    assert rig.host.dump() == "forwarding 1\nnetwork none\ndns none\nfirewall none"
    # The token is spent: the node stays registered, and its identity stays to resume it.
    assert rig.state.identity() is not None and rig.state.join_pending()
    async with admin_client(server) as admin:
        assert [n.name for n in await admin.list_nodes()] == ["h1"]


async def test_the_retry_of_a_failed_join_resumes_with_its_key_and_rolls_back_again(
    tmp_path: Path, server: RunningServer
) -> None:
    rig = await joined(tmp_path, server)
    rig.state.mark_join_pending()
    rig.host.firewall.fail = FirewallError("iptables-restore: line 3 failed")
    # A resumed start (no token): still the join's first configuration, undone on failure.
    with pytest.raises(FirewallError):
        await rig.agent.configure(fresh_join=False)
    assert rig.host.dump() == "forwarding 1\nnetwork none\ndns none\nfirewall none"
    rig.host.firewall.fail = None
    await rig.agent.configure(fresh_join=False)
    assert not rig.state.join_pending()  # configured once: a later failure is a node's
    assert rig.host.dump().startswith("shoal0 kernel up")
    async with node_client(server, KEY) as client:  # the key is still the credential
        assert (await client.poll(since=0, wait=0)).full is not None


async def test_down_removes_everything_and_leaves(tmp_path: Path, server: RunningServer) -> None:
    rig = await joined(tmp_path, server)
    await rig.agent.configure(fresh_join=True)
    report = await rig.agent.down(leave=True)
    assert report.left is True
    assert {s.subsystem: s.removed for s in report.subsystems} == {
        "firewall": True,
        "dns": True,
        "docker-network": True,
        "routing": False,
        "tunnel": True,
    }
    assert (await rig.agent.status()).state is AgentState.STOPPED
    assert not (rig.state.path / "node.json").exists()
    rig.agent.reconciler.offer(rig.agent.cached.netmap.model_copy(update={"revision": 7}))
    assert await rig.agent.reconciler.step() is False
    assert rig.host.tunnel.dump() == ""


async def test_the_agent_takes_the_trust_bundle_of_a_ca_being_introduced(tmp_path: Path) -> None:
    data = tmp_path / "server"
    data.mkdir()
    rotate_ca(data, "introduce")  # the server will hold a next CA besides its own
    async with running_server(data) as server:
        rig = await joined(tmp_path, server)  # pinned the current CA only
        async with rig.agent.client:
            await rig.agent.refresh_trust()
            assert (await rig.agent.client.poll(since=0, wait=0)).kind == "full"
        saved = rig.state.identity()
        assert saved is not None and saved.ca_pem.count("BEGIN CERTIFICATE") == 2
        assert "ca-expiring" not in {w.code for w in (await rig.agent.status()).health}


async def test_status_shows_the_enforced_policy_and_names_it_may_not_publish(
    tmp_path: Path, server: RunningServer
) -> None:
    response = await join(server, "h1", key=KEY)
    policy = parse("publish:\n  - {tags: [db], names: [db]}\n", "p.yaml")
    me = response.netmap.self_node
    impostor = Container(
        id="ab" * 32,
        node_id=me.id,
        name="app-db-1",
        ip=IPv4Address(int(me.subnet.network_address) + 5),
        project="app",
        service="db",
    )
    nm = response.netmap.model_copy(
        update={"policy": policy.model_copy(update={"revision": 4}), "containers": (impostor,)}
    )
    rig = Rig(tmp_path, server.url, server.ca.ca_pem, nm)
    await rig.agent.configure(fresh_join=False)
    status = await rig.agent.status()
    assert status.policy_revision == 4
    (warning,) = [w for w in status.health if w.code == "name-not-publishable"]
    assert warning.message == (
        "policy p.yaml r4 does not let this host (tags none) publish: app-db-1 (db); reported "
        "but not in DNS"
    )
    # ... and its DNS part leaves the container out.
    assert rig.host.dns.dump().endswith("(1 nodes, 0 containers)")


async def test_rotate_key_keeps_the_next_key_on_disk_first_and_promotes_it_at_the_switch(
    tmp_path: Path, server: RunningServer
) -> None:
    rig = await joined(tmp_path, server)
    next_file = rig.state.path / "private.key.next"
    async with rig.agent.client:
        rotation = await rig.agent.rotate_key()
        assert next_file.stat().st_mode & 0o777 == 0o600
        new = PrivateKey.parse(next_file.read_text())
        assert rotation.next_key == new.public_key()
        assert await rig.agent.rotate_key() == rotation  # asked again: the same rotation
        update = await rig.agent.client.poll(since=0, wait=0)
        assert update.full is not None
        rig.agent.remember(update.full)
        before = rig.agent._plan(update.full)
        async with asyncio.TaskGroup() as tasks:
            follower = tasks.create_task(rig.agent.follow_rotation(), name="key-rotation")
            await settle()
            assert rig.agent.private_key == KEY and next_file.exists()
            await rig.clock.advance((rotation.switch_at - rig.clock.now()).total_seconds())
            assert rig.agent.private_key == new and not next_file.exists()
            follower.cancel()
        assert PrivateKey.parse((rig.state.path / "private.key").read_text()) == new
        assert before.tunnel.interface.private_key == KEY
        assert rig.agent._plan(update.full).tunnel.interface.private_key == new
        await rig.agent.client.poll(since=0, wait=0)  # signed with the new key: accepted


async def test_a_refused_rotation_leaves_no_next_key(tmp_path: Path, server: RunningServer) -> None:
    rig = await joined(tmp_path, server)
    async with node_client(server, KEY) as client:
        await client.rotate(PrivateKey.generate())  # another key is already pending
    async with rig.agent.client:
        with pytest.raises(RotationFailed, match="refused"):
            await rig.agent.rotate_key()
    assert not (rig.state.path / "private.key.next").exists()
    assert rig.agent.next_key is None


async def test_down_with_a_state_dir_no_node_joined_undoes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A `shoal down --state-dir` typo (or the default dir, with the agent on another) once
    # deleted the running agent's shoal0 and firewall: its mesh was down until the resync.
    def touched(*args: object) -> None:
        raise AssertionError("down touched the host for a state dir no node joined with")

    monkeypatch.setattr("shoal.agent.daemon.select_dataplane", touched)
    monkeypatch.setattr("shoal.agent.daemon.host_adapters", touched)
    for state_dir in (tmp_path / "missing", tmp_path / "left"):
        if state_dir.name == "left":  # what `down --leave` keeps: the log, a fresh key gone
            state_dir.mkdir()
            (state_dir / "agent.log").write_text("")
        report = await down_offline(AgentConfig(state_dir=state_dir), leave=True)
        assert report == DownReport(subsystems=(), left=None)


async def test_leaving_after_the_operator_removed_the_node_is_done_not_unreachable(
    tmp_path: Path, server: RunningServer
) -> None:
    # NEEDS_JOIN's recovery starts with `shoal down --leave`: it said "could not reach the
    # server to leave" to a server that answered, and sent the operator to remove it there.
    rig = await joined(tmp_path, server)
    async with admin_client(server) as admin:
        await admin.remove_node("h1")
    identity = rig.state.identity()
    assert identity is not None
    assert await leave_mesh(identity, KEY) is True
    closed = dataclasses.replace(identity, server_url=f"https://127.0.0.1:{closed_port()}")
    assert await leave_mesh(closed, KEY) is False


async def follows_a_new_peer(rig: Rig, server: RunningServer) -> None:
    """A node joining now reaches the agent's map, and the agent is RUNNING."""
    beta = await join(server, "beta")
    await eventually(
        lambda: rig.agent.cached.netmap.peer(beta.node_id) is not None, "beta in the map"
    )
    assert (await rig.agent.status()).state is AgentState.RUNNING


async def test_the_agent_follows_the_netmap_stream(tmp_path: Path, server: RunningServer) -> None:
    rig = await joined(tmp_path, server)
    await rig.agent.configure(fresh_join=True)
    async with rig.agent.client, asyncio.TaskGroup() as tasks:
        follow = tasks.create_task(rig.agent.follow_netmap())
        await follows_a_new_peer(rig, server)
        # One stream carried it: the node's live watch is a stream, not a series of polls.
        assert server.service.registry.log.live_polls == 1
        follow.cancel()


async def test_against_a_server_without_streams_the_agent_long_polls(
    tmp_path: Path, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = await joined(tmp_path, server)
    await rig.agent.configure(fresh_join=True)

    async def older_server(since: int, wait: float) -> AsyncIterator[MapUpdate]:
        raise ControlRejected("not_found", "no such API route: GET /v1/netmap/stream")
        yield  # an async generator, as `watch` is

    monkeypatch.setattr(rig.agent.client, "watch", older_server)
    async with rig.agent.client, asyncio.TaskGroup() as tasks:
        follow = tasks.create_task(rig.agent.follow_netmap())
        await follows_a_new_peer(rig, server)
        follow.cancel()


async def test_a_throttled_stream_is_asked_again_later_not_given_up(
    tmp_path: Path, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 429 (the address's failed authentications, maybe a neighbour's behind one NAT) passes:
    DEGRADED while it lasts, never NEEDS_JOIN, and the stream follows again after it."""
    rig = await joined(tmp_path, server)
    await rig.agent.configure(fresh_join=True)
    watch = rig.agent.client.watch
    opened: list[int] = []

    async def throttled_once(since: int, wait: float) -> AsyncIterator[MapUpdate]:
        opened.append(since)
        if len(opened) == 1:
            raise ControlThrottled("too_many_requests", "too many failed authentications")
        async for update in watch(since, wait):
            yield update

    monkeypatch.setattr(rig.agent.client, "watch", throttled_once)
    async with rig.agent.client, asyncio.TaskGroup() as tasks:
        follow = tasks.create_task(rig.agent.follow_netmap())
        await eventually(lambda: rig.clock.pending == 1, "a retry waiting")
        status = await rig.agent.status()
        assert status.state is AgentState.DEGRADED
        assert "throttling this host" in " ".join(w.message for w in status.health)
        await rig.clock.advance(RETRY_SECONDS[0])
        await follows_a_new_peer(rig, server)
        follow.cancel()


async def test_a_stream_that_broke_after_delivering_is_opened_again_at_once(
    tmp_path: Path, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a long-poll moves on to the next replica within the call: no backoff, no DEGRADED."""
    rig = await joined(tmp_path, server)
    await rig.agent.configure(fresh_join=True)
    watch = rig.agent.client.watch
    opened: list[int] = []

    async def breaks_once(since: int, wait: float) -> AsyncIterator[MapUpdate]:
        opened.append(since)
        async for update in watch(since, wait):
            yield update
            if len(opened) == 1:
                raise ControlUnreachable("netmap stream from A broke: connection reset")

    monkeypatch.setattr(rig.agent.client, "watch", breaks_once)
    async with rig.agent.client, asyncio.TaskGroup() as tasks:
        follow = tasks.create_task(rig.agent.follow_netmap())
        await eventually(lambda: len(opened) == 2, "the stream opened again")
        assert rig.clock.pending == 0, "no retry delay"
        await follows_a_new_peer(rig, server)
        follow.cancel()


async def test_a_container_report_rechecks_the_firewall_only_with_local_containers_bound(
    tmp_path: Path, server: RunningServer
) -> None:
    response = await join(server, "h1", key=KEY)
    rig = Rig(tmp_path, server.url, server.ca.ca_pem, response.netmap)
    await rig.agent.configure(fresh_join=True)
    applies = rig.host.firewall.applies
    # No local container in the netmap: nothing is bound, whatever the bridge's ports.
    await rig.agent._on_containers([])
    await rig.agent.reconciler.step()
    assert rig.host.firewall.applies == applies
    me = response.netmap.self_node
    assert me.subnet is not None
    mine = Container(
        id="cd" * 32, node_id=me.id, name="web", ip=IPv4Address(int(me.subnet.network_address) + 2)
    )
    rig.agent.reconciler.offer(response.netmap.model_copy(update={"containers": (mine,)}))
    await rig.agent.reconciler.step()  # the netmap's container: the firewall's part changed
    applies = rig.host.firewall.applies
    # Restarted behind a new bridge port, the same report: the binding is read again.
    await rig.agent._on_containers([])
    await rig.agent.reconciler.step()
    assert rig.host.firewall.applies == applies + 1


class CountingLimiter(RateLimiter):
    """The server's per-node limiter, counting the requests it refused."""

    refused = 0

    def charge(self, source: str) -> float:
        wait = super().charge(source)
        self.refused += wait > 0
        return wait


async def test_a_throttled_container_report_is_sent_again_with_the_newest_set(
    tmp_path: Path, server: RunningServer
) -> None:
    """A burst of container starts outruns the server's per-node rate (429): the report is
    not dropped until the next change, the newest set goes once the server takes it."""
    rig = await joined(tmp_path, server)
    me = rig.agent.cached.netmap.self_node
    assert me.subnet is not None
    base = int(me.subnet.network_address)

    def report(*names: str) -> list[ContainerReport]:
        return [
            ContainerReport(id=f"{i:02x}" * 32, name=name, ip=IPv4Address(base + 2 + i))
            for i, name in enumerate(names)
        ]

    def names() -> set[str]:
        return {c.name for c in server.service.registry.containers_of(me.id).values()}

    limiter = CountingLimiter(Rate(burst=1, per_second=0.001))
    server.runner.app[RATES].node_writes = limiter
    async with rig.agent.client, asyncio.TaskGroup() as tasks:
        reporter = tasks.create_task(rig.agent._report_containers())
        await rig.agent._on_containers(report("web"))
        await eventually(lambda: names() == {"web"}, "web reported")
        await rig.agent._on_containers(report("web", "db"))
        await eventually(lambda: limiter.refused == 1, "the second report throttled")
        await rig.agent._on_containers(report("web", "db", "cache"))
        await settle()
        assert limiter.refused == 1, "no retry before its time"
        assert rig.agent.health.warnings() == ()  # throttled, not refused: nothing to fix
        server.runner.app[RATES].node_writes = RateLimiter(Rate(burst=10, per_second=1.0))
        await rig.clock.advance(1.0)
        await eventually(lambda: names() == {"web", "db", "cache"}, "the newest set reported")
        reporter.cancel()
