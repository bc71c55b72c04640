"""Request and response bodies of the server's HTTP API (the wire format is their JSON)."""

from __future__ import annotations

from datetime import datetime
from ipaddress import IPv4Address, IPv4Network
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from shoal.model.keys import PublicKey
from shoal.model.netmap import (
    AdvertisedEndpoints,
    Endpoint,
    Frozen,
    Health,
    NetworkMap,
    PortSpec,
)

API_VERSION = 1
NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"  # a DNS label: it becomes <node>.shoal

# Bounds on what one node may report. Every report is diffed and any change goes as a delta
# to every node: a 3 MB report of 200k ports once held the event loop 1-4 s and sent a 7.2 MB
# delta to each node. With these bounds a node's whole container set encodes to at most
# 512 x (~250 B of fixed fields + 3 x 128 B of names + 32 x 28 B of ports) ~ 0.8 MB, the
# worst a report can make every node download; real hosts are far below (a /24 container
# subnet holds 253 containers, images expose a handful of ports).
MAX_CONTAINERS = 512  # per node
MAX_PORTS = 32  # per container, served as SRV records
MAX_LABEL = 128  # characters of a container, compose project or compose service name
MAX_HOST_PREFIXES = 1024  # routes and networks a joining host reports for the overlap check

# What Docker accepts as a container name; compose project and service labels are narrower.
# Anything else in a report is an agent bug, refused rather than served as a DNS name.
DOCKER_NAME = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"
CONTAINER_ID = r"^[0-9a-f]{12,64}$"
DockerName = Annotated[str, StringConstraints(max_length=MAX_LABEL, pattern=DOCKER_NAME)]
ContainerId = Annotated[str, StringConstraints(pattern=CONTAINER_ID)]


# Token lifetimes: a day unless the admin says otherwise (`--expires never` is explicit).
DEFAULT_TOKEN_SECONDS = 24 * 3600
MAX_TOKEN_SECONDS = 3650 * 24 * 3600


class RegisterRequest(Frozen):
    """An agent joining with a join token, or joining again with the same key (no token:
    the request's signature proves the key, and the key is the node's identity)."""

    token: str | None = Field(default=None, max_length=200)
    name: str = Field(pattern=NAME_PATTERN)
    public_key: PublicKey
    endpoints: AdvertisedEndpoints = ()
    # Routes and Docker networks already on the host; the server refuses to join a host whose
    # routes overlap the mesh's pools instead of creating a conflict there.
    host_prefixes: tuple[IPv4Network, ...] = Field(default=(), max_length=MAX_HOST_PREFIXES)


class RelayRequest(Frozen):
    """`POST /v1/relay`: relay this node's WireGuard traffic to `peer` (a node id)."""

    peer: str = Field(min_length=1, max_length=64)


class RelayGrant(Frozen):
    """Send to the server's address at `port` as `peer`'s WireGuard endpoint."""

    peer: str
    port: int = Field(ge=1, le=65535)


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

    id: ContainerId
    name: DockerName
    ip: IPv4Address
    project: DockerName | None = None
    service: DockerName | None = None
    ports: tuple[PortSpec, ...] = Field(default=(), max_length=MAX_PORTS)
    health: Health = "none"


class ContainersReport(Frozen):
    """The complete set of this host's containers on the `shoal` network (not a delta: the
    server diffs it against what it has, so a lost report is healed by the next one)."""

    containers: tuple[ContainerReport, ...] = Field(max_length=MAX_CONTAINERS)


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
