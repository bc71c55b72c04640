"""The reconcile loop: the newest netmap → `HostConfig` → one part to each adapter.

    offer(netmap)   whoever receives netmaps hands over the newest; never blocks. One pending
                    slot, never a queue: a burst of netmaps coalesces into one apply.
    run()           the loop. Each round plans the newest netmap (the only place that plans),
                    gives each adapter its part and skips a part equal to the one it last applied.
                    A failed part is retried with backoff, re-planned from the newest netmap:
                    never the config it failed with once a newer one exists. A failure in one
                    subsystem never holds back the others, and subsystems that share nothing
                    (the tunnel with its routes and resolver; Docker's network; the firewall)
                    are applied side by side.
    first_apply()   the start-up round: raises when an essential subsystem fails, so the caller
                    can undo a fresh join.
    apply_early()   some subsystems before that round (a resumed agent's DNS: the containers'
                    redirect outlived the last agent and points at this resolver).
    stop()          SIGTERM: the mesh stays as it is, only the containers' DNS redirect goes (the
                    resolver dies with the agent; containers fall back to Docker's upstream).
    teardown()      `shoal down`: remove everything; nothing is applied after it.

A plan can name a time it changes at with no new netmap (`HostConfig.replan_at`, a key
rotation's switch): the loop wakes then and plans again.

Every `resync_seconds` a round re-applies every part even when unchanged: that converges drift
(someone deleted a route) without re-reading WireGuard, netlink, Docker and iptables on every
netmap.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from shoal.agent.clock import Clock
from shoal.agent.health import Health, subsystem_failed
from shoal.dataplane.base import DataPlane
from shoal.model.errors import ShoalError
from shoal.model.netmap import NetworkMap
from shoal.model.status import SubsystemDown
from shoal.plan.hostconfig import (
    DnsConfig,
    DockerNetworkConfig,
    FirewallConfig,
    HostConfig,
    RoutingConfig,
    without_dns_redirect,
)

log = logging.getLogger(__name__)

C = TypeVar("C", bound=BaseModel | None, contravariant=True)
P = TypeVar("P", bound=BaseModel | None)

# Seconds before retrying a failed subsystem, by how often it failed in a row.
RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)


class Adapter(Protocol[C]):
    """One subsystem of the host. `apply` converges it to `cfg` and says whether anything
    changed; it may be called any number of times with the same config. `teardown` removes what
    shoal made there and says whether there was anything."""

    async def apply(self, cfg: C) -> bool: ...

    async def teardown(self) -> bool: ...


class NetworkAdapter(Adapter[DockerNetworkConfig | None], Protocol):
    """The Docker network; its part is None on a host without Docker (nothing to do)."""

    @property
    def kept_for(self) -> tuple[str, ...]:
        """The containers that kept the network in place at the last teardown."""
        ...


@dataclass(frozen=True, slots=True)
class Adapters:
    """The host, one adapter per part of `HostConfig` (fakes from `shoal.testing` in tests)."""

    tunnel: DataPlane
    routing: Adapter[RoutingConfig]
    docker_network: NetworkAdapter
    dns: Adapter[DnsConfig]
    firewall: Adapter[FirewallConfig]


@dataclass(frozen=True, slots=True)
class SubsystemState:
    """What the reconciler knows of one subsystem (tests and status read it)."""

    name: str
    last_applied_at: datetime | None
    last_error: str | None
    failures: int  # in a row; 0 once an apply succeeded
    applies_total: int = 0  # since start, failed ones included (metrics)
    failures_total: int = 0  # since start


class _Slot:
    """One subsystem: its part of the config, how to apply it, and what happened last."""

    def __init__(
        self,
        name: str,
        part: Callable[[HostConfig], BaseModel | None],
        apply: Callable[[HostConfig], Awaitable[bool]],
        *,
        essential: bool,
    ) -> None:
        self.name = name
        self.part = part
        self.apply = apply
        self.essential = essential  # False: a failure at start is a warning, not fatal
        self.applied: BaseModel | None = None  # None: unknown (never applied, failed, torn down)
        self.failed: BaseModel | None = None  # the part the last attempt failed with
        self.retry_at: float | None = None  # monotonic
        self.failures = 0
        self.last_error: str | None = None
        self.last_applied_at: datetime | None = None
        self.applies_total = 0
        self.failures_total = 0
        self.recheck = False  # the host changed under this part: apply it even if unchanged

    def due(self, cfg: HostConfig, now: float, force: bool) -> bool:
        part = self.part(cfg)
        if force or self.recheck:
            return True
        if part == self.applied:
            return False
        # The same part that just failed waits for its retry; a different one goes now.
        return not (part == self.failed and self.retry_at is not None and now < self.retry_at)

    def state(self) -> SubsystemState:
        return SubsystemState(
            self.name,
            self.last_applied_at,
            self.last_error,
            self.failures,
            self.applies_total,
            self.failures_total,
        )


class Reconciler:
    """Owns the loop and the latest-wins slot; see the module docstring."""

    def __init__(
        self,
        adapters: Adapters,
        plan: Callable[[NetworkMap], HostConfig],
        health: Health,
        clock: Clock,
        resync_seconds: float = 30.0,
    ) -> None:
        self.adapters = adapters
        self._plan = plan
        self._health = health
        self._clock = clock
        self.resync_seconds = resync_seconds
        tunnel = _slot("tunnel", lambda c: c.tunnel, adapters.tunnel)
        routing = _slot("routing", lambda c: c.routing, adapters.routing)
        network = _slot("docker-network", lambda c: c.docker_network, adapters.docker_network)
        # Names are a feature, the mesh is the job: no DNS is a warning, never fatal.
        dns = _slot("dns", lambda c: c.dns, adapters.dns, essential=False)
        firewall = _slot("firewall", lambda c: c.firewall, adapters.firewall)
        # Field order of HostConfig (teardown goes in reverse).
        self._slots: tuple[_Slot, ...] = (tunnel, routing, network, dns, firewall)
        # Chains that share nothing run concurrently: a join waits for the slowest chain, not
        # for the sum (measured at a join: tunnel 80 ms, Docker network 90-110 ms, firewall
        # 75-85 ms, the rest ~15 ms). Within a chain, routes need the interface and the
        # resolver its address. The firewall names interfaces, which need not exist yet;
        # Docker's network creation and shoal's iptables-restore -w serialise on the xtables
        # lock, and --noflush touches only shoal's chains.
        self._chains: tuple[tuple[_Slot, ...], ...] = (
            (tunnel, routing, dns),
            (network,),
            (firewall,),
        )
        self._netmap: NetworkMap | None = None
        self._planned: HostConfig | None = None  # the newest config a round worked towards
        self._wakeup = asyncio.Event()
        self._resync_at = clock.monotonic() + resync_seconds
        # Rounds and teardown never interleave, and nothing is applied once stopped: a netmap
        # arriving during `shoal down` must not bring the interface back.
        self._lock = asyncio.Lock()
        self._stopped = False

    # -- input -----------------------------------------------------------------------------

    def offer(self, netmap: NetworkMap) -> None:
        """Hand over the newest netmap; an older one not yet applied is dropped."""
        self._netmap = netmap
        self._wakeup.set()

    def recheck(self, name: str) -> None:
        """Apply subsystem `name` again at the next round, its part changed or not: something
        it reads from the host changed (a container's bridge port, for the firewall)."""
        for slot in self._slots:
            slot.recheck |= slot.name == name
        self._wakeup.set()

    def subsystems(self) -> tuple[SubsystemState, ...]:
        return tuple(slot.state() for slot in self._slots)

    def applied(self, name: str) -> BaseModel | None:
        """The part subsystem `name` last applied successfully (None: none in force)."""
        return next((s.applied for s in self._slots if s.name == name), None)

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        """Apply offered netmaps, retries and resyncs until stopped or torn down."""
        while not self._stopped:
            await self._clock.wait(self._wakeup, self._until_next())
            self._wakeup.clear()
            await self.step()

    def _until_next(self) -> float:
        now = self._clock.monotonic()
        deadlines = [self._resync_at, *(s.retry_at for s in self._slots if s.retry_at is not None)]
        replan_at = self._planned.replan_at if self._planned is not None else None
        if replan_at is not None:
            # The plan changes at a wall-clock time (a key rotation's switch): wake then.
            deadlines.append(now + (replan_at - self._clock.now()).total_seconds())
        return max(0.0, min(deadlines) - now)

    async def step(self) -> bool:
        """One round over what is due now; True when the host changed."""
        async with self._lock:
            if self._stopped or self._netmap is None:
                return False
            now = self._clock.monotonic()
            force = now >= self._resync_at
            if force:
                self._resync_at = now + self.resync_seconds
            return await self._round(self._netmap, force)

    async def first_apply(self) -> None:
        """Apply the offered netmap to every subsystem now.

        Raises:
            The error of the first essential subsystem that failed (the others were still
            applied, and the failed ones are retried by `run`).
        """
        async with self._lock:
            if self._netmap is None:
                raise RuntimeError("first_apply before any netmap was offered")
            timings: dict[str, float] = {}
            try:
                await self._round(self._netmap, force=True, raise_essential=True, timings=timings)
            finally:
                # Where a join's time goes (the join benchmark reads this line).
                log.info(
                    "first apply: %s",
                    ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in timings.items()),
                )

    async def apply_early(self, names: Collection[str]) -> None:
        """Apply only the subsystems `names` of the offered netmap, now, ahead of `first_apply`
        (which applies them again: a no-op for an adapter whose config is unchanged). A
        failure is recorded and retried like any other, never raised."""
        async with self._lock:
            if self._netmap is None:
                raise RuntimeError("apply_early before any netmap was offered")
            early = tuple(slot for slot in self._slots if slot.name in names)
            await self._round(self._netmap, force=True, chains=(early,))

    async def _round(
        self,
        netmap: NetworkMap,
        force: bool,
        raise_essential: bool = False,
        timings: dict[str, float] | None = None,
        chains: tuple[tuple[_Slot, ...], ...] | None = None,
    ) -> bool:
        """Apply what is due, of `chains` (default: every subsystem); `timings` (if given)
        receives each applied part's seconds."""
        cfg = self._planned = self._plan(netmap)
        now = self._clock.monotonic()
        errors: dict[str, Exception] = {}

        async def run_chain(chain: tuple[_Slot, ...]) -> bool:
            changed = False
            for slot in chain:
                if not slot.due(cfg, now, force):
                    continue
                slot.applies_total += 1
                started = time.perf_counter()
                try:
                    changed |= await slot.apply(cfg)
                except Exception as exc:
                    self._failed(slot, cfg, exc)
                    errors[slot.name] = exc
                    continue
                finally:
                    if timings is not None:
                        timings[slot.name] = time.perf_counter() - started
                self._succeeded(slot, cfg)
            return changed

        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(run_chain(chain), name=f"apply-{chain[0].name}")
                for chain in (self._chains if chains is None else chains)
                if chain
            ]
        changed = any(task.result() for task in tasks)
        if raise_essential:
            for slot in self._slots:  # the first essential failure, in apply order
                if slot.essential and slot.name in errors:
                    raise errors[slot.name]
        if changed:
            log.info("host reconciled to netmap r%d", netmap.revision)
        return changed

    def _succeeded(self, slot: _Slot, cfg: HostConfig) -> None:
        slot.applied, slot.failed, slot.retry_at = slot.part(cfg), None, None
        slot.recheck = False
        slot.failures, slot.last_error = 0, None
        slot.last_applied_at = self._clock.now()
        self._health.clear(subsystem_failed(slot.name))

    def _failed(self, slot: _Slot, cfg: HostConfig, exc: Exception) -> None:
        if isinstance(exc, ShoalError):
            log.warning("%s: %s", slot.name, exc)
        else:  # a bug, not the host: keep the traceback
            log.exception("%s: apply failed", slot.name)
        delay = RETRY_SECONDS[min(slot.failures, len(RETRY_SECONDS) - 1)]
        # What the host looks like after a partial apply is unknown: re-apply even if unchanged.
        slot.applied, slot.failed, slot.recheck = None, slot.part(cfg), False
        slot.retry_at = self._clock.monotonic() + delay
        slot.failures += 1
        slot.failures_total += 1
        slot.last_error = str(exc) or type(exc).__name__
        self._health.warn(
            subsystem_failed(slot.name),
            f"{slot.name}: {slot.last_error} (failed {slot.failures}x, retrying in {delay:g}s)",
        )

    # -- the end ---------------------------------------------------------------------------

    async def stop(self) -> None:
        """The agent exits and leaves the mesh configured, except the containers' DNS redirect
        (its resolver dies with the agent). Idempotent; nothing is applied afterwards."""
        async with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self._wakeup.set()
            if self._planned is None:
                return
            try:
                await self.adapters.firewall.apply(without_dns_redirect(self._planned.firewall))
                await self.adapters.dns.teardown()
            except Exception as exc:
                log.warning("could not remove the DNS redirect: %s", exc)

    async def teardown(self) -> tuple[SubsystemDown, ...]:
        """Remove everything shoal made on this host, in reverse apply order; stop for good.

        Best effort: a subsystem that fails to go is reported and the others are still removed.
        """
        async with self._lock:
            self._stopped = True
            self._wakeup.set()
            for slot in self._slots:
                slot.applied = None
            return await teardown_adapters(self.adapters)


