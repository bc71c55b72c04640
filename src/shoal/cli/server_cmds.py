"""`shoal server` and the admin commands (token, nodes, node remove, services against the
server): parsing and rendering.

Admin commands find the server in `--data-dir` (server.json + admin.token, on the server host)
or take `--server URL` with the admin token in SHOAL_ADMIN_TOKEN. Either way they pin the CA
named by the admin token's fingerprint before sending it.
"""

from __future__ import annotations

import argparse
import asyncio
import asyncio.sslproto
import gc
import json
import os
import sys
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from shoal.cli import logs
from shoal.cli.render import json_list, table
from shoal.cli.urls import check_server_flag
from shoal.control.app import ADMIN_TOKEN_FILE, SERVER_JSON, serve
from shoal.control.ca import EXPIRY_WARNING, rotate_ca
from shoal.control.config import load_config
from shoal.control.relayhost import serve_relay
from shoal.control.tokens import parse_duration
from shoal.controlclient.client import ControlClient
from shoal.controlclient.tls import fetch_pinned_ca
from shoal.model.api import (
    DEFAULT_ADMIN_TOKEN_SECONDS,
    DEFAULT_TOKEN_SECONDS,
    AdminTokenCreateRequest,
    CertStatus,
    NodeInfo,
    ServiceInfo,
    TokenCreateRequest,
    TokenInfo,
)
from shoal.model.errors import ShoalError
from shoal.model.tokens import parse_admin_token

T = TypeVar("T")
ADMIN_TOKEN_ENV = "SHOAL_ADMIN_TOKEN"
SERVER_GC_FULL_EVERY = 200  # middle-generation collections per full one (Python: 10)
# asyncio gives every TLS connection a 256 KiB read buffer; a server holding one long-poll
# per node paid 0.32 MB per node for it (397 MB at 1,000 nodes, about 2 GB at 5,000). A TLS
# record is at most 16 KiB, so 32 KiB loses nothing but memory.
TLS_READ_BUFFER = 32 * 1024


class AdminSetupError(ShoalError):
    """The admin command cannot find the server or its admin token."""


class UsageError(ShoalError):
    """A flag's value is invalid."""


def _duration(flag: str, text: str | None) -> timedelta | None:
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from exc


def cmd_server(args: argparse.Namespace) -> int:
    config = load_config(
        listen=args.listen,
        data_dir=args.data_dir,
        store=args.store,
        mesh_pool=args.mesh_pool,
        container_pool=args.container_pool,
        subnet_prefix=args.subnet_prefix,
        heartbeat_timeout=args.heartbeat_timeout,
        mtu=args.mtu,
        address_quarantine=_duration("--address-quarantine", args.address_quarantine),
        ephemeral_timeout=_duration("--ephemeral-timeout", args.ephemeral_timeout),
        no_limits_from=args.no_limits_from,
        relay_port=args.relay_port,
        relay_at=args.relay_at,
    )
    logs.setup(args.log_format)
    tune_server_process()
    asyncio.run(serve(config))
    return 0


def cmd_relay(args: argparse.Namespace) -> int:
    """`shoal relay`: the TCP relay alone (see shoal.control.relayhost)."""
    host, sep, port = args.listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) <= 65535:
        raise UsageError(f"--listen {args.listen!r}: expected ADDR:PORT, e.g. 0.0.0.0:443")
    announce = args.announce or host
    if announce in ("", "0.0.0.0"):
        raise UsageError("--listen on all addresses needs --announce ADDR: where hosts reach it")
    target = admin_target(args)
    token = parse_admin_token(target.token)
    logs.setup(args.log_format)

    async def run() -> None:
        ca_pem = await fetch_pinned_ca(target.url, token.fingerprint)
        async with ControlClient(target.url, ca_pem, credential=target.token) as client:
            await serve_relay(host or "0.0.0.0", int(port), Path(args.data_dir), client, announce)

    asyncio.run(run())
    return 0


