"""The server's use cases: join, netmap, containers, leave; the admin's tokens,
nodes and service catalog; the liveness sweep.

Transport-free: the HTTP layer authenticates and parses, then calls one method here. Mutations
run under one lock so that check-then-write sequences (name free? token unused? next free
subnet?) see no interleaving within this server; the store's constraints and the single-use
token's conditional UPDATE guard against other writers.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import replace
from datetime import timedelta
from ipaddress import IPv4Address

from shoal.control import ipam
from shoal.control import routes as subnet_routes
from shoal.control.changelog import Push
from shoal.control.errors import (
    AdminUnauthorized,
    BadRequest,
    Conflict,
    CredentialInvalid,
    KeyRevoked,
    NameTaken,
    NotFound,
    PolicyInvalid,
    PoolConflict,
    ScopeTooNarrow,
    SignatureInvalid,
    TokenMalformed,
    TokenRequired,
    TokenUnknown,
    TokenUsed,
    clip,
)
from shoal.control.liveness import Clock, utcnow
from shoal.control.registry import Registry
from shoal.control.tokens import (
    check_usable,
    new_join_token,
    new_scoped_admin_token,
    secret_hash,
    token_id,
)
from shoal.model.api import (
    AdminScope,
    AdminTokenCreated,
    AdminTokenCreateRequest,
    AdminTokenInfo,
    ContainerReport,
    ContainersReport,
    NodeInfo,
    PolicyCleared,
    PolicyInfo,
    PolicySetRequest,
    PolicyVerdict,
    RegisterRequest,
    RegisterResponse,
    RotateKeyReply,
    ServiceInfo,
    TokenCreated,
    TokenCreateRequest,
    TokenInfo,
)
from shoal.model.catalog import build_catalog
from shoal.model.certs import TLS_LABEL, wants_cert
from shoal.model.keys import PublicKey
from shoal.model.netmap import PEER_SWITCH_LAG, Container, MapUpdate
from shoal.model.policy import PolicyError, Proto, parse, run_tests
from shoal.model.routes import RouteInfo, RouteStatus
from shoal.model.tokens import JOIN_PREFIX, MalformedToken, parse_admin_token, parse_join_token
from shoal.plan.policy import Verdict, compile_for, explain, refused_names
from shoal.store.base import NodeRecord, Store, TokenRecord
from shoal.store.errors import StoreConflict, TokenUnavailable

log = logging.getLogger("shoal.control")

MAX_WAIT = 60.0  # seconds a long-poll may be held (and at most a third of the heartbeat timeout)
MIN_STREAM_WAIT = 1.0  # seconds between a netmap stream's heartbeats, at least
# A netmap stream's writer for `watch`: deliver this update on the stream's connection now,
# without waiting, or return False (a backed-up connection, a frame too large to write at
# once), and the update comes from the generator instead. Called from the change log's
# wake-up: it must not block or raise.
Send = Callable[[MapUpdate], bool]
DEFAULT_EPHEMERAL_TIMEOUT = timedelta(minutes=30)  # offline this long: an ephemeral node goes
SAME_HOST = Verdict(
    allow=True, reason="same host: this traffic does not cross the mesh and is not filtered"
)
# A key rotation is announced this long before the switch: the delta must reach every peer's
# long-poll first (it takes tens of ms; a peer that learns late switches late, and the rotating
# host's packets to it wait in WireGuard's staged queue meanwhile).
DEFAULT_ROTATION_LEAD = timedelta(seconds=3)
# The server makes a rotation final (the old key stops working) this long after the peers'
# switch: a peer that gets the final record switches on receipt, and must not do so before
# the rotating host has.
ROTATION_FINAL_AFTER = PEER_SWITCH_LAG + timedelta(seconds=1)


# Registrations that lose an allocation race to another replica are decided again this often
# (a safety net: registrations hold the store's REGISTER_LOCK, so races are not expected).
REGISTER_ATTEMPTS = 5
# The store's lock that registrations on every replica hold while they allocate and save.
REGISTER_LOCK = "register"


class _Stale(Exception):
    """A registration collided with another replica's on a unique field: retry after a
    catch-up (never leaves the service)."""


class ControlService:
    def __init__(
        self,
        store: Store,
        registry: Registry,
        pools: ipam.Pools,
        *,
        fingerprint: str,
        admin_token_hash: str,
        clock: Clock = utcnow,
        ephemeral_timeout: timedelta = DEFAULT_EPHEMERAL_TIMEOUT,
        rotation_lead: timedelta = DEFAULT_ROTATION_LEAD,
    ) -> None:
        self.ephemeral_timeout = ephemeral_timeout
        self.rotation_lead = rotation_lead
        self.store = store
        self.registry = registry
        self.pools = pools
        self.fingerprint = fingerprint
        self._admin_hash = admin_token_hash
        self._clock = clock
        self._lock = asyncio.Lock()

    # Authentication (the HTTP layer verified the signature; these say what the key may do).

    async def authenticate_node(self, key: PublicKey) -> NodeRecord:
        """The node whose key signed a request. A key this replica does not know may be of a
        node another replica just registered: catch up once before refusing it."""
        node = self.registry.by_public_key(key)
        if node is None:
            await self.registry.catch_up()
            node = self.registry.by_public_key(key)
        if node is None:
            raise CredentialInvalid(
                f"no node of this mesh has key {key.short()}… (removed?); join again with a "
                "join token"
            )
        return node

    async def authenticate_admin(self, token: str, need: AdminScope) -> None:
        """Accept the server host's own admin token (every scope) or a scoped admin token
        that is unrevoked, unexpired and wide enough for `need`."""
        try:
            parsed = parse_admin_token(token)
        except MalformedToken as exc:
            raise AdminUnauthorized(str(exc)) from exc
        digest = secret_hash(parsed.secret)
        if hmac.compare_digest(digest, self._admin_hash):
            return
        record = await self.store.get_token(token_id(parsed.secret))
        if (
            record is None
            or record.scope is None
            or not hmac.compare_digest(record.secret_hash, digest)
        ):
            raise AdminUnauthorized("admin token not accepted by this server")
        if record.revoked_at is not None:
            raise AdminUnauthorized(f"admin token {record.id} was revoked")
        if record.expires_at is not None and record.expires_at <= self._clock():
            raise AdminUnauthorized(
                f"admin token {record.id} expired at {record.expires_at:%Y-%m-%d %H:%M:%S} UTC"
            )
        if need == "admin" and record.scope != "admin":
            raise ScopeTooNarrow(
                f"admin token {record.id} is read-only (scope {record.scope}); this needs one "
                "made with --scope admin"
            )

    # Agent use cases.

    async def register(self, req: RegisterRequest, signer: PublicKey) -> RegisterResponse:
        """Join, or join again with the same key. `signer` is the key that signed the
        request: only the holder of a key's private half may register it."""
        if signer != req.public_key:
            raise SignatureInvalid(
                "the request is signed with another key than the one it registers"
            )
        # Every replica allocates the lowest free address: without one lock over all of them,
        # the slower of two replicas registering a fleet in step lost every race to the
        # faster one and gave up (1,000 simulated hosts through 2 replicas failed after ~50).
        async with self._lock, self.store.exclusive(REGISTER_LOCK):
            await self.registry.catch_up()  # what the other replicas registered till now
            for attempt in range(REGISTER_ATTEMPTS):
                try:
                    node = await self._register(req, last_try=attempt == REGISTER_ATTEMPTS - 1)
                    break
                except _Stale:
                    # Another replica took this address or name meanwhile: learn its
                    # registrations and decide again (another address, or NameTaken).
                    await self.registry.catch_up()
        await self.registry.seen(node.id)  # a node joining again after an outage is back
        return RegisterResponse(node_id=node.id, netmap=self.registry.full_map(node.id))

    async def _register(self, req: RegisterRequest, *, last_try: bool = True) -> NodeRecord:
        now = self._clock()
        # Caught up under the store's lock: a key registered on another replica a moment ago
        # is known here, and joins again without a token.
        existing = self.registry.by_public_key(req.public_key)
        consume: str | None = None
        record: TokenRecord | None = None
        if existing is None:
            # A new node: the token authorises it. A node joining again needs none: its key
            # is its identity, and it proved it holds it.
            if self.registry.is_revoked(req.public_key):
                raise KeyRevoked(
                    f"key {req.public_key.short()}… belonged to a node the operator removed; it "
                    "cannot join again (on that host: shoal down --leave, then shoal up with a "
                    "new token joins with a new key)"
                )
            if req.token is None:
                raise TokenRequired("this key is not a node of this mesh: join with a token")
            record = await self._join_token(req.token.strip())
            check_usable(record, now)
            consume = record.id
        holder = self.registry.by_name(req.name)
        if holder is not None and holder.public_key != req.public_key:
            raise NameTaken(
                f"the name {req.name!r} belongs to another node (key {holder.public_key.short()}"
                f"…); pick another --name or remove that node (shoal node remove {req.name})"
            )
        clash = self.pools.conflict(req.host_prefixes)
        if clash is not None:
            route, pool = clash
            kind = "mesh" if pool == self.pools.mesh_pool else "container"
            raise PoolConflict(
                f"this host has a route or network {route} overlapping the mesh's {kind} pool "
                f"{pool}; remove it, or run the server with another --{kind}-pool"
            )
        node_id = existing.id if existing else "n" + secrets.token_hex(6)
        if req.advertise_routes is not None:
            subnet_routes.check_advertised(
                self.pools, self.registry.nodes(), node_id, req.advertise_routes
            )
        alloc = self.registry.allocate(self.pools, node_id, subnet=req.container_subnet)
        node = NodeRecord(
            id=node_id,
            name=req.name,
            public_key=req.public_key,
            mesh_ip=alloc.mesh_ip,
            subnet=alloc.subnet,
            endpoints=tuple(sorted(set(req.endpoints), key=str)),
            created_at=existing.created_at if existing else now,
            tags=existing.tags if existing else (record.tags if record else ()),
            ephemeral=existing.ephemeral if existing else bool(record and record.ephemeral),
            last_seen=now,
            routes=subnet_routes.merge_advertised(existing, req.advertise_routes, now),
        )
        if existing is not None and existing.public_key == req.public_key:
            # Joining again mid-rotation keeps the rotation (the host holds the next key).
            node = replace(node, next_key=existing.next_key, switch_at=existing.switch_at)
        try:
            saved = await self.registry.save(node, consume_token=consume)
        except TokenUnavailable as exc:
            # Another server or request took its last use: say precisely why it is unusable.
            fresh = await self.store.get_token(exc.token_id)
            if fresh is not None:
                check_usable(fresh, self._clock())
            raise TokenUsed(f"join token {exc.token_id} was used up meanwhile") from exc
        except StoreConflict as exc:
            if not last_try:
                raise _Stale from exc
            if exc.field == "name":
                raise NameTaken(f"the name {req.name!r} was taken meanwhile") from exc
            raise Conflict(f"registration conflicted with another node ({exc.field})") from exc
        log.info(
            "%s node %s (%s) key %s mesh IP %s subnet %s%s",
            "re-registered" if existing else "registered",
            saved.name,
            saved.id,
            saved.public_key.short(),
            saved.mesh_ip,
            saved.subnet,
            f" via token {record.id}" if record else "",
        )
        return saved

    async def _join_token(self, text: str) -> TokenRecord:
        try:
            token = parse_join_token(text)
        except MalformedToken as exc:
            raise TokenMalformed(str(exc)) from exc
        if not hmac.compare_digest(token.fingerprint, self.fingerprint):
            raise TokenMalformed(
                "this join token was issued by another server (its CA fingerprint differs)"
            )
        record = await self.store.get_token(token_id(token.secret))
        if (
            record is None
            or record.scope is not None  # an admin token's secret is no join token
            or not hmac.compare_digest(record.secret_hash, secret_hash(token.secret))
        ):
            raise TokenUnknown(f"unknown join token {JOIN_PREFIX}…; create one: shoal token create")
        return record

    @property
    def max_wait(self) -> float:
        """The longest a long-poll is held: a healthy agent polls again well within the
        heartbeat timeout, however long a wait it asked for."""
        return min(MAX_WAIT, self.registry.heartbeat_timeout.total_seconds() / 3)

    async def netmap(self, node_id: str, since: int, wait: float) -> MapUpdate:
        await self.registry.seen(node_id)
        return await self.registry.map_update(node_id, since, min(max(wait, 0.0), self.max_wait))

    def stream_wait(self, wait: float) -> float:
        """The heartbeat interval of a netmap stream that asked for `wait` seconds: at most
        `max_wait`, so the stream counts as the node's heartbeat, and at least
        MIN_STREAM_WAIT."""
        return min(max(wait, MIN_STREAM_WAIT), self.max_wait)

    async def watch(
        self, node_id: str, since: int, wait: float, send: Send | None = None
    ) -> AsyncGenerator[MapUpdate, None]:
        """The node's netmap stream: first what a poll from `since` would get at once (a full
        map, a delta or "none"), then each change as it comes (coalesced as for long-polls),
        and a "none" after every `stream_wait(wait)` seconds without one: the heartbeat.
        Each update the caller takes the next one after counts as hearing from the node: the
        caller delivers them on the node's connection, and a dead one ends the stream (see
        api.netmap_stream).

        `send`, when given, may deliver a change itself, at once and without waiting: the
        delta every node not changed itself gets (see Send). What it declines (and every
        heartbeat) comes from this generator as before.

        Ends when a newer poll or stream of the same node takes over or the server shuts
        down; raises CredentialInvalid once the node is removed."""
        wait = self.stream_wait(wait)
        registry = self.registry
        claim = registry.log.claim(node_id)
        await registry.seen(node_id)  # its signed request
        push = None if send is None else self._push(node_id, send)
        while True:
            update = await registry.map_update(node_id, since, 0.0)
            yield update
            # Delivered (a write to a connection the client closed raises instead).
            await registry.seen(node_id)
            since = update.revision
            if push is None:
                if not await registry.log.wait(node_id, since, wait, claim):
                    return
                continue
            held = await registry.log.follow(node_id, since, wait, claim, push)
            if held is None:
                return
            since = held

    def _push(self, node_id: str, send: Send) -> Push:
        """The change log's push for `node_id`'s stream (see changelog.Push): the shared
        update, if the node gets it and `send` takes it. A pushed heartbeat counts as hearing
        from the node, as one the stream's task writes does (it is online: an offline one gets
        no shared update), even when what it carries is a change whose wake-up is pending. A
        change pushed by its wake-up need not: the stream's heartbeats come every
        `stream_wait` seconds whatever it carries between them, a third of the heartbeat
        timeout at most, and 10,000 nodes marked heard made 7 % of a change's CPU."""
        registry = self.registry

        def push(since: int, heartbeat: bool) -> int | None:
            update = registry.shared_update(node_id, since)
            if update is None or not send(update):
                return None
            if heartbeat:
                registry.liveness.heard(node_id)
            return update.revision

        return push

    async def report_containers(self, node_id: str, report: ContainersReport) -> None:
        """Replace what the server knows of this node's containers with `report`; every
        container added, changed or gone reaches every node's next poll as a delta."""
        await self.registry.seen(node_id)
        async with self._lock:
            node = self.registry.require(node_id)
            wanted = {c.id: c for c in self._validate(node, report.containers)}
            have = self.registry.containers_of(node_id)
            changed = [c for cid, c in sorted(wanted.items()) if have.get(cid) != c]
            removed = sorted(cid for cid in have if cid not in wanted)
            if not changed and not removed:
                return
            diff = [_describe(have.get(c.id), c) for c in changed]
            diff += [f"-{have[cid].name}" for cid in removed]
            rev = await self.registry.save_containers(node_id, changed, removed)
        log.info("node %s containers r%d: %s", node.name, rev, _summary(diff))
        self._warn_unpublishable(changed)

    def _warn_unpublishable(self, containers: Iterable[Container]) -> None:
        """Log each container whose host may not publish its names: the agents leave it out
        of DNS (see shoal.plan.policy.publishable); its host's `shoal status` warns too."""
        policy = self.registry.policy
        if policy is None or not policy.publish:
            return
        for c in containers:
            node = self.registry.get(c.node_id)
            refused = refused_names(policy, node.tags if node else (), c)
            if refused:
                log.warning(
                    "node %s may not publish %s (policy %s r%d publish claims): container "
                    "%s is reported but not in DNS",
                    node.name if node else c.node_id,
                    ", ".join(refused),
                    policy.file,
                    policy.revision,
                    c.name,
                )

    def _validate(self, node: NodeRecord, reports: Iterable[ContainerReport]) -> list[Container]:
        containers: list[Container] = []
        ids: set[str] = set()
        ips: dict[object, str] = {}
        for c in reports:
            # Ids, names and counts are bounded by the model (parsed at the edge).
            where = f"container {c.name!r}"
            if node.subnet is None:
                raise BadRequest(
                    f"{where}: node {node.name} joined without Docker (no container subnet); "
                    "it has no containers to report"
                )
            if c.ip not in node.subnet or c.ip in (
                node.subnet.network_address,
                node.subnet.broadcast_address,
            ):
                raise BadRequest(
                    f"{where}: IP {c.ip} is not a host address of node {node.name}'s subnet "
                    f"{node.subnet}; only containers on its `shoal` network can be reported"
                )
            if c.id in ids:
                raise BadRequest(f"{where}: id {c.id[:12]} reported twice")
            if c.ip in ips:
                raise BadRequest(f"{where}: IP {c.ip} also reported for {ips[c.ip]!r}")
            ids.add(c.id)
            ips[c.ip] = c.name
            containers.append(Container(node_id=node.id, **c.model_dump()))
        return containers

    async def rotate_key(
        self, signer: PublicKey, new_key: PublicKey, proved_by: PublicKey
    ) -> RotateKeyReply:
        """Announce the signer's node's next key: it and its peers switch at `switch_at`.

        `signer` signed the request and must be the node's current key; `proved_by` signed the
        request's proof (over both keys) and must be `new_key`. Announcing the pending key
        again returns the same switch time (a retry after a lost reply is safe)."""
        if proved_by != new_key:
            raise SignatureInvalid(
                f"the rotation proof is signed with key {proved_by.short()}…, not with the new "
                f"key {new_key.short()}…"
            )
        node = await self.authenticate_node(signer)
        async with self._lock:
            node = self.registry.require(node.id)
            if signer != node.public_key:
                # Signed with the pending next key: the host already switched to it.
                raise Conflict(
                    f"node {node.name}'s previous key rotation is not final yet (about "
                    f"{ROTATION_FINAL_AFTER.total_seconds():.0f}s after its switch); try again"
                )
            if node.next_key is not None and node.switch_at is not None:
                if node.next_key == new_key:
                    return RotateKeyReply(new_public_key=new_key, switch_at=node.switch_at)
                raise Conflict(
                    f"node {node.name} is already switching to key {node.next_key.short()}… at "
                    f"{node.switch_at:%H:%M:%S} UTC; rotate again after that"
                )
            if new_key == node.public_key:
                raise BadRequest("the new key is the node's current key")
            if self.registry.is_revoked(new_key):
                raise KeyRevoked(f"key {new_key.short()}… was revoked; generate another")
            if self.registry.by_public_key(new_key) is not None:
                raise Conflict(f"key {new_key.short()}… belongs to another node")
            switch_at = self._clock() + self.rotation_lead
            await self.registry.save(
                replace(
                    node,
                    next_key=new_key,
                    switch_at=switch_at,
                    last_seen=self.registry.last_seen(node.id) or node.last_seen,
                )
            )
        log.info(
            "node %s (%s) rotates key %s => %s at %s",
            node.name,
            node.id,
            node.public_key.short(),
            new_key.short(),
            f"{switch_at:%H:%M:%S.%f}"[:-3],
        )
        return RotateKeyReply(new_public_key=new_key, switch_at=switch_at)

    async def finish_rotations(self) -> None:
        """Make due key rotations final: the next key becomes the key, the old one is refused
        from then on."""
        now = self._clock()
        for node in self.registry.rotating_nodes():
            if node.next_key is None or node.switch_at is None:
                continue
            if now < node.switch_at + ROTATION_FINAL_AFTER:
                continue
            async with self._lock:
                current = self.registry.get(node.id)
                if current is None or current.next_key != node.next_key:
                    continue
                await self.registry.save(
                    replace(
                        current,
                        public_key=node.next_key,
                        next_key=None,
                        switch_at=None,
                        last_seen=self.registry.last_seen(node.id) or current.last_seen,
                    )
                )
            log.info(
                "node %s (%s) key rotation done: %s => %s",
                node.name,
                node.id,
                node.public_key.short(),
                node.next_key.short(),
            )

    async def sweep(self) -> None:
        """Withdraw the containers of nodes silent past the heartbeat timeout; remove
        ephemeral nodes silent past the ephemeral timeout; finish due key rotations."""
        await self.finish_rotations()
        now = self._clock()
        for gone in self.registry.ephemeral_nodes():
            silent = self.registry.silent_for(gone.id, now)
            if silent > self.ephemeral_timeout:
                async with self._lock:
                    await self.registry.remove(gone.id)
                log.info(
                    "removed ephemeral node %s (%s): silent for %ds",
                    gone.name,
                    gone.id,
                    silent.total_seconds(),
                )
        for node_id in await self.registry.sweep():
            node = self.registry.get(node_id)
            log.warning(
                "node %s (%s) silent for over %gs: offline, %d containers withdrawn",
                node.name if node else node_id,
                node_id,
                self.registry.heartbeat_timeout.total_seconds(),
                len(self.registry.containers_of(node_id)),
            )

    async def leave(self, node_id: str) -> None:
        async with self._lock:
            node = self.registry.require(node_id)
            await self.registry.remove(node_id)
        log.info("node %s (%s) left the mesh", node.name, node.id)

    # Admin use cases.

    async def create_token(self, req: TokenCreateRequest) -> TokenCreated:
        expires = (
            None if req.expires_in_seconds is None else timedelta(seconds=req.expires_in_seconds)
        )
        token, record = new_join_token(
            self.fingerprint,
            max_uses=req.uses if req.uses is not None else (None if req.reusable else 1),
            ephemeral=req.ephemeral,
            tags=req.tags,
            expires_in=expires,
            now=self._clock(),
        )
        await self.store.add_token(record)
        log.info("created join token %s", record.id)
        return TokenCreated(info=token_info(record), token=str(token))

    async def list_tokens(self) -> list[TokenInfo]:
        return [token_info(t) for t in await self.store.list_tokens() if t.scope is None]

    async def revoke_token(self, tid: str) -> None:
        record = await self.store.get_token(tid)
        if record is None or record.scope is not None:
            raise NotFound(f"no join token with id {tid!r} (see shoal token list)")
        await self.store.revoke_token(tid, self._clock())
        log.info("revoked join token %s", tid)

    async def create_admin_token(self, req: AdminTokenCreateRequest) -> AdminTokenCreated:
        expires = (
            None if req.expires_in_seconds is None else timedelta(seconds=req.expires_in_seconds)
        )
        token, record = new_scoped_admin_token(self.fingerprint, req.scope, expires, self._clock())
        await self.store.add_token(record)
        log.info("created admin token %s (scope %s)", record.id, req.scope)
        return AdminTokenCreated(info=admin_token_info(record), token=str(token))

    async def list_admin_tokens(self) -> list[AdminTokenInfo]:
        return [admin_token_info(t) for t in await self.store.list_tokens() if t.scope]

    async def revoke_admin_token(self, tid: str) -> None:
        record = await self.store.get_token(tid)
        if record is None or record.scope is None:
            raise NotFound(f"no admin token with id {tid!r} (see shoal admin token list)")
        await self.store.revoke_token(tid, self._clock())
        log.info("revoked admin token %s", tid)

    async def set_policy(self, req: PolicySetRequest) -> PolicyInfo:
        """Accept a policy that parses and passes its own inline tests; it reaches every node
        with its next poll. Anything wrong: PolicyInvalid, and the old policy stays."""
        try:
            policy = parse(req.source, req.file)
        except PolicyError as exc:
            raise PolicyInvalid(str(exc)) from exc
        failed = run_tests(policy)
        if failed:
            raise PolicyInvalid(
                f"{len(failed)} inline test(s) fail, policy not set: " + "; ".join(failed)
            )
        async with self._lock:
            record = await self.registry.save_policy(policy, req.source)
        log.info(
            "policy %s r%d set: %d rules, %d publish claims, %d tests pass",
            record.file,
            record.revision,
            len(policy.rules),
            len(policy.publish),
            len(policy.tests),
        )
        self._warn_unpublishable(self.registry.containers())
        return self.get_policy()

    async def clear_policy(self) -> PolicyCleared:
        """Remove the policy: every node is back to shoal's defaults with its next poll.
        Idempotent: with no policy in force nothing is stored (revision None)."""
        async with self._lock:
            if self.registry.policy is None:
                return PolicyCleared(revision=None)
            record = await self.registry.save_policy(None, "")
        log.info("policy r%d: removed, shoal's defaults apply", record.revision)
        return PolicyCleared(revision=record.revision)

    def get_policy(self) -> PolicyInfo:
        record, policy = self.registry.policy_record, self.registry.policy
        if record is None or policy is None:
            raise NotFound(
                "no policy is set (shoal's defaults apply); set one: shoal policy set FILE"
            )
        return PolicyInfo(
            revision=record.revision,
            file=record.file,
            source=record.source,
            set_at=record.set_at,
            rules=len(policy.rules),
        )

    def _endpoints(self, name: str, role: str) -> list[tuple[IPv4Address, NodeRecord, str]]:
        """What a name in `policy test` stands for: a node (its mesh IP), a container, or
        every replica of a service (`web` or `web.app`)."""
        found: list[tuple[IPv4Address, NodeRecord, str]] = []
        node = self.registry.by_name(name)
        if node is not None:
            found.append((node.mesh_ip, node, f"{node.name} (host {node.mesh_ip})"))
        for c in self.registry.containers():
            named = c.name == name or (
                c.service is not None and name in (c.service, f"{c.service}.{c.project}")
            )
            host = self.registry.get(c.node_id)
            if named and host is not None:
                found.append((c.ip, host, f"{c.name} ({c.ip} on {host.name})"))
        if not found:
            raise NotFound(f"{role} {name!r}: no node, container or service has this name")
        return found

    def test_policy(
        self, src: str, dst: str, proto: Proto, port: int | None
    ) -> list[PolicyVerdict]:
        """The verdict of the destination host's compiled policy (what its kernel enforces)
        for each source and destination address the names stand for."""
        policy = self.registry.policy
        verdicts = []
        for dst_ip, host, dst_text in self._endpoints(dst, "destination"):
            compiled = (
                None if policy is None else compile_for(policy, self.registry.full_map(host.id))
            )
            for src_ip, src_host, src_text in self._endpoints(src, "source"):
                verdict = (
                    SAME_HOST
                    if src_host.id == host.id
                    else explain(compiled, host.mesh_ip, src_ip, dst_ip, proto, port)
                )
                verdicts.append(
                    PolicyVerdict(
                        src=src_text,
                        dst=dst_text,
                        proto=proto,
                        port=port,
                        allow=verdict.allow,
                        reason=verdict.reason,
                        policy_revision=None if policy is None else policy.revision,
                    )
                )
        return verdicts

    def list_nodes(self) -> list[NodeInfo]:
        return [
            NodeInfo(
                id=n.id,
                name=n.name,
                public_key=n.public_key,
                mesh_ip=n.mesh_ip,
                subnet=n.subnet,
                endpoints=n.endpoints,
                created_at=n.created_at,
                last_seen=self.registry.last_seen(n.id),
                online=self.registry.online(n.id),
                ephemeral=n.ephemeral,
                next_key=n.next_key,
                switch_at=n.switch_at,
            )
            for n in self.registry.nodes()
        ]

    def list_services(self) -> list[ServiceInfo]:
        """The catalog of every known container (see `build_catalog`)."""
        nodes = self.registry.nodes()
        return build_catalog(
            self.registry.containers(),
            {n.id: n.name for n in nodes},
            online=[n.id for n in nodes if self.registry.online(n.id)],
            node_ips={n.id: n.mesh_ip for n in nodes},
        )

    def list_routes(self) -> list[RouteInfo]:
        """Every subnet route nodes advertise, with the admin's decision."""
        return subnet_routes.list_routes(self.registry.nodes())

    async def decide_route(self, ref: str, status: RouteStatus) -> RouteInfo:
        """Approve or reject the route `ref` (its id or prefix); an approved route reaches
        every peer's netmap, a rejected one leaves it. Deciding again is a no-op."""
        async with self._lock:
            await self.registry.catch_up()  # a route another replica just learned
            node, route = subnet_routes.find(self.registry.nodes(), ref)
            if route.status == status:
                return subnet_routes.route_info(node, route)
            if status == "approved":
                # Rejected routes do not block others: approving one again must not overlap.
                subnet_routes.check_advertised(
                    self.pools, self.registry.nodes(), node.id, [route.prefix]
                )
            saved = await self.registry.save(
                subnet_routes.decide(node, route, status, self._clock())
            )
        log.info("route %s of node %s %s", route.prefix, node.name, status)
        return subnet_routes.route_info(
            saved, next(r for r in saved.routes if r.prefix == route.prefix)
        )

    def container_for_cert(self, node_id: str, container_id: str) -> tuple[Container, str]:
        """`node_id`'s own container `container_id` (labelled shoal.tls=true) and its node's
        name: what a certificate may name. A node never gets another node's names."""
        node = self.registry.require(node_id)
        container = self.registry.containers_of(node_id).get(container_id)
        if container is None:
            raise NotFound(
                f"node {node.name} has reported no container {container_id[:12]}; report it first"
            )
        if not wants_cert(container):
            raise BadRequest(
                f"container {container.name} has no label {TLS_LABEL[0]}={TLS_LABEL[1]}"
            )
        return container, node.name

    async def remove_node(self, name: str, *, allow_rejoin: bool = False) -> None:
        """Remove the node; unless `allow_rejoin`, its key is revoked (it cannot join again,
        whatever token it holds). Its addresses are quarantined either way."""
        async with self._lock:
            node = self.registry.by_name(name)
            if node is None:
                raise NotFound(f"no node named {name!r} (see shoal nodes)")
            await self.registry.remove(node.id, revoke_key=not allow_rejoin)
        log.info(
            "removed node %s (%s) mesh IP %s; key %s %s",
            node.name,
            node.id,
            node.mesh_ip,
            node.public_key.short(),
            "may rejoin" if allow_rejoin else "revoked",
        )


