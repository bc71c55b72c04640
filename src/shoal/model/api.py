"""Request and response bodies of the server's HTTP API (the wire format is their JSON)."""

from __future__ import annotations

from datetime import datetime
from ipaddress import IPv4Address, IPv4Network
from typing import Literal

from pydantic import Field

from shoal.model.keys import PublicKey
from shoal.model.netmap import Endpoint, Frozen, Health, NetworkMap, PortSpec

API_VERSION = 1
NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"  # a DNS label: it becomes <node>.shoal


# Token lifetimes: a day unless the admin says otherwise (`--expires never` is explicit).
DEFAULT_TOKEN_SECONDS = 24 * 3600
MAX_TOKEN_SECONDS = 3650 * 24 * 3600


class RegisterRequest(Frozen):
    """An agent joining with a join token, or joining again with the same key (no token:
    the request's signature proves the key, and the key is the node's identity)."""

    token: str | None = Field(default=None, max_length=200)
    name: str = Field(pattern=NAME_PATTERN)
    public_key: PublicKey
    endpoints: tuple[Endpoint, ...] = ()
    # Routes and Docker networks already on the host; the server refuses to join a host whose
    # routes overlap the mesh's pools instead of creating a conflict there.
    host_prefixes: tuple[IPv4Network, ...] = ()


class RegisterResponse(Frozen):
    node_id: str
    netmap: NetworkMap


class ServerKey(Frozen):
    """`GET /v1/key`: the server's X25519 key that node signatures are keyed with."""

    public_key: PublicKey


class TokenCreateRequest(Frozen):
    reusable: bool = False
    uses: int | None = Field(default=None, ge=1, le=1_000_000)  # None: 1, or unlimited if reusable
    # None (JSON null) means never; the default is a day.
    expires_in_seconds: int | None = Field(
        default=DEFAULT_TOKEN_SECONDS, gt=0, le=MAX_TOKEN_SECONDS
    )
    ephemeral: bool = False
    tags: tuple[str, ...] = ()


class TokenInfo(Frozen):
    id: str
    reusable: bool
    tags: tuple[str, ...] = ()
    created_at: datetime
    expires_at: datetime | None = None
    used_at: datetime | None = None
    revoked: bool = False
    uses: int = 0
    max_uses: int | None = 1  # None: unlimited
    ephemeral: bool = False


class TokenCreated(Frozen):
    info: TokenInfo
    token: str  # SHOAL-1-<ca fingerprint>-<secret>; shown once, never stored in clear


AdminScope = Literal["read", "admin"]  # read: list nodes, tokens, services; admin: all of it
DEFAULT_ADMIN_TOKEN_SECONDS = 30 * 24 * 3600


class AdminTokenCreateRequest(Frozen):
    scope: AdminScope
    # None (JSON null) means never; the default is 30 days.
    expires_in_seconds: int | None = Field(
        default=DEFAULT_ADMIN_TOKEN_SECONDS, gt=0, le=MAX_TOKEN_SECONDS
    )


class AdminTokenInfo(Frozen):
    id: str
    scope: AdminScope
    created_at: datetime
    expires_at: datetime | None = None
    revoked: bool = False


class AdminTokenCreated(Frozen):
    info: AdminTokenInfo
    token: str  # SHOAL-ADMIN-1-<ca fingerprint>-<secret>; shown once, stored hashed


CertKind = Literal["ca", "ca-next", "ca-previous", "server"]


class CertStatus(Frozen):
    """A certificate the server holds (`GET /v1/admin/certs`), for expiry warnings."""

    kind: CertKind
    fingerprint: str
    not_after: datetime


class NodeInfo(Frozen):
    """A node as the admin sees it (`shoal nodes`)."""

    id: str
    name: str
    public_key: PublicKey
    mesh_ip: IPv4Address
    subnet: IPv4Network
    endpoints: tuple[Endpoint, ...] = ()
    created_at: datetime
    last_seen: datetime | None = None
    online: bool = False
    ephemeral: bool = False


class ErrorBody(Frozen):
    """Every 4xx/5xx body: a stable machine code and one line for a human."""

    code: str
    message: str


class ContainerReport(Frozen):
    """One container as the agent reports it; the server adds the node id."""

    id: str
    name: str
    ip: IPv4Address
    project: str | None = None
    service: str | None = None
    ports: tuple[PortSpec, ...] = ()
    health: Health = "none"


class ContainersReport(Frozen):
    """The complete set of this host's containers on the `shoal` network (not a delta: the
    server diffs it against what it has, so a lost report is healed by the next one)."""

    containers: tuple[ContainerReport, ...]


class ServiceInstance(Frozen):
    container: str
    node: str
    ip: IPv4Address
    health: Health
    online: bool  # the host is within its heartbeat timeout


class ServiceInfo(Frozen):
    """One entry of the catalog (`shoal services`): a compose service, or a lone container."""

    name: str  # "<service>.<project>" for compose services, else the container name
    project: str | None = None
    service: str | None = None
    instances: tuple[ServiceInstance, ...] = ()