class _SharedBufferSSLProtocol(asyncio.sslproto.SSLProtocol):
    """asyncio's TLS protocol with one read buffer for every connection of the event loop.

    Each connection's own buffer (TLS_READ_BUFFER, even at 32 KiB) was 45 % of what a held
    netmap stream costs the server (73 KiB per idle stream at 2,000). One buffer is enough:
    the loop's transport fills it (`get_buffer`, `recv_into`) and the protocol copies it into
    its TLS object (`buffer_updated`) in one synchronous call, so no connection's bytes are
    still in it when another's are read. One per thread: an event loop of another thread
    (none in the server today) reads through its own."""

    _local: ClassVar[threading.local] = threading.local()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        shared: bytearray | None = getattr(self._local, "buffer", None)
        if shared is None or len(shared) != self.max_size:
            shared = self._local.buffer = bytearray(self.max_size)
        self._ssl_buffer = shared
        self._ssl_buffer_view = memoryview(shared)


def tune_server_process() -> None:
    """Process-wide settings for a long-running server (this process runs nothing else):
    smaller TLS read buffers, shared by every connection, and rarer full garbage
    collections."""
    # A class attribute: every TLS connection of this process gets the smaller buffer.
    asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER
    # asyncio's event loops make each TLS connection's protocol as `sslproto.SSLProtocol(...)`
    # at call time (3.11 to 3.13): this class is the one they make. An interpreter whose
    # protocol keeps no `_ssl_buffer` keeps its own class (the subclass would allocate twice).
    if "_ssl_buffer" in asyncio.sslproto.SSLProtocol.__init__.__code__.co_names:
        asyncio.sslproto.SSLProtocol = _SharedBufferSSLProtocol  # type: ignore[misc]
    # What the server holds (the registry, one long-poll per node) is long-lived, and every
    # change's fan-out replaces N long-polls, which is enough new survivors to set off a full
    # collection each time: at 5,000 nodes 20 pauses of about 0.4 s in a run of six changes,
    # 2 with this. Short-lived garbage is freed by reference counting either way.
    gc.set_threshold(700, 10, SERVER_GC_FULL_EVERY)


@dataclass(frozen=True, slots=True)
class AdminTarget:
    url: str
    token: str


def admin_target(args: argparse.Namespace) -> AdminTarget:
    """Where the server is and the admin token: --server + env, or the local data dir."""
    env_token = os.environ.get(ADMIN_TOKEN_ENV, "").strip()
    if args.server:
        if not env_token:
            raise AdminSetupError(
                f"--server needs the admin token in {ADMIN_TOKEN_ENV} "
                f"(the SHOAL-ADMIN-1-... line of {ADMIN_TOKEN_FILE} in the server's data dir)"
            )
        return AdminTarget(url=check_server_flag(args.server), token=env_token)
    data_dir = Path(args.data_dir)
    server_json, token_file = data_dir / SERVER_JSON, data_dir / ADMIN_TOKEN_FILE
    missing = AdminSetupError(
        f"no server data in {data_dir}; run on the server host or pass --server URL with "
        f"{ADMIN_TOKEN_ENV}"
    )
    try:
        url = str(json.loads(server_json.read_text())["url"])
        token = env_token or token_file.read_text().strip()
    except FileNotFoundError as exc:
        raise missing from exc
    except PermissionError as exc:
        raise AdminSetupError(f"cannot read {exc.filename}: permission denied (root?)") from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AdminSetupError(
            f"{server_json} is unreadable ({exc}); is the server running?"
        ) from exc
    return AdminTarget(url=url, token=token)


def _with_admin(args: argparse.Namespace, action: Callable[[ControlClient], Awaitable[T]]) -> T:
    target = admin_target(args)
    token = parse_admin_token(target.token)

    async def run() -> T:
        ca_pem = await fetch_pinned_ca(target.url, token.fingerprint)
        async with ControlClient(target.url, ca_pem, credential=target.token) as client:
            return await action(client)

    return asyncio.run(run())


def _expires(text: str | None, default: int) -> int | None:
    """--expires: seconds; None for `never`."""
    if text == "never":
        return None
    lifetime = _duration("--expires", text)
    return default if lifetime is None else int(lifetime.total_seconds())