def admin_token_info(record: TokenRecord) -> AdminTokenInfo:
    return AdminTokenInfo(
        id=record.id,
        scope="admin" if record.scope == "admin" else "read",
        created_at=record.created_at,
        expires_at=record.expires_at,
        revoked=record.revoked_at is not None,
    )


def token_info(record: TokenRecord) -> TokenInfo:
    return TokenInfo(
        id=record.id,
        reusable=record.reusable,
        tags=record.tags,
        created_at=record.created_at,
        expires_at=record.expires_at,
        used_at=record.used_at,
        revoked=record.revoked_at is not None,
        uses=record.uses,
        max_uses=record.max_uses,
        ephemeral=record.ephemeral,
    )


LOGGED_CHANGES = 10  # container changes listed in the log line of one report


def _summary(diff: list[str]) -> str:
    """The first LOGGED_CHANGES items, each clipped: one report's log line stays short (a
    200,000-port report once wrote a 15 MB line)."""
    shown = ", ".join(clip(item, 120) for item in diff[:LOGGED_CHANGES])
    more = len(diff) - LOGGED_CHANGES
    return shown + (f" and {more} more" if more > 0 else "")


def _describe(old: Container | None, new: Container) -> str:
    """One readable diff item: `+web 10.42.0.2`, `~db health starting => healthy`."""
    if old is None:
        return f"+{new.name} {new.ip}" + ("" if new.health == "none" else f" ({new.health})")
    fields = [
        f"{field} {getattr(old, field)} => {getattr(new, field)}"
        for field in ("name", "ip", "project", "service", "ports", "health", "labels")
        if getattr(old, field) != getattr(new, field)
    ]
    return f"~{old.name} " + "; ".join(fields)