async def teardown_adapters(adapters: Adapters) -> tuple[SubsystemDown, ...]:
    """Tear each adapter down in reverse apply order (firewall first: its DNS redirect and
    forwarding rules go before what they point at). Best effort: a subsystem that fails to go
    is reported, and the others are still removed."""
    steps: tuple[tuple[str, Adapter[Any]], ...] = (
        ("firewall", adapters.firewall),
        ("dns", adapters.dns),
        ("docker-network", adapters.docker_network),
        ("routing", adapters.routing),
        ("tunnel", adapters.tunnel),
    )
    results = []
    for name, adapter in steps:
        try:
            removed = await adapter.teardown()
        except Exception as exc:
            log.warning("%s: teardown failed: %s", name, exc)
            results.append(SubsystemDown(subsystem=name, removed=False, error=str(exc)))
            continue
        kept = adapters.docker_network.kept_for if adapter is adapters.docker_network else ()
        results.append(SubsystemDown(subsystem=name, removed=removed, kept_for=kept))
    return tuple(results)


def _slot(
    name: str, part: Callable[[HostConfig], P], adapter: Adapter[P], *, essential: bool = True
) -> _Slot:
    async def apply(cfg: HostConfig) -> bool:
        return await adapter.apply(part(cfg))

    return _Slot(name, part, apply, essential=essential)