def cmd_rotate_ca(args: argparse.Namespace) -> int:
    """One step of a CA rotation in the server's data dir (see shoal.control.ca)."""
    step = "finish" if args.finish else "drop-previous" if args.drop_previous else "introduce"
    print(f"shoal: {rotate_ca(Path(args.data_dir), step)}")
    nxt = {
        "introduce": "then, once `shoal nodes` shows every host online: shoal server rotate-ca "
        "--finish",
        "finish": "later, when no host can still be on the old bundle: shoal server rotate-ca "
        "--drop-previous",
        "drop-previous": "",
    }[step]
    if nxt:
        print(f"shoal: {nxt}")
    return 0


def cmd_server_migrate(args: argparse.Namespace) -> int:
    """Apply PostgreSQL's schema migrations to --to; with --from, first move that store's
    whole state into it (the target must hold no mesh yet)."""
    from shoal.store import is_postgres_url, open_store
    from shoal.store.postgresql import PostgresStore, migrate, redact
    from shoal.store.transfer import copy_state

    if not is_postgres_url(args.target):
        raise UsageError(f"--to {args.target!r}: expected postgresql://USER@HOST/DB")
    target_name = redact(args.target)
    if args.source is None:
        applied = asyncio.run(migrate(args.target))
        done = ", ".join(map(str, applied)) if applied else "none (up to date)"
        print(f"shoal: {target_name}: migrations applied: {done}")
        return 0
    if not args.source.startswith("sqlite:"):
        raise UsageError(f"--from {args.source!r}: expected sqlite:PATH (the server's shoal.db)")
    path = Path(args.source.removeprefix("sqlite://") if "///" in args.source else args.source[7:])
    if not path.is_file():
        raise UsageError(f"--from {args.source!r}: no such database file {path}")

    async def run() -> str:
        source, target = open_store(args.source, path.parent), PostgresStore(args.target)
        try:
            moved = await copy_state(source, target)
        finally:
            await source.close()
            await target.close()
        return (
            f"moved revision {moved.revision}: {moved.nodes} nodes, {moved.tokens} tokens, "
            f"{moved.containers} containers, {moved.settings} settings"
        )

    print(f"shoal: {path} → {target_name}: {asyncio.run(run())}")
    print(
        "shoal: now start every replica with --store and a copy of this server's data dir "
        "(its CA, server keys and admin token): hosts keep their credentials"
    )
    return 0


def _expiry_warnings(certs: list[CertStatus], now: datetime) -> list[str]:
    """One line per CA or server certificate that expires within EXPIRY_WARNING."""
    return [
        f"warning: the server's {c.kind} certificate {c.fingerprint[:16]}… expires "
        f"{c.not_after:%Y-%m-%d}"
        + (" (rotate it: shoal server rotate-ca)" if c.kind == "ca" else " (restart the server)")
        for c in certs
        if c.kind in ("ca", "server") and c.not_after - now < EXPIRY_WARNING
    ]


def cmd_token_create(args: argparse.Namespace) -> int:
    expires = _expires(args.expires, DEFAULT_TOKEN_SECONDS)
    if args.uses is not None and not 1 <= args.uses <= 1_000_000:
        raise UsageError(f"--uses {args.uses}: expected 1 to 1000000")
    request = TokenCreateRequest(
        reusable=args.reusable or (args.uses or 1) > 1,
        uses=args.uses,
        expires_in_seconds=expires,
        ephemeral=args.ephemeral,
        tags=tuple(args.tag),
    )
    created = _with_admin(args, lambda c: c.create_token(request))
    print(created.token)  # alone on stdout: scripts capture it
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    tokens = _with_admin(args, lambda c: c.list_tokens())
    if args.json:
        print(json_list(tokens))
        return 0
    now = datetime.now(UTC)
    rows = [
        (
            t.id,
            ("reusable" if t.reusable else "single-use") + (", ephemeral" if t.ephemeral else ""),
            _token_state(t, now),
            f"{t.uses}/{'∞' if t.max_uses is None else t.max_uses}",
            _when(t.created_at),
            _when(t.expires_at) if t.expires_at else "never",
            ",".join(t.tags) or "-",
        )
        for t in tokens
    ]
    print(table(("ID", "KIND", "STATE", "USES", "CREATED", "EXPIRES", "TAGS"), rows))
    return 0


