"""What the agent's local API answers: `shoal status` (state, health warnings, peers) and
`shoal down` (what was removed)."""

from __future__ import annotations

import enum
from datetime import datetime
from ipaddress import IPv4Address, IPv4Network
from typing import Literal

from shoal.model.api import PathKind
from shoal.model.keys import PublicKey
from shoal.model.netmap import Frozen, NatKind


class AgentState(enum.StrEnum):
    NEEDS_JOIN = "NEEDS_JOIN"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    DEGRADED = "DEGRADED"  # the mesh forwards on the last netmap, but something needs attention
    STOPPED = "STOPPED"


class HealthWarning(Frozen):
    """One named problem the agent is living with, shown by `shoal status`.

    `code` is stable (scripts and tests match on it), `message` is for people and says what to
    do; `since` is when the problem started (UTC), kept while it persists.
    """

    code: str  # e.g. "control-unreachable", "firewall-failed", "needs-join"
    message: str
    since: datetime


class KeyRotation(Frozen):
    """A key rotation in progress: this host switches to `next_key` at `switch_at` (UTC), its
    peers shortly after; the answer of `shoal node rotate-key`."""

    next_key: PublicKey
    switch_at: datetime


class RelayUse(Frozen):
    """The relay a peer's WireGuard packets go through (still encrypted: it cannot read them)."""

    # "udp": a port of the control server's UDP relay (`shoal.control.relay`); "tcp": a relay
    # over TCP/TLS (`shoal.control.tcprelay`), the server's own or a standalone `shoal relay`.
    transport: Literal["udp", "tcp"]
    address: str  # the relay's "ip:port"
    on_server: bool  # served by the control server (False: a standalone `shoal relay`)
    # tcp: the agent's loopback socket that WireGuard sends this peer's packets to; the agent
    # carries them to the relay. Not the peer's address: nothing to open a firewall for.
    local: str | None = None


class PeerStatus(Frozen):
    name: str
    public_key: PublicKey
    mesh_ip: IPv4Address
    subnet: IPv4Network | None  # None: a host without Docker
    # Where this host's packets to the peer go: the peer's address ("ip:port"), or the relay's
    # when relayed (never the agent's loopback socket of a TCP relay: see `relay.local`).
    endpoint: str | None = None
    # How this peer is reached and why: "direct", "lan", "public" (see shoal.agent.paths),
    # "relayed via udp|tcp <relay> (<why>)", or "no path: <reason>". None: no path selection
    # (an agent before NAT traversal).
    path: str | None = None
    # The path in one word (what the server's dashboard counts); None: an older agent.
    via: PathKind | None = None
    relay: RelayUse | None = None  # None: not relayed
    # Why the peer is relayed (or has no path): "symmetric NAT on both sides", "UDP blocked at
    # h7", "no direct handshake"; None when direct.
    why: str | None = None
    nat: NatKind | None = None  # the peer's NAT as it reports it (`nat_kind`); None: unknown
    last_handshake: datetime | None = None
    rx_bytes: int = 0
    tx_bytes: int = 0
    rotation: KeyRotation | None = None  # the peer's key rotation in progress


class AgentStatus(Frozen):
    state: AgentState
    health: tuple[HealthWarning, ...] = ()  # sorted by code
    name: str | None = None
    node_id: str | None = None
    server: str | None = None
    public_key: PublicKey | None = None
    mesh_ip: IPv4Address | None = None
    subnet: IPv4Network | None = None
    interface: str | None = None
    dataplane: str | None = None  # "wireguard-go" or "kernel"
    listen_port: int | None = None
    nat: NatKind | None = None  # this host's NAT, as its last endpoint discovery judged it
    netmap_revision: int | None = None
    netmap_received_at: datetime | None = None
    policy_revision: int | None = None  # the policy this host's firewall enforces; None: none
    peers: tuple[PeerStatus, ...] = ()
    rotation: KeyRotation | None = None  # this host's key rotation in progress


class SubsystemDown(Frozen):
    """What `shoal down` did to one subsystem of the host."""

    subsystem: str  # "tunnel", "routing", "docker-network", "dns", "firewall"
    removed: bool  # False: there was nothing to remove, or it was kept (see `kept_for`)
    kept_for: tuple[str, ...] = ()  # what kept it in place: containers still attached
    error: str | None = None  # removing it failed; the rest was still removed


class DownReport(Frozen):
    """The answer of `shoal down`: every subsystem, in teardown order, and the leave."""

    subsystems: tuple[SubsystemDown, ...]
    left: bool | None = None  # None: not asked to leave; False: the server was not told

    def get(self, subsystem: str) -> SubsystemDown | None:
        return next((s for s in self.subsystems if s.subsystem == subsystem), None)
