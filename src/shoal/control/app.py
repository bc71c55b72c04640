"""Wiring: config, data dir, store, CA, admin token, registry, service, HTTPS listener, and
the liveness sweeper (the server's one background task, owned by `RunningServer`).

The data dir holds ca.pem/ca.key, server.pem/server.key, node-auth.key (the X25519 key node
signatures are keyed with), shoal.db (SQLite store), admin.token
(the admin token in clear, mode 0600, for admin commands on this host) and server.json (the URL
those commands use: 127.0.0.1 when listening on all addresses) and server.lock (held by the one
server running on it).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import json
import logging
import os
import signal
import socket
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Network
from pathlib import Path

from aiohttp import web

from shoal.control import ipam
from shoal.control.api import build_app
from shoal.control.ca import CertAuthority, load_or_create_ca, write_private
from shoal.control.config import ServerConfig
from shoal.control.errors import ServerConfigError
from shoal.control.listener import (
    FD_RESERVE,
    HTTP_LOG,
    Connections,
    GuardedSite,
    listening_socket,
    quiet_accept_errors,
    raise_fd_limit,
)
from shoal.control.liveness import SEEN_PERSIST_INTERVAL, Clock, utcnow
from shoal.control.nodeauth import (
    NodeVerifier,
    ensure_shared_auth_key,
    load_or_create_auth_key,
)
from shoal.control.registry import Registry
from shoal.control.relay import Relay
from shoal.control.service import ControlService
from shoal.control.stun import start_responders
from shoal.control.tcprelay import TcpRelay, bind_relay_socket
from shoal.control.tokens import new_admin_token, secret_hash
from shoal.model.api import RelayServer
from shoal.model.netmap import DEFAULT_MTU, MeshSettings
from shoal.model.tokens import MalformedToken, parse_admin_token
from shoal.store import Store, StoreError, is_postgres_url, open_store

log = logging.getLogger("shoal.control")

SERVER_JSON = "server.json"
SERVER_LOCK = "server.lock"  # flock()ed by the one server running on this data dir
ADMIN_TOKEN_FILE = "admin.token"
SHUTDOWN_GRACE = 3.0  # seconds in-flight requests get at shutdown (long-polls end at once)
SWEEP_INTERVAL = 1.0  # seconds between liveness sweeps: withdrawal lags the timeout by ≤ 1 s


async def resolve_pools(store: Store, config: ServerConfig, node_count: int) -> ipam.Pools:
    """Pools: flags > what this mesh was created with > defaults; never changed under nodes."""
    stored = {
        key: await store.get_setting(key)
        for key in ("mesh_pool", "container_pool", "subnet_prefix")
    }
    pools = ipam.Pools(
        mesh_pool=config.mesh_pool
        or IPv4Network(stored["mesh_pool"] or str(ipam.DEFAULT_MESH_POOL)),
        container_pool=config.container_pool
        or IPv4Network(stored["container_pool"] or str(ipam.DEFAULT_CONTAINER_POOL)),
        subnet_prefix=config.subnet_prefix
        or int(stored["subnet_prefix"] or ipam.DEFAULT_SUBNET_PREFIX),
    )
    wanted = {
        "mesh_pool": str(pools.mesh_pool),
        "container_pool": str(pools.container_pool),
        "subnet_prefix": str(pools.subnet_prefix),
    }
    for key, value in wanted.items():
        if stored[key] is not None and stored[key] != value and node_count > 0:
            flag = key.replace("_", "-")
            raise ServerConfigError(
                f"this mesh uses --{flag} {stored[key]} and has {node_count} nodes; changing it "
                f"to {value} would renumber them (remove the nodes first, or drop the flag)"
            )
        if stored[key] != value:
            await store.put_setting(key, value)
    return pools


async def resolve_mtu(store: Store, config: ServerConfig, node_count: int) -> int:
    """The mesh MTU: flag > what this mesh was created with > DEFAULT_MTU.

    Hosts learn it from their first full map, so it cannot change under existing nodes."""
    stored = await store.get_setting("mtu")
    mtu = config.mtu or int(stored or DEFAULT_MTU)
    if stored is not None and int(stored) != mtu and node_count > 0:
        raise ServerConfigError(
            f"this mesh uses --mtu {stored} and has {node_count} nodes; changing it needs the "
            "nodes to rejoin (remove them first, or drop the flag)"
        )
    if stored != str(mtu):
        await store.put_setting("mtu", str(mtu))
    return mtu


async def ensure_admin_token(store: Store, data_dir: Path, fingerprint: str) -> str:
    """The admin token's hash; creates the token (and admin.token) when there is none usable."""
    path = data_dir / ADMIN_TOKEN_FILE
    stored = await store.get_setting("admin_token_hash")
    if path.exists():
        try:
            token = parse_admin_token(path.read_text())
        except MalformedToken:
            token = None
        if token is not None and token.fingerprint == fingerprint:
            digest = secret_hash(token.secret)
            if stored is None or stored == digest:
                if stored is None:
                    await store.put_setting("admin_token_hash", digest)
                return digest
    token = new_admin_token(fingerprint)
    digest = secret_hash(token.secret)
    write_private(path, f"{token}\n".encode())
    await store.put_setting("admin_token_hash", digest)
    log.info("created a new admin token in %s", path)
    return digest