def cmd_admin_token_create(args: argparse.Namespace) -> int:
    request = AdminTokenCreateRequest(
        scope=args.scope, expires_in_seconds=_expires(args.expires, DEFAULT_ADMIN_TOKEN_SECONDS)
    )
    created = _with_admin(args, lambda c: c.create_admin_token(request))
    print(created.token)  # alone on stdout: scripts capture it
    return 0


def cmd_admin_token_list(args: argparse.Namespace) -> int:
    tokens = _with_admin(args, lambda c: c.list_admin_tokens())
    if args.json:
        print(json_list(tokens))
        return 0
    now = datetime.now(UTC)
    rows = [
        (
            t.id,
            t.scope,
            "revoked"
            if t.revoked
            else ("expired" if t.expires_at is not None and t.expires_at <= now else "active"),
            _when(t.created_at),
            _when(t.expires_at) if t.expires_at else "never",
        )
        for t in tokens
    ]
    print(table(("ID", "SCOPE", "STATE", "CREATED", "EXPIRES"), rows))
    return 0


def cmd_admin_token_revoke(args: argparse.Namespace) -> int:
    _with_admin(args, lambda c: c.revoke_admin_token(args.id))
    print(f"revoked admin token {args.id}")
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    _with_admin(args, lambda c: c.revoke_token(args.id))
    print(f"revoked token {args.id}")
    return 0


def cmd_nodes(args: argparse.Namespace) -> int:
    async def both(c: ControlClient) -> tuple[list[NodeInfo], list[CertStatus]]:
        return await c.list_nodes(), await c.list_certs()

    nodes, certs = _with_admin(args, both)
    for line in _expiry_warnings(certs, datetime.now(UTC)):
        print(line, file=sys.stderr)
    if args.json:
        print(json_list(nodes))
        return 0
    rows = [
        (
            n.name,
            str(n.mesh_ip),
            str(n.subnet or "-"),
            ",".join(map(str, n.endpoints)) or "-",
            ("online" if n.online else "offline")
            + (
                f", key rotating to {n.next_key.short()}… at {n.switch_at:%H:%M:%S}"
                if n.next_key is not None and n.switch_at is not None
                else ""
            ),
            _when(n.last_seen) if n.last_seen else "never",
            n.id,
        )
        for n in nodes
    ]
    print(table(("NAME", "MESH IP", "SUBNET", "ENDPOINTS", "STATE", "LAST SEEN", "ID"), rows))
    return 0


def cmd_services_admin(args: argparse.Namespace) -> int:
    """`shoal services` asking the server (--data-dir or --server): the whole mesh's catalog."""
    services: list[ServiceInfo] = _with_admin(args, lambda c: c.list_services())
    if args.json:
        print(json_list(services))
        return 0
    rows = [
        (
            s.name,
            f"{sum(i.online and i.health in ('none', 'healthy') for i in s.instances)}"
            f"/{len(s.instances)}",
            ",".join(sorted({i.node + ("" if i.online else " (offline)") for i in s.instances})),
        )
        for s in services
    ]
    print(table(("SERVICE", "INSTANCES", "HOSTS"), rows))
    return 0


def cmd_node_remove(args: argparse.Namespace) -> int:
    _with_admin(args, lambda c: c.remove_node(args.name, allow_rejoin=args.allow_rejoin))
    if args.allow_rejoin:
        print(f"removed node {args.name}; its key may join again with a join token")
    else:
        print(f"removed node {args.name} and revoked its key")
    return 0


def _token_state(token: TokenInfo, now: datetime) -> str:
    if token.revoked:
        return "revoked"
    if token.expires_at is not None and token.expires_at <= now:
        return "expired"
    if token.max_uses is not None and token.uses >= token.max_uses:
        return "used"
    return "active (used)" if token.uses else "active"


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
