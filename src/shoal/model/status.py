"""What `shoal status` shows: the agent's state, its health warnings and its peers."""

from __future__ import annotations

import enum
from datetime import datetime
from ipaddress import IPv4Address, IPv4Network

from shoal.model.keys import PublicKey
from shoal.model.netmap import Frozen


class AgentState(enum.StrEnum):
    NEEDS_JOIN = "NEEDS_JOIN"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    DEGRADED = "DEGRADED"  # the mesh forwards on the last netmap, but something needs attention
    STOPPED = "STOPPED"


class PeerStatus(Frozen):
    name: str
    public_key: PublicKey
    mesh_ip: IPv4Address
    subnet: IPv4Network
    endpoint: str | None = None
    last_handshake: datetime | None = None
    rx_bytes: int = 0
    tx_bytes: int = 0


class AgentStatus(Frozen):
    state: AgentState
    health: tuple[str, ...] = ()  # one line each: "control unreachable: ..." etc.
    name: str | None = None
    node_id: str | None = None
    server: str | None = None
    public_key: PublicKey | None = None
    mesh_ip: IPv4Address | None = None
    subnet: IPv4Network | None = None
    interface: str | None = None
    dataplane: str | None = None  # "wireguard-go" or "kernel"
    listen_port: int | None = None
    netmap_revision: int | None = None
    netmap_received_at: datetime | None = None
    peers: tuple[PeerStatus, ...] = ()