def local_url(host: str, port: int) -> str:
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"https://{host}:{port}"


@dataclass
class RunningServer:
    """A started server: its URL, trust material and parts (tests use these directly)."""

    config: ServerConfig
    url: str
    port: int
    ca: CertAuthority
    admin_token: str
    service: ControlService
    store: Store
    runner: web.AppRunner
    sweeper: asyncio.Task[None] | None = field(default=None, repr=False)
    probes: list[asyncio.DatagramTransport] = field(default_factory=list, repr=False)
    relay: Relay | None = field(default=None, repr=False)
    tcp_relay: TcpRelay | None = field(default=None, repr=False)
    follower: asyncio.Task[None] | None = field(default=None, repr=False)
    data_dir_lock: int | None = field(default=None, repr=False)  # see `lock_data_dir`

    async def close(self) -> None:
        for transport in self.probes:
            transport.close()
        if self.relay is not None:
            self.relay.close()
        if self.tcp_relay is not None:
            await self.tcp_relay.close()
        for task in (self.sweeper, self.follower):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self.service.registry.close()
        await self.runner.cleanup()
        with contextlib.suppress(StoreError):
            await self.service.registry.flush_seen()
        await self.store.close()
        with contextlib.suppress(OSError):
            (self.config.data_dir / SERVER_JSON).unlink()
        if self.data_dir_lock is not None:
            os.close(self.data_dir_lock)
            self.data_dir_lock = None


