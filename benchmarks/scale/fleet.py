"""The simulated fleet: N agents in this one process, each speaking to the server through the
product's own `ControlClient` and folding every update into its map with `NetworkMap.apply`.

An agent here is what the agent daemon is to the control server, without a data plane: it
joins with a client of its own that it then closes (as `shoal up` does), and follows the
netmap with a second client (as the daemon does): one held `watch(since, wait)` stream (or,
with `Fleet.netmap` "poll", `poll(since, wait)` in a loop, as agents before streams and
against older servers do), and `report_containers` on the same client. Every client is made by
`agent_client`, the one place to adapt when the product's client changes how a node
authenticates.

What differs from a real fleet, and why:
- Identical peer records are shared between the simulated maps (`Interner`): 5,000 maps of
  5,000 peers do not fit in memory otherwise. Every reply is still parsed in full by
  `ControlClient`; the records are swapped for equal ones afterwards.
- Updates are applied after every agent has received the change (`Fleet.drain`): here 5,000
  agents share one CPU, and applying inline would serialise 5,000 x ~1 ms of `apply` into
  everybody's latency. Each agent's own apply time is added to its latency instead.
- After its first (catch-up) poll an agent continues on a new client: the catch-up carries up
  to N peers because every agent registered before any polled, which a real fleet joining one
  by one never does, and the server keeps buffers sized by the largest reply per connection.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Literal

from benchmarks.scale.server import BenchError
from shoal.controlclient.client import ControlClient
from shoal.controlclient.errors import ControlError, ControlUnreachable
from shoal.model.api import (
    ContainerReport,
    ContainersReport,
    RegisterRequest,
    RegisterResponse,
)
from shoal.model.keys import PrivateKey
from shoal.model.netmap import Endpoint, MapUpdate, NetworkMap, Node
from shoal.model.policy import Policy
from shoal.plan.policy import compile_for

POLL_WAIT = 25.0  # seconds, as the agent's default long-poll
CATCHUP_CONCURRENCY = 16  # first polls (each a delta of up to N peers) in flight at once
DRAIN_BATCH = 50  # agents' updates applied between two turns of the event loop
RETRY_SECONDS = 1.0  # after a failed poll, as the agent's first backoff step
REGISTER_ATTEMPTS = 3  # a registration timed out under load is tried again with the same key
UNDERLAY_BASE = IPv4Address("198.18.0.0")  # benchmarking range (RFC 2544): endpoints only

Kind = Literal["node", "container", "policy"]
Transport = Literal["stream", "poll"]  # how agents follow the netmap after their catch-up


@dataclass(frozen=True)
class ServerAccess:
    """What a node knows about its servers after `fetch_pinned_ca`: the replicas' URLs,
    pinned CA, join token."""

    urls: tuple[str, ...]
    ca_pem: bytes
    token: str

    def server_for(self, index: int) -> str:
        """Agent `index`'s `--server` value: every replica, starting with the `index`-th
        modulo their number, so that the fleet spreads evenly over the replicas."""
        first = index % len(self.urls)
        return ",".join(self.urls[first:] + self.urls[:first])


def agent_client(server: ServerAccess, key: PrivateKey, index: int) -> ControlClient:
    """The `ControlClient` of simulated agent `index`, whose node key is `key`: every
    simulated agent's client is made here and nowhere else.

    Each client has its own session, so each agent holds its own connections (its long-poll,
    and one more for a container report while the poll is held), as on a real host; no agent
    borrows another's. The session opens connections on demand and an agent never has more
    than two requests in flight: at most two connections each, as 5,000 agents need (the
    earlier raw-aiohttp fleet capped its sessions at two for this; no option is needed).

    `key` is the node's private key: every request is signed with it, as the agent's are."""
    return ControlClient(server.server_for(index), server.ca_pem, node_key=key)


async def opened(client: ControlClient) -> ControlClient:
    """`client` with its session open; the fleet closes it with `aclose()` (an agent's client
    outlives any one `async with` block here)."""
    return await client.__aenter__()


class Interner:
    """Equal peer records replaced by one shared object, so that thousands of simulated maps
    hold each record once. Only memory changes: the maps stay equal to what was received."""

    def __init__(self) -> None:
        self._by_id: dict[str, Node] = {}
        self._policy: Policy | None = None

    def policy(self, policy: Policy | None) -> Policy | None:
        """The policy, shared by every map that received an equal one (1,000 maps each
        holding its own parsed copy were 1,000 x its rules of garbage per policy change)."""
        if policy is None:
            return None
        if policy != self._policy:
            self._policy = policy
        return self._policy

    def node(self, node: Node) -> Node:
        hit = self._by_id.get(node.id)
        if hit is not None and hit == node:
            return hit
        self._by_id[node.id] = node
        return node

    def netmap(self, netmap: NetworkMap) -> NetworkMap:
        return netmap.model_copy(
            update={
                "self_node": self.node(netmap.self_node),
                "peers": tuple(self.node(p) for p in netmap.peers),
                "policy": self.policy(netmap.policy),
            }
        )

    def update(self, update: MapUpdate) -> MapUpdate:
        changes: dict[str, object] = {}
        if update.full is not None:
            changes["full"] = self.netmap(update.full)
        if update.self_node is not None:
            changes["self_node"] = self.node(update.self_node)
        if update.peers_changed:
            changes["peers_changed"] = tuple(self.node(p) for p in update.peers_changed)
        if update.policy is not None:
            changes["policy"] = self.policy(update.policy)
        return update.model_copy(update=changes) if changes else update


@dataclass
class Watch:
    """The change being measured: which peer name, container id or policy revision agents
    wait for."""

    kind: Kind
    key: str
    started: float  # perf_counter at the change
    expected: int  # agents that must see it
    arrived: dict[int, float] = field(default_factory=dict)  # agent index → received at
    own_cost: dict[int, float] = field(default_factory=dict)  # agent index → apply seconds
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def matches(self, update: MapUpdate) -> bool:
        if self.kind == "policy":
            policy = update.full.policy if update.full is not None else update.policy
            return policy is not None and str(policy.revision) == self.key
        if self.kind == "node":
            peers = update.full.peers if update.full is not None else update.peers_changed
            return any(p.name == self.key for p in peers)
        containers = (
            update.full.containers if update.full is not None else update.containers_changed
        )
        return any(c.id == self.key for c in containers)


@dataclass(frozen=True)
class Received:
    """An update as the agent's client returned it (parsed), not yet applied."""

    update: MapUpdate
    at: float  # perf_counter when the client returned it: the agent's own parse included
    counted: bool  # received while the fleet counts bytes


