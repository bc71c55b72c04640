"""Request and response bodies of the server's HTTP API (the wire format is their JSON)."""

from __future__ import annotations

from datetime import datetime
from ipaddress import IPv4Address, IPv4Network
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_validator

from shoal.model.keys import PublicKey
from shoal.model.netmap import (
    AdvertisedEndpoints,
    Endpoint,
    Frozen,
    Health,
    NetworkMap,
    PortSpec,
)
from shoal.model.policy import MAX_POLICY_BYTES, Proto
from shoal.model.routes import AdvertisedRoutes

API_VERSION = 1
LABEL_PREFIX = "shoal."  # the container labels an agent reports
MAX_LABELS = 16
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
    # Subnet routes this host offers (`--advertise-routes`): the complete set, each pending
    # until the admin approves it, a route left out withdrawn; None: unchanged (an agent
    # registering again to report new endpoints keeps its routes).
    advertise_routes: AdvertisedRoutes | None = None
    # False: a host without Docker (`--no-docker`) that needs no container subnet. Decided at
    # the first join: a node keeps the allocation it has.
    container_subnet: bool = True


class RelayRequest(Frozen):
    """`POST /v1/relay`: relay this node's WireGuard traffic to `peer` (a node id)."""

    peer: str = Field(min_length=1, max_length=64)


class RelayServer(Frozen):
    """A relay over TCP/TLS (`shoal.control.tcprelay`) that nodes without UDP go through.

    `host` None: the control server's own address, as each node reaches it. `public_key` is
    what node signatures to this relay are keyed with (the server's node-auth key for the
    server's own relay, a standalone relay's key otherwise); None: the server's."""

    host: IPv4Address | None = None
    port: int = Field(ge=1, le=65535)
    public_key: PublicKey | None = None
    # sha256 (hex) of a standalone relay's self-signed certificate, which agents pin; None:
    # the server's own relay, whose certificate the mesh's CA signed.
    cert_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class RelayList(Frozen):
    """`GET /v1/relays`: the mesh's TCP relays, in order of preference. Asked for apart from
    the netmap: a server restarted with other relays changes no node, so no map update would
    carry them."""

    relays: tuple[RelayServer, ...] = ()


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


class RotateKeyRequest(Frozen):
    """Announce this node's next WireGuard key (`POST /v1/rotate`, signed with the current one).

    `proof` is a node signature header (see `shoal.model.nodeauth`) made with the NEW key over
    method "POST", target ROTATE_PROOF_TARGET and body current key raw || new key raw: together
    with the request's own signature it shows the caller holds both private keys, and it binds
    the new key to this node's current one (it cannot be replayed for another node).
    """

    new_public_key: PublicKey
    proof: str = Field(max_length=200)


ROTATE_PROOF_TARGET = "/v1/rotate#proof"


def rotate_proof_body(current: PublicKey, new: PublicKey) -> bytes:
    """What the proof of a key rotation signs."""
    return current.raw + new.raw