def lock_data_dir(data_dir: Path) -> int:
    """Make this process the one server of `data_dir` until it ends (the kernel drops the lock
    however it ends); ServerConfigError if another holds it. Two servers on one data dir split
    the mesh in two in-memory registries over one SQLite file, and the one stopping first
    deleted the other's server.json. Replicas each have a data dir of their own."""
    fd = os.open(data_dir / SERVER_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise ServerConfigError(
            f"another shoal server already runs with data dir {data_dir}; stop it first (a "
            "replica needs a data dir of its own: see README, Running several servers)"
        ) from exc
    return fd


async def start_server(config: ServerConfig, *, clock: Clock = utcnow) -> RunningServer:
    """Open everything and listen; the caller owns the result and must `close()` it."""
    data_dir = config.data_dir
    try:
        secure_data_dir(data_dir)
    except OSError as exc:
        raise ServerConfigError(f"cannot create data dir {data_dir}: {exc}") from exc
    lock = lock_data_dir(data_dir)
    try:
        return await _start_locked(config, clock, lock)
    except BaseException:
        os.close(lock)
        raise


async def _start_locked(config: ServerConfig, clock: Clock, lock: int) -> RunningServer:
    data_dir = config.data_dir
    store = open_store(config.store_url, data_dir)
    relay_sock: socket.socket | None = None
    try:
        ca = load_or_create_ca(data_dir, config.listen_host)
        snapshot_nodes = len((await store.load(tombstone_limit=0)).nodes)
        pools = await resolve_pools(store, config, snapshot_nodes)
        admin_hash = await ensure_admin_token(store, data_dir, ca.fingerprint)
        relay_sock = bind_relay_socket(config.listen_host, config.relay_port)
        # Its own relay first: the control server is where every node already connects.
        relays = (
            () if relay_sock is None else (RelayServer(port=int(relay_sock.getsockname()[1])),)
        ) + config.extra_relays
        settings = MeshSettings(
            mesh_pool=pools.mesh_pool,
            container_pool=pools.container_pool,
            mtu=await resolve_mtu(store, config, snapshot_nodes),
        )
        registry = await Registry.load(
            store,
            settings,
            clock=clock,
            heartbeat_timeout=config.heartbeat_timeout,
            quarantine=config.address_quarantine,
            # Replicas judge liveness from each other's last_seen: write it well within the
            # timeout (one process alone keeps the cheaper default).
            seen_persist_interval=min(SEEN_PERSIST_INTERVAL, config.heartbeat_timeout / 3)
            if is_postgres_url(config.store_url or "")
            else SEEN_PERSIST_INTERVAL,
        )
        service = ControlService(
            store,
            registry,
            pools,
            fingerprint=ca.fingerprint,
            admin_token_hash=admin_hash,
            clock=clock,
            ephemeral_timeout=config.ephemeral_timeout,
            rotation_lead=config.rotation_lead,
        )
        auth_key = load_or_create_auth_key(data_dir)
        relay = Relay(config.listen_host)
        verifier = NodeVerifier(auth_key, store)
        await ensure_shared_auth_key(store, verifier.public_key)
        limits = config.connections
        fds = raise_fd_limit()
        if limits.max_connections > fds - FD_RESERVE:
            limits = replace(limits, max_connections=max(fds - FD_RESERVE, 1))
            log.warning(
                "fd limit %d: at most %d connections (raise LimitNOFILE for more hosts)",
                fds,
                limits.max_connections,
            )
        connections = Connections(limits)
        try:
            sock = listening_socket(config.listen_host, config.listen_port, connections)
        except OSError as exc:
            raise ServerConfigError(
                f"cannot listen on {config.listen_host}:{config.listen_port}: {exc.strerror}"
            ) from exc
        runner = web.AppRunner(
            build_app(
                service,
                ca,
                verifier,
                connections=connections,
                rates=config.rates,
                relay=relay,
                relays=relays,
            ),
            access_log=None,
            logger=HTTP_LOG,  # a request aiohttp cannot parse: one line, no traceback
            shutdown_timeout=SHUTDOWN_GRACE,
            keepalive_timeout=limits.idle_timeout,
        )
        await runner.setup()
        quiet_accept_errors(asyncio.get_running_loop())
        site = GuardedSite(
            runner, sock, ssl_context=ca.server_ssl_context(), connections=connections
        )
        try:
            await site.start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
    except BaseException:
        if relay_sock is not None:
            relay_sock.close()
        await store.close()
        raise
    probes = await start_responders(
        config.listen_host, auth_key, lambda key: registry.by_public_key(key) is not None
    )
    tcp_relay = None
    if relay_sock is not None:
        tcp_relay = TcpRelay(verifier, lambda key: registry.by_public_key(key) is not None)
        await tcp_relay.serve(relay_sock, ca.server_ssl_context())
    port = _bound_port(runner, config.listen_port)
    url = local_url(config.listen_host, port)
    admin_text = (data_dir / ADMIN_TOKEN_FILE).read_text().strip()
    _write_server_json(data_dir, url, ca.fingerprint)
    log.info(
        "shoal server listening on https://%s:%d (local URL %s), %d nodes, revision %d, "
        "mesh pool %s, container pool %s (/%d per host), heartbeat timeout %gs, CA %s",
        config.listen_host,
        port,
        url,
        len(registry.nodes()),
        registry.revision,
        pools.mesh_pool,
        pools.container_pool,
        pools.subnet_prefix,
        config.heartbeat_timeout.total_seconds(),
        ca.fingerprint[:16],
    )
    return RunningServer(
        config=config,
        url=url,
        port=port,
        ca=ca,
        admin_token=admin_text,
        service=service,
        store=store,
        runner=runner,
        sweeper=asyncio.create_task(_sweep_forever(service), name="shoal-control-sweeper"),
        probes=probes,
        relay=relay,
        tcp_relay=tcp_relay,
        follower=asyncio.create_task(_follow_forever(registry), name="shoal-control-follower"),
        data_dir_lock=lock,
    )


async def _sweep_forever(service: ControlService) -> None:
    """Every SWEEP_INTERVAL: withdraw the containers of silent nodes. A failing sweep (the
    store is down) is logged and retried; it must not end the loop."""
    while True:
        await asyncio.sleep(SWEEP_INTERVAL)
        try:
            await service.sweep()
        except StoreError as exc:
            log.error("liveness sweep failed: %s", exc)


async def _follow_forever(registry: Registry) -> None:
    """Take in the revisions other replicas sharing the store commit, as the store announces
    them (a store with one writer announces none). A failed catch-up is logged; the next
    announcement, or the store's reconnection, brings it again."""
    while True:
        try:
            async for revision in registry.store.notifications():
                if revision > registry.revision:
                    await registry.catch_up()
        except StoreError as exc:
            log.error("catching up with other replicas failed: %s", exc)
        await asyncio.sleep(SWEEP_INTERVAL)


def _bound_port(runner: web.AppRunner, requested: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return requested


def _write_server_json(data_dir: Path, url: str, fingerprint: str) -> None:
    doc = {"url": url, "ca_fingerprint": fingerprint, "pid": os.getpid()}
    write_private(data_dir / SERVER_JSON, (json.dumps(doc, indent=2) + "\n").encode())


def secure_data_dir(data_dir: Path) -> None:
    """The data dir at 0700 and every file in it at 0600, also when they existed before with
    looser modes (a pre-made dir, an older version): it holds the CA and server keys, the
    admin token and the database with every node's key and address."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    for entry in data_dir.iterdir():
        if entry.is_file() and not entry.is_symlink():
            os.chmod(entry, 0o600)


async def serve(config: ServerConfig) -> None:
    """Run the server until SIGTERM or SIGINT, then shut down cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        server = await start_server(config)
    except StoreError as exc:
        raise ServerConfigError(str(exc)) from exc
    # What the start loaded (every node and container, the change log) lives as long as the
    # server: frozen, full collections stop walking it again (as the agent does once started).
    gc.collect()
    gc.freeze()
    try:
        await stop.wait()
        log.info("shutting down")
    finally:
        await server.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("server stopped")