@dataclass
class Agent:
    """One simulated agent: its key, its client and its map."""

    index: int
    name: str
    key: PrivateKey
    client: ControlClient
    netmap: NetworkMap
    pending: list[Received] = field(default_factory=list)
    synced: bool = False  # first poll answered

    @property
    def since(self) -> int:
        return self.netmap.revision if not self.pending else self.pending[-1].update.revision


@dataclass
class Fleet:
    """The simulated agents of one run and what they have received."""

    server: ServerAccess
    netmap: Transport = "stream"
    interner: Interner = field(default_factory=Interner)
    agents: list[Agent] = field(default_factory=list)
    watch: Watch | None = None
    counting: bool = False
    bytes_in: int = 0  # JSON of the non-empty replies received while `counting`
    sample_delta: bytes | None = None  # the JSON of one counted delta, to time its parsing
    errors: Counter[str] = field(default_factory=Counter)
    catchup: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(CATCHUP_CONCURRENCY)
    )
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    synced_count: int = 0

    def progress(self) -> str:
        return f"{len(self.agents)} agents registered, {self.synced_count} synced"

    async def register(self, index: int, name: str) -> tuple[Agent, RegisterResponse]:
        """Join as a new agent, as `shoal up` does; returns it and the server's reply."""
        key = PrivateKey.generate()
        request = RegisterRequest(
            token=self.server.token,
            name=name,
            public_key=key.public_key(),
            endpoints=(Endpoint(host=UNDERLAY_BASE + index, port=51820),),
        )
        for attempt in range(1, REGISTER_ATTEMPTS + 1):
            joiner = agent_client(self.server, key, index)
            try:
                async with joiner:
                    response = await joiner.register(request)
                break
            except ControlUnreachable as exc:
                # The same key again is a re-join: the server answers as for the first.
                self.errors[f"register: {type(exc).__name__}"] += 1
                if attempt == REGISTER_ATTEMPTS:
                    raise BenchError(f"register {name}: {exc}") from exc
            except ControlError as exc:
                raise BenchError(f"register {name}: {exc}") from exc
        netmap = self.interner.netmap(response.netmap)
        # The daemon then follows the netmap on a client of its own.
        client = await opened(agent_client(self.server, key, index))
        agent = Agent(index, name, key, client, netmap)
        return agent, response

    async def poll_loop(self, agent: Agent) -> None:
        """The agent's netmap loop: a catch-up poll, then the netmap stream from its revision
        (or long-polls, `netmap` "poll"), each update kept for `drain`. A failure is counted
        and retried, as the daemon does."""
        while True:
            try:
                if not agent.synced:
                    # Catch-up deltas carry up to N peers: a few at a time, as a fleet
                    # restarting with jitter would, not 5,000 at once.
                    async with self.catchup:
                        update = await agent.client.poll(since=agent.since, wait=0.0)
                    await self._synced(agent)
                    self._received(agent, update)
                elif self.netmap == "stream":
                    async for update in agent.client.watch(since=agent.since, wait=POLL_WAIT):
                        self._received(agent, update)
                else:
                    self._received(
                        agent, await agent.client.poll(since=agent.since, wait=POLL_WAIT)
                    )
            except ControlError as exc:
                self.errors[f"{self.netmap}: {type(exc).__name__}"] += 1
                await asyncio.sleep(RETRY_SECONDS)

    async def _synced(self, agent: Agent) -> None:
        agent.synced = True
        await agent.client.aclose()
        agent.client = await opened(agent_client(self.server, agent.key, agent.index))
        self.synced_count += 1
        if self.synced_count >= len(self.agents):
            self.synced.set()

    def _received(self, agent: Agent, update: MapUpdate) -> None:
        received_at = time.perf_counter()
        if update.kind == "none":
            return
        agent.pending.append(Received(self.interner.update(update), received_at, self.counting))
        watch = self.watch
        if watch is not None and agent.index not in watch.arrived and watch.matches(update):
            watch.arrived[agent.index] = received_at
            if len(watch.arrived) >= watch.expected:
                watch.done.set()

    async def drain(self) -> None:
        """Apply every received update with `NetworkMap.apply` (each agent's apply time is
        recorded for the watch) and count the bytes of the replies received while counting.

        Yields to the event loop between agents: applying 5,000 maps in one go blocked it for
        seconds, and the long-polls it held timed out on the client side."""
        watch = self.watch
        for n, agent in enumerate(self.agents):
            if n % DRAIN_BATCH == 0:
                await asyncio.sleep(0)
            cost = 0.0
            arrived = watch.arrived.get(agent.index) if watch is not None else None
            for got in agent.pending:
                started = time.perf_counter()
                agent.netmap = agent.netmap.apply(got.update)
                cost += time.perf_counter() - started
                if watch is not None and got.at == arrived:
                    if watch.kind == "policy" and agent.netmap.policy is not None:
                        # The agent's own step before `nft -f`: the policy compiled for its
                        # host (the table load is measured in the policy section).
                        started = time.perf_counter()
                        compile_for(agent.netmap.policy, agent.netmap)
                        cost += time.perf_counter() - started
                    # What this agent spent before its map held the change.
                    watch.own_cost[agent.index] = cost
                if got.counted:
                    # The server splices pydantic's own encoding of each record: the same
                    # length as this (only the order of keys may differ).
                    encoded = got.update.model_dump_json().encode()
                    self.bytes_in += len(encoded)
                    if self.sample_delta is None and got.update.kind == "delta":
                        self.sample_delta = encoded
            agent.pending.clear()

    def holding(self, watch: Watch) -> int:
        """How many agents' maps hold the watched peer or container."""
        count = 0
        for agent in self.agents:
            netmap = agent.netmap
            if watch.kind == "policy":
                found = netmap.policy is not None and str(netmap.policy.revision) == watch.key
            elif watch.kind == "node":
                found = any(p.name == watch.key for p in netmap.peers)
            else:
                # Containers are sorted by (node id, container id), not by id alone.
                found = any(c.id == watch.key for c in netmap.containers)
            count += found
        return count

    async def report_container(self, agent: Agent, cid: str, c: int) -> str:
        """`agent` reports one container (its whole set) with `report_containers`; "ok", or
        why container fan-out cannot be measured."""
        subnet = agent.netmap.self_node.subnet
        assert subnet is not None, "the fleet's agents join with a container subnet"
        report = ContainersReport(
            containers=(
                ContainerReport(id=cid, name=f"bench-{c}", ip=subnet.network_address + 2 + c % 200),
            )
        )
        try:
            await agent.client.report_containers(report)
        except ControlError as exc:
            return f"report_containers failed: {type(exc).__name__}: {exc}"
        return "ok"

    async def close(self) -> None:
        for agent in self.agents:
            await agent.client.aclose()
