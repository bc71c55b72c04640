"""The reconcile loop against a faked host: what the host looks like after each netmap, latest
wins, per-subsystem failure and retry, resync, first apply, stop and teardown. Time is a
ManualClock; nothing sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import timedelta
from ipaddress import IPv4Address

import pytest

from shoal.agent.health import Health
from shoal.agent.reconciler import Reconciler
from shoal.firewall.errors import FirewallError
from shoal.model.keys import PrivateKey, PublicKey
from shoal.model.netmap import PEER_SWITCH_LAG, Container, NetworkMap
from shoal.model.status import AgentState
from shoal.plan.hostconfig import DockerNetworkConfig, FirewallConfig, HostConfig, plan_host
from shoal.testing.builders import netmap
from shoal.testing.clock import ManualClock, settle
from shoal.testing.fakes import Failing, FakeDockerNetwork, FakeFirewall, FakeHost

KEY = PrivateKey(b"\x07" * 32)
RESYNC = 300.0


def plan(nm: NetworkMap) -> HostConfig:
    return plan_host(nm, KEY, 51820)


def pub(i: int) -> PublicKey:
    return PrivateKey(bytes([i]) * 32).public_key()


def short(i: int) -> str:
    return pub(i).short()


def peer_line(i: int) -> str:
    return (
        f"shoal0 peer {short(i)} endpoint 192.0.2.{10 + i}:51820 "
        f"allowed-ips 10.42.{i}.0/24, 100.64.0.{i}/32 keepalive 25"
    )


def route_line(i: int) -> str:
    return f"route 10.42.{i}.0/24 dev shoal0 src 100.64.0.1 mtu 1420"


def host_dump(peers: list[int], revision: int, flavour: str = "kernel") -> str:
    """What host h1 looks like with `peers`, once netmap `revision` is applied."""
    return "\n".join(
        [
            f"shoal0 {flavour} up mtu 1420 address 100.64.0.1/10 port 51820 "
            f"key {KEY.public_key().short()}",
            *(peer_line(i) for i in sorted(peers, key=lambda i: str(pub(i)))),
            "forwarding 1",
            *(route_line(i) for i in sorted(peers)),
            "network shoal subnet 10.42.1.0/24 gateway 10.42.1.1 bridge shoal-br0 mtu 1420",
            f"dns 100.64.0.1:53 names of netmap r{revision} ({len(peers) + 1} nodes, 0 containers)",
            "firewall forward shoal0 <-> shoal-br0 for 10.42.1.0/24, "
            "no NAT to 10.42.0.0/16 100.64.0.0/10, dns-redirect 100.64.0.1:53",
        ]
    )


@dataclass
class Rig:
    host: FakeHost
    clock: ManualClock
    health: Health
    reconciler: Reconciler


def make_rig(flavour: str = "kernel") -> Rig:
    host = FakeHost("wireguard-go" if flavour == "wireguard-go" else "kernel")
    clock = ManualClock()
    health = Health(clock)
    health.configured = True
    return Rig(host, clock, health, Reconciler(host.adapters, plan, health, clock, RESYNC))


@pytest.fixture
def rig() -> Rig:
    return make_rig()


@pytest.fixture
async def running(rig: Rig) -> AsyncIterator[Rig]:
    """`rig` with its loop running, as in the agent."""
    async with asyncio.TaskGroup() as tasks:
        loop = tasks.create_task(rig.reconciler.run(), name="reconcile")
        yield rig
        loop.cancel()


STATES = [
    ("first peers", [2, 3]),
    ("a peer joins", [2, 3, 4]),
    ("a peer leaves", [2, 4]),
    ("alone", []),
]


async def test_host_states_follow_the_netmaps(rig: Rig) -> None:
    for revision, (name, peers) in enumerate(STATES, start=1):
        rig.reconciler.offer(netmap(1, peers, revision=revision))
        assert await rig.reconciler.step() is True, name
        assert rig.host.dump() == host_dump(peers, revision), name
        rig.reconciler.offer(netmap(1, peers, revision=revision))
        assert await rig.reconciler.step() is False, f"{name}: a repeat must change nothing"
    assert rig.health.state() is AgentState.RUNNING


async def test_unchanged_subsystems_are_not_touched(rig: Rig) -> None:
    rig.reconciler.offer(netmap(1, [2, 3]))
    await rig.reconciler.step()
    before = {name: fake.applies for name, fake in fakes(rig.host).items()}
    web = Container(id="c1", node_id="n2", name="web", ip=IPv4Address("10.42.2.5"))
    rig.reconciler.offer(netmap(1, [2, 3], revision=2).model_copy(update={"containers": (web,)}))
    await rig.reconciler.step()
    after = {name: fake.applies for name, fake in fakes(rig.host).items()}
    # A new container changes the names only: WireGuard, netlink, Docker, iptables untouched.
    assert {n for n in after if after[n] != before[n]} == {"dns"}
    assert "(3 nodes, 1 containers)" in rig.host.dns.dump()


async def test_a_recheck_applies_the_firewall_again_and_nothing_else(rig: Rig) -> None:
    """A container restarted behind a new bridge port: no new netmap, but the firewall must
    look at the host again (its anti-spoofing bindings)."""
    rig.reconciler.offer(netmap(1, [2, 3]))
    await rig.reconciler.step()
    before = {name: fake.applies for name, fake in fakes(rig.host).items()}
    rig.reconciler.recheck("firewall")
    await rig.reconciler.step()
    after = {name: fake.applies for name, fake in fakes(rig.host).items()}
    assert {n for n in after if after[n] != before[n]} == {"firewall"}
    await rig.reconciler.step()  # once: the next round leaves it alone again
    assert {name: fake.applies for name, fake in fakes(rig.host).items()} == after


def fakes(host: FakeHost) -> dict[str, Failing]:
    return {
        "tunnel": host.tunnel.wireguard,
        "routing": host.routing,
        "docker-network": host.docker_network,
        "dns": host.dns,
        "firewall": host.firewall,
    }


async def test_latest_wins_a_burst_coalesces_into_one_apply(running: Rig) -> None:
    for revision in (1, 2, 3):
        running.reconciler.offer(netmap(1, list(range(2, 2 + revision)), revision=revision))
    await settle()
    assert running.host.firewall.applies == 1
    assert running.host.dump() == host_dump([2, 3, 4], 3)


async def test_netmaps_arriving_during_an_apply_coalesce_to_the_newest(running: Rig) -> None:
    gate = asyncio.Event()
    applied: list[int] = []
    real_apply = running.host.dns.apply

    async def slow_apply(cfg: object) -> bool:
        applied.append(cfg.netmap.revision)  # type: ignore[attr-defined]
        await gate.wait()
        return await real_apply(cfg)  # type: ignore[arg-type]

    running.host.dns.apply = slow_apply  # type: ignore[method-assign]
    running.reconciler.offer(netmap(1, [2], revision=1))
    await settle()
    for revision in (2, 3, 4):
        running.reconciler.offer(netmap(1, [2], revision=revision))
    gate.set()
    await settle()
    assert applied == [1, 4]
    assert running.host.dump() == host_dump([2], 4)


async def test_a_failed_subsystem_is_retried_with_the_newest_netmap_never_the_stale_one(
    running: Rig,
) -> None:
    """Regression: the old loop slept 5 s after a failure, then resubmitted the config it had
    failed with, overwriting a newer pending one; the host went back to the old netmap."""
    host, clock = running.host, running.clock
    host.firewall.fail = FirewallError("iptables-restore failed (exit 4): Resource busy")
    running.reconciler.offer(netmap(1, [2], revision=1))
    await settle()
    # The other subsystems are applied anyway; the firewall's problem is named.
    assert "firewall none" in host.dump() and peer_line(2) in host.dump()
    (warning,) = running.health.warnings()
    assert warning.code == "firewall-failed"
    assert "Resource busy" in warning.message and "retrying in 1s" in warning.message
    assert running.health.state() is AgentState.DEGRADED

    running.reconciler.offer(netmap(1, [2, 3], revision=2))  # newer, during the backoff
    await settle()
    assert peer_line(3) in host.dump() and route_line(3) in host.dump()
    host.firewall.fail = None
    tunnel_before = host.tunnel.dump()
    await clock.advance(10)
    assert host.dump() == host_dump([2, 3], 2)
    assert host.tunnel.dump() == tunnel_before, "the retry must not bring back r1's peers"
    assert running.health.warnings() == ()
    assert running.health.state() is AgentState.RUNNING


async def test_retries_back_off_and_only_the_failed_subsystem_is_retried(rig: Rig) -> None:
    rig.host.routing.fail = OSError("netlink socket gone")  # a bug-shaped error counts too
    rig.reconciler.offer(netmap(1, [2]))
    await rig.reconciler.step()
    state = {s.name: s for s in rig.reconciler.subsystems()}
    assert state["routing"].last_error == "netlink socket gone"
    assert state["routing"].failures == 1 and state["routing"].last_applied_at is None
    assert state["tunnel"].last_applied_at == rig.clock.now()
    tunnel_applies = rig.host.tunnel.wireguard.applies

    await rig.reconciler.step()  # not due yet: the same failed part waits for its backoff
    assert rig.host.routing.applies == 1
    await rig.clock.advance(1)
    await rig.reconciler.step()
    assert rig.host.routing.applies == 2
    assert "retrying in 2s" in rig.health.warnings()[0].message
    rig.host.routing.fail = None
    await rig.clock.advance(2)
    await rig.reconciler.step()
    assert rig.host.tunnel.wireguard.applies == tunnel_applies
    assert {s.name: s.failures for s in rig.reconciler.subsystems()}["routing"] == 0
    assert rig.host.dump() == host_dump([2], 1)


async def test_resync_repairs_drift(running: Rig) -> None:
    running.reconciler.offer(netmap(1, [2, 3]))
    await settle()
    running.host.routing.delete_route("10.42.3.0/24")  # someone deleted a route by hand
    await running.clock.advance(RESYNC - 1)
    assert route_line(3) not in running.host.dump()
    await running.clock.advance(1)
    assert running.host.dump() == host_dump([2, 3], 1)


async def test_a_crashed_wireguard_go_is_restarted_by_the_resync() -> None:
    rig = make_rig("wireguard-go")
    rig.reconciler.offer(netmap(1, [2]))
    await rig.reconciler.step()
    rig.host.tunnel.wireguard.crash()
    await rig.clock.advance(RESYNC)
    assert await rig.reconciler.step() is True
    assert rig.host.dump() == host_dump([2], 1, flavour="wireguard-go")


async def test_first_apply_raises_for_an_essential_subsystem_only(rig: Rig) -> None:
    rig.host.docker_network.fail = OSError("dockerd went away")
    rig.reconciler.offer(netmap(1, [2]))
    with pytest.raises(OSError, match="dockerd went away"):
        await rig.reconciler.first_apply()
    assert "firewall forward" in rig.host.dump(), "the others were still applied"

    names_only = make_rig()
    names_only.host.dns.fail = OSError("address in use")
    names_only.reconciler.offer(netmap(1, [2]))
    await names_only.reconciler.first_apply()  # the mesh works: DNS is a warning
    assert [w.code for w in names_only.health.warnings()] == ["dns-failed"]


async def test_nothing_is_applied_after_teardown(running: Rig) -> None:
    running.host.docker_network.attached = ["web"]
    running.reconciler.offer(netmap(1, [2]))
    await settle()
    down = await running.reconciler.teardown()
    assert [(d.subsystem, d.removed, d.kept_for) for d in down] == [
        ("firewall", True, ()),
        ("dns", True, ()),
        ("docker-network", False, ("web",)),
        ("routing", False, ()),
        ("tunnel", True, ()),
    ]
    running.reconciler.offer(netmap(1, [2, 3], revision=2))  # a netmap arriving during down
    await running.clock.advance(RESYNC)
    assert await running.reconciler.step() is False
    assert running.host.dump() == "\n".join(
        [
            "forwarding 1",
            route_line(2),  # the fake keeps routes; the real ones go with the interface
            "network shoal subnet 10.42.1.0/24 gateway 10.42.1.1 bridge shoal-br0 mtu 1420 "
            "attached web",
            "dns none",
            "firewall none",
        ]
    )


async def test_teardown_goes_on_past_a_failure(rig: Rig) -> None:
    rig.reconciler.offer(netmap(1, [2]))
    await rig.reconciler.step()

    async def broken() -> bool:
        raise FirewallError("iptables-restore failed")

    rig.host.firewall.teardown = broken  # type: ignore[method-assign]
    down = {d.subsystem: d for d in await rig.reconciler.teardown()}
    assert down["firewall"].error == "iptables-restore failed"
    assert down["tunnel"].removed is True


async def test_stop_drops_only_the_dns_redirect(rig: Rig) -> None:
    rig.reconciler.offer(netmap(1, [2]))
    await rig.reconciler.step()
    await rig.reconciler.stop()
    want = host_dump([2], 1).replace("dns-redirect 100.64.0.1:53", "dns-redirect none")
    want = want.replace("dns 100.64.0.1:53 names of netmap r1 (2 nodes, 0 containers)", "dns none")
    assert rig.host.dump() == want
    rig.reconciler.offer(netmap(1, [2, 3], revision=2))
    assert await rig.reconciler.step() is False


class FirewallFirst(FakeDockerNetwork):
    """A Docker network created only once the firewall is in place: its apply finishes only
    if the two run side by side (one after the other, the firewall comes last)."""

    def __init__(self, firewall_applied: asyncio.Event) -> None:
        super().__init__()
        self.firewall_applied = firewall_applied

    async def apply(self, cfg: DockerNetworkConfig) -> bool:
        await self.firewall_applied.wait()
        return await super().apply(cfg)


class SignallingFirewall(FakeFirewall):
    def __init__(self, applied: asyncio.Event) -> None:
        super().__init__()
        self.applied = applied

    async def apply(self, cfg: FirewallConfig) -> bool:
        changed = await super().apply(cfg)
        self.applied.set()
        return changed


async def test_independent_subsystems_are_applied_side_by_side() -> None:
    host, firewall_applied = FakeHost(), asyncio.Event()
    network = FirewallFirst(firewall_applied)
    adapters = replace(
        host.adapters, docker_network=network, firewall=SignallingFirewall(firewall_applied)
    )
    clock = ManualClock()
    reconciler = Reconciler(adapters, plan, Health(clock), clock, RESYNC)
    reconciler.offer(netmap(1, [2]))
    async with asyncio.timeout(5):  # one after the other, it would wait forever
        await reconciler.first_apply()
    assert network.network is not None


async def test_the_loop_wakes_at_a_peers_key_switch_with_no_new_netmap() -> None:
    host, clock = FakeHost("kernel"), ManualClock()
    health = Health(clock)
    reconciler = Reconciler(
        host.adapters, lambda nm: plan_host(nm, KEY, 51820, clock.now()), health, clock, RESYNC
    )
    new = PrivateKey(b"\x63" * 32).public_key()
    switch_at = clock.now() + timedelta(seconds=3)
    nm = netmap(1, [2, 3])
    rotating = nm.peers[0].model_copy(update={"next_key": new, "switch_at": switch_at})
    reconciler.offer(nm.model_copy(update={"peers": (rotating, nm.peers[1])}))
    async with asyncio.TaskGroup() as tasks:
        loop = tasks.create_task(reconciler.run(), name="reconcile")
        await settle()
        assert f"peer {short(2)} " in host.dump() and new.short() not in host.dump()
        # The peer entry moves PEER_SWITCH_LAG after the rotating node's own switch.
        await clock.advance(3 + PEER_SWITCH_LAG.total_seconds() - 0.1)
        assert f"peer {short(2)} " in host.dump() and new.short() not in host.dump()
        await clock.advance(0.2)
        assert f"peer {short(2)} " not in host.dump()
        assert f"peer {new.short()} endpoint 192.0.2.12:51820 allowed-ips 10.42.2.0/24" in (
            host.dump()
        )
        loop.cancel()


async def test_apply_early_applies_only_the_named_subsystems_and_never_raises(rig: Rig) -> None:
    rig.reconciler.offer(netmap(1, [2], revision=4))
    await rig.reconciler.apply_early(("dns",))
    # A resumed agent answers names from its cached netmap before anything else is touched.
    assert rig.host.dump() == "\n".join(
        [
            "forwarding 0",
            "network none",
            "dns 100.64.0.1:53 names of netmap r4 (2 nodes, 0 containers)",
            "firewall none",
        ]
    )
    assert {name: fake.applies for name, fake in fakes(rig.host).items()} == {
        "tunnel": 0,
        "routing": 0,
        "docker-network": 0,
        "dns": 1,
        "firewall": 0,
    }
    await rig.reconciler.first_apply()
    assert rig.host.dump() == host_dump([2], 4)

    no_address = make_rig()
    no_address.host.dns.fail = OSError("cannot assign requested address")  # after a reboot
    no_address.reconciler.offer(netmap(1, [2]))
    await no_address.reconciler.apply_early(("dns",))
    assert [w.code for w in no_address.health.warnings()] == ["dns-failed"]
    no_address.host.dns.fail = None
    await no_address.reconciler.first_apply()
    assert no_address.health.warnings() == ()
