"""The agent's service-discovery resolver, and its answers from the cached netmap at start.

Apart from the other adapters (`shoal.agent.adapters`) so that a starting agent can answer
names before it imports them: this module needs only the model, the planner and `shoal.dns`.
"""

from __future__ import annotations

import logging
from ipaddress import IPv4Address

from shoal.agent.statefiles import StateDir
from shoal.dns import DnsError, DnsServer, DnsStats, RecordTable, upstreams_from_resolv_conf
from shoal.dns.hostresolver import HostResolver
from shoal.model.errors import ShoalError
from shoal.plan.hostconfig import INTERFACE, DnsConfig, plan_host

log = logging.getLogger(__name__)

DNS_PORT = 53


class MeshDns:
    """The service-discovery resolver on the mesh IP, answering from the newest netmap, and
    (on a host without Docker) the host's own resolver pointed at it.

    The record table is swapped by reference before anything else, so a new name resolves the
    moment its netmap is applied; the socket is only rebound when the address changes.
    """

    def __init__(self, port: int = DNS_PORT, host: HostResolver | None = None) -> None:
        self.port = port
        self._table: RecordTable | None = None
        self._server: DnsServer | None = None
        self._address: IPv4Address | None = None
        self._host = host or HostResolver(INTERFACE)
        self._pointed = False

    @property
    def stats(self) -> DnsStats | None:
        """The responder's counters since it last (re)bound; None while it does not run."""
        return self._server.stats if self._server is not None else None

    def _resolver(self) -> RecordTable:
        assert self._table is not None, "the server starts after the first table"
        return self._table

    async def apply(self, cfg: DnsConfig) -> bool:
        self._table = RecordTable.from_netmap(cfg.netmap)
        changed = False
        if self._server is None or self._address != cfg.address:
            await self._close()
            # Read before the host resolver points at us: the upstreams are the others.
            upstreams = upstreams_from_resolv_conf(exclude=(str(cfg.address),))
            server = DnsServer(self._resolver, upstreams)
            await server.start([(str(cfg.address), self.port)])
            self._server, self._address = server, cfg.address
            changed = True
        if cfg.host_resolver:
            # Every apply (resyncs too): another tool may have rewritten resolv.conf.
            changed |= await self._host.point_at(cfg.address)
            self._pointed = True
        elif self._pointed:
            changed |= await self._host.release()
            self._pointed = False
        return changed

    async def teardown(self) -> bool:
        # Always: `shoal down` with no agent running knows nothing of what the agent did.
        try:
            released = await self._host.release()
        except DnsError as exc:
            log.warning("host resolver: %s", exc)
            released = False
        self._pointed = False
        return await self._close() or released

    async def _close(self) -> bool:
        if self._server is None:
            return False
        await self._server.close()
        self._server, self._address = None, None
        return True


async def answer_from_cache(state: StateDir, listen_port: int) -> MeshDns | None:
    """The resolver of a resumed agent, answering from the cached netmap at once; None when
    `state` holds no identity and netmap to resume from, or the address cannot be bound yet
    (after a reboot it comes with the interface, in the first apply).

    An agent that was SIGKILLed or crashed left the containers' DNS redirect in place,
    pointing at this resolver: no container on the host resolves anything until it answers.
    The agent's own start-up (its imports, Docker, the other subsystems) comes after."""
    if state.identity() is None:
        return None
    cached = state.cached_netmap()
    if cached is None:
        return None
    next_key = state.next_private_key()
    keys = (state.private_key(),) if next_key is None else (state.private_key(), next_key)
    dns = MeshDns()
    try:
        await dns.apply(plan_host(cached.netmap, keys, listen_port).dns)
    except (ShoalError, OSError) as exc:
        log.info("names from the cached netmap wait for the first apply: %s", exc)
        return None
    return dns