class RotateKeyReply(Frozen):
    """The announced rotation: the node and every peer switch to `new_public_key` at
    `switch_at` (UTC; peers PEER_SWITCH_LAG later)."""

    new_public_key: PublicKey
    switch_at: datetime


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
    subnet: IPv4Network | None  # None: a host without Docker
    endpoints: tuple[Endpoint, ...] = ()
    created_at: datetime
    last_seen: datetime | None = None
    online: bool = False
    ephemeral: bool = False
    next_key: PublicKey | None = None  # a key rotation in progress: the key it switches to
    switch_at: datetime | None = None  # ... at this time (UTC)


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
    # Its `shoal.*` labels (policies select containers by them), sorted; bounded like the rest.
    labels: tuple[tuple[str, str], ...] = Field(default=(), max_length=MAX_LABELS)

    @field_validator("labels")
    @classmethod
    def _shoal_labels(cls, labels: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
        for key, value in labels:
            if not key.startswith(LABEL_PREFIX) or len(key) > 64 or len(value) > 256:
                raise ValueError(
                    f"label {key[:64]!r}: only {LABEL_PREFIX}* labels, keys up to 64 and "
                    "values up to 256 characters"
                )
        return tuple(sorted(labels))


class ContainersReport(Frozen):
    """The complete set of this host's containers on the `shoal` network (not a delta: the
    server diffs it against what it has, so a lost report is healed by the next one)."""

    containers: tuple[ContainerReport, ...] = Field(max_length=MAX_CONTAINERS)


POLICY_FILE_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"  # named in nft comments and error lines


class PolicySetRequest(Frozen):
    """`shoal policy set FILE`: the policy's text as written and the file's name."""

    file: str = Field(pattern=POLICY_FILE_PATTERN)
    source: str = Field(max_length=MAX_POLICY_BYTES)


class PolicyInfo(Frozen):
    """The policy in force (`shoal policy get`)."""

    revision: int
    file: str
    source: str
    set_at: datetime
    rules: int


class PolicyCleared(Frozen):
    """`shoal policy clear`: the policy's removal, after which shoal's defaults apply."""

    revision: int | None  # the removal's policy number; None: no policy was set, nothing changed


class PolicyVerdict(Frozen):
    """`shoal policy test`: what the destination host's firewall does with a new flow."""

    src: str  # "web (10.42.1.3 on h1)"
    dst: str
    proto: Proto
    port: int | None = None
    allow: bool
    reason: str  # the rule (file:line) or default that decided
    policy_revision: int | None = None  # None: no policy


class ServiceInstance(Frozen):
    """One container of a catalog entry: where it runs and how to reach it."""

    container: str
    node: str
    ip: IPv4Address  # on the `shoal` network: reachable from every host and container
    health: Health
    online: bool  # the host is within its heartbeat timeout
    node_ip: IPv4Address | None = None  # the host's mesh IP (None: the host is not known)
    dns: str | None = None  # "<container>.<node>.shoal": this instance and only it
    ports: tuple[PortSpec, ...] = ()  # what the image exposes (EXPOSE / --expose)
    labels: tuple[tuple[str, str], ...] = ()  # its `shoal.*` labels (Consul's tags)


class ServiceInfo(Frozen):
    """One entry of the catalog (`shoal services`): a compose service, or a lone container."""

    name: str  # "<service>.<project>" for compose services, else the container name
    project: str | None = None
    service: str | None = None
    instances: tuple[ServiceInstance, ...] = ()
    dns: str | None = None  # "<name>.shoal": the serving instances (the one container)


# -- what an agent tells about its paths (POST /v1/report), for the dashboard ------------------

# Every agent reports every REPORT_SECONDS, so a report's cost is paid N/30 times a second:
# it carries counts for all peers but details for at most MAX_REPORT_PEERS (all of them in a
# mesh of up to that many peers, the dashboard's matrix; else the worst paths first). The
# server keeps only peers that are nodes of the mesh (not the reporter) and caps the counts
# at the mesh's size: a report can never describe more pairs than the mesh has.
REPORT_SECONDS = 30.0
MAX_REPORT_PEERS = 64
MAX_PEER_COUNT = 1_000_000
MAX_HANDSHAKE_AGE = 10 * 365 * 24 * 3600.0  # seconds: older than this is "never" anyway
MAX_RTT_MS = 60_000.0
VERSION_PATTERN = r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,39}$"  # a PEP 440 or git-describe version
NODE_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"

# How a peer's traffic goes: straight to one of its endpoints, through the server's relay,
# still trying candidates, or no handshake over any.
PathKind = Literal["direct", "relayed", "trying", "none"]
PATH_KINDS: tuple[PathKind, ...] = ("direct", "relayed", "trying", "none")
_Rtt = Annotated[float, Field(ge=0, le=MAX_RTT_MS, allow_inf_nan=False)]
_Count = Annotated[int, Field(ge=0, le=MAX_PEER_COUNT)]


class PeerReport(Frozen):
    """One peer as this node's WireGuard sees it; ages relative to the report, so the two
    hosts' clocks never meet."""

    peer: str = Field(pattern=NODE_ID_PATTERN)  # its node id
    path: PathKind
    # Seconds since the last WireGuard handshake with the peer; None: none yet.
    handshake_age_seconds: float | None = Field(
        default=None, ge=0, le=MAX_HANDSHAKE_AGE, allow_inf_nan=False
    )
    # Round trip of one ICMP echo to the peer's mesh IP through the tunnel, in milliseconds;
    # None: not measured (no fresh handshake) or no reply within the timeout.
    rtt_ms: _Rtt | None = None


class PathCounts(Frozen):
    """How many of this node's peers go each way, and the RTTs measured to them."""

    direct: _Count = 0
    relayed: _Count = 0
    trying: _Count = 0
    none: _Count = 0
    rtt_median_ms: _Rtt | None = None
    rtt_max_ms: _Rtt | None = None


class NodeReport(Frozen):
    """`POST /v1/report`: this node's version and its paths, every REPORT_SECONDS. Nothing in
    it is routed on: the server only shows it (dashboard)."""

    version: str = Field(pattern=VERSION_PATTERN)
    counts: PathCounts = PathCounts()
    peers: tuple[PeerReport, ...] = Field(default=(), max_length=MAX_REPORT_PEERS)
