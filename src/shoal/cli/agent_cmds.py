"""`shoal up | status | ping | down`: rendering and process handling around shoal.agent."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib
import os
import re
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Network, ip_address
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from shoal.agent.config import (
    DEFAULT_KEY_MAX_AGE_SECONDS,
    DEFAULT_LISTEN_PORT,
    AgentConfig,
    UpSettings,
    default_node_name,
    parse_metrics_listen,
)
from shoal.agent.errors import AgentNotRunning, AgentStartFailed, NotRoot, StateWriteFailed
from shoal.agent.localclient import (
    fetch_services,
    fetch_status,
    request_down,
    request_rotate_key,
)
from shoal.agent.ping import ping_once
from shoal.agent.statefiles import NodeIdentity, StateDir
from shoal.agent.stopwatch import Stopwatch
from shoal.agent.systemd import AgentUnit, Systemd
from shoal.cli import logs
from shoal.cli.logs import LogFormat
from shoal.cli.render import table
from shoal.cli.tokenpass import TOKEN_ENV
from shoal.cli.urls import check_server_flag
from shoal.model.api import NAME_PATTERN, ServiceInfo
from shoal.model.errors import ShoalError
from shoal.model.netmap import AdvertisedEndpoints, Endpoint
from shoal.model.routes import parse_routes
from shoal.model.status import (
    AgentState,
    AgentStatus,
    DownReport,
    HealthWarning,
    KeyRotation,
)
from shoal.model.tokens import parse_join_token

START_TIMEOUT_SECONDS = 90.0
STOP_TIMEOUT_SECONDS = 30.0  # a stopping agent closes its API and drops the DNS redirect
MAX_TOKEN_BYTES = 1024  # a join token is 106 characters


class BadArgument(ShoalError):
    pass


def read_token(args: argparse.Namespace) -> str | None:
    """The join token from exactly one of --token T, --token - (stdin), --token-file F, the
    inherited pipe of a parent `shoal up` (--token-fd), or $SHOAL_TOKEN."""
    given = [args.token is not None, args.token_file is not None, args.token_fd is not None]
    if sum(given) > 1:
        raise BadArgument("give the join token once: --token, --token-file or $SHOAL_TOKEN")
    try:
        if args.token_fd is not None:
            with os.fdopen(args.token_fd, "rb") as pipe:
                text = pipe.read(MAX_TOKEN_BYTES).decode(errors="replace")
        elif args.token == "-":
            text = sys.stdin.read(MAX_TOKEN_BYTES)
        elif args.token_file is not None:
            with open(args.token_file, "rb") as f:
                text = f.read(MAX_TOKEN_BYTES).decode(errors="replace")
        else:
            text = args.token if args.token is not None else os.environ.get(TOKEN_ENV, "")
    except OSError as exc:
        raise BadArgument(f"cannot read the join token: {exc.strerror or exc}") from exc
    text = text.strip()
    if not text:
        if any(given):
            raise BadArgument("the join token is empty")
        return None
    parse_join_token(text)  # a malformed token fails here, before anything starts
    return text


class NeedsRejoin(BadArgument):
    """A `shoal up` flag asks for what a joined node cannot change in place (its server, mesh,
    name, or container subnet): the host leaves and joins again."""


@dataclass(frozen=True, slots=True)
class UpPlan:
    """One `shoal up`: the agent's config (omitted flags keep the settings the agent last
    started with), and each setting that changes, as `--flag OLD => NEW` (none for a join)."""

    config: AgentConfig
    changes: tuple[str, ...]
    # The config the agent last started with: it runs again if the new one fails to start.
    previous: AgentConfig | None


def _plan_up(args: argparse.Namespace) -> UpPlan:
    """The agent's config from `shoal up`'s flags, every one checked here: a value the server
    or the model would refuse fails before an agent starts, as one line naming the flag.

    `shoal up` is declarative: on a joined host (node.json), a flag given sets its setting,
    a flag omitted keeps the one the agent last started with (settings.json); what cannot
    change in place raises NeedsRejoin."""
    state = StateDir(Path(args.state_dir))
    token = read_token(args)
    identity = state.identity()
    if identity is None:
        if token is not None:  # joining: the name goes to the server, which takes DNS labels
            _check_node_name(args.name)
    else:
        _check_same_node(args, token, identity, state)
    saved = state.settings()
    before = saved or UpSettings()
    listen_port = before.listen_port if args.listen_port is None else _port(args.listen_port)
    advertise = before.advertise_addr
    # An empty value sets a setting back to its default (--advertise-routes '' withdraws).
    if args.advertise_addr is not None:
        advertise = (
            _advertise_addr(args.advertise_addr, listen_port) if args.advertise_addr else None
        )
    routes = _advertise_routes(args.advertise_routes)
    if routes is not None and saved is not None and routes == saved.advertise_routes:
        routes = None  # the server has them: not registered again
    max_age = before.key_max_age if args.key_max_age is None else _key_max_age(args.key_max_age)
    metrics = before.metrics_listen
    if args.metrics_listen is not None:
        metrics = parse_metrics_listen(args.metrics_listen) if args.metrics_listen else None
    config = AgentConfig(
        key_max_age_seconds=max_age,
        state_dir=state.path,
        server_url=check_server_flag(args.server) if args.server else None,
        token=token,
        name=args.name,
        advertise_addr=advertise,
        listen_port=listen_port,
        advertise_routes=routes,
        no_docker=args.no_docker,
        docker_host=_docker_host(args.docker_host, before.docker_host),
        metrics_listen=metrics,
    )
    if identity is None:  # a join: nothing to change
        return UpPlan(config=config, changes=(), previous=None)
    previous = replace(
        config,
        token=None,
        advertise_addr=before.advertise_addr,
        listen_port=before.listen_port,
        advertise_routes=None,
        docker_host=before.docker_host,
        metrics_listen=before.metrics_listen,
        key_max_age_seconds=before.key_max_age,
    )
    return UpPlan(
        config=config, changes=UpSettings.of(config, saved).changes(before), previous=previous
    )


def _docker_host(flag: str | None, before: str | None) -> str | None:
    """--docker-host, else $DOCKER_HOST, else the one the agent ran with ('' : the default)."""
    if flag is not None:
        return flag or None
    return os.environ.get("DOCKER_HOST") or before


def _advertise_addr(text: str, listen_port: int) -> IPv4Address:
    """--advertise-addr: a unicast IPv4 address other hosts can reach."""
    try:
        advertise = IPv4Address(text)
    except ValueError as exc:
        raise BadArgument(f"--advertise-addr {text!r} is not an IPv4 address") from exc
    try:
        _ADVERTISED.validate_python((Endpoint(host=advertise, port=listen_port),))
    except ValidationError as exc:
        reason = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
        raise BadArgument(f"--advertise-addr {advertise}: {reason}") from exc
    return advertise


def _check_same_node(
    args: argparse.Namespace, token: str | None, identity: NodeIdentity, state: StateDir
) -> None:
    """Raise NeedsRejoin when a flag asks the joined node for another server, mesh, name or
    container subnet: its registration, addresses and peers' trust all hang on them."""
    joined = f"this host is joined to {identity.server_url} as {identity.name}"
    how = (
        f"leave first: `shoal down --leave --state-dir {state.path}`, then `shoal up` with a "
        "join token"
    )
    if args.server and check_server_flag(args.server) != identity.server_url:
        raise NeedsRejoin(f"--server {args.server}: {joined}; to change server, {how}")
    if args.name and args.name != identity.name:
        raise NeedsRejoin(f"--name {args.name[:80]!r}: {joined}; to rename it, {how}")
    if token is not None:
        # Imported here: only a `shoal up` with a token on a joined host compares them.
        from shoal.controlclient.tls import bundle_fingerprints

        fingerprint = parse_join_token(token).fingerprint
        if fingerprint not in bundle_fingerprints(identity.ca_pem.encode()):
            raise NeedsRejoin(
                f"--token: the token is for another mesh (CA {fingerprint[:16]}…); {joined};"
                f" to change mesh, {how}"
            )
    if args.no_docker:
        cached = state.cached_netmap()
        if cached is not None and cached.netmap.self_node.subnet is not None:
            raise NeedsRejoin(
                f"--no-docker: {joined} with container subnet "
                f"{cached.netmap.self_node.subnet}; to drop it, {how}"
            )


def _advertise_routes(text: str | None) -> tuple[IPv4Network, ...] | None:
    """--advertise-routes CIDR[,CIDR]: the prefixes, checked; None when not given."""
    if text is None:
        return None
    try:
        return parse_routes(text)
    except ValueError as exc:
        raise BadArgument(str(exc)) from exc


_ADVERTISED: TypeAdapter[tuple[Endpoint, ...]] = TypeAdapter(AdvertisedEndpoints)


def _check_node_name(name: str | None) -> None:
    """--name, or the host name it defaults to, must be a DNS label: it becomes NAME.shoal."""
    label = "lowercase letters, digits and '-' inside, at most 63 characters"
    if name is not None and not re.fullmatch(NAME_PATTERN, name):
        raise BadArgument(f"--name {name[:80]!r}: a node name is a DNS label ({label})")
    if name is None and not re.fullmatch(NAME_PATTERN, default_node_name()):
        raise BadArgument(
            f"this host's name {default_node_name()[:80]!r} is not a valid node name ({label}):"
            " pass --name NAME"
        )


def _port(text: str) -> int:
    """--listen-port: 1 to 65535; '' the default (51820)."""
    if text == "":
        return DEFAULT_LISTEN_PORT
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise BadArgument(f"--listen-port {text!r}: expected 1 to 65535")
    return int(text)


def _key_max_age(text: str) -> float | None:
    """--key-max-age: seconds, None for `never`; '' the default (90 days)."""
    if text == "never":
        return None
    if text == "":
        return DEFAULT_KEY_MAX_AGE_SECONDS
    # Imported here: only `up` parses durations, and the parser lives with the tokens'.
    from shoal.control.tokens import parse_duration

    try:
        seconds = parse_duration(text).total_seconds()
    except ValueError as exc:
        raise BadArgument(f"--key-max-age {text!r}: {exc}") from exc
    if seconds < 3600:
        raise BadArgument(f"--key-max-age {text!r}: at least 1h (or never)")
    return seconds


def cmd_up(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise NotRoot()
    plan = _plan_up(args)  # `main` already moved a token in argv or env out of sight
    if args.foreground:
        logs.setup(args.log_format)
        asyncio.run(_run_foreground(plan.config))
        return 0
    if plan.config.token is not None and plan.previous is not None:
        print("shoal: this host is joined already: the join token was not used", file=sys.stderr)
    return _start_background(
        plan.config, log_format=args.log_format, changes=plan.changes, previous=plan.previous
    )


@contextlib.contextmanager
def no_ca_bundle_at_import() -> Iterator[None]:
    """While the agent's modules are imported, OpenSSL's default CA file is empty.

    Importing aiohttp builds two default TLS contexts, each parsing the system's CA bundle:
    ~40 ms of CPU, 40-100 ms of a join on the loaded machine. The agent never uses them: it
    trusts only its server's pinned CA (`controlclient.tls.ssl_context`), and its one
    unverified fetch of that CA verifies nothing. They keep OpenSSL's default certificate
    directory, which is read only when a certificate is verified. SSL_CERT_FILE is restored
    on leaving: nothing the agent runs later sees the change."""
    saved = os.environ.get("SSL_CERT_FILE")
    os.environ["SSL_CERT_FILE"] = os.devnull
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("SSL_CERT_FILE", None)
        else:
            os.environ["SSL_CERT_FILE"] = saved


async def _run_foreground(
    config: AgentConfig,
    ready: Callable[[AgentStatus], None] | None = None,
    watch: Stopwatch | None = None,
) -> None:
    # A resumed agent answers names first (a SIGKILLed one left the containers' DNS pointing
    # here), then imports the daemon in a thread while this loop serves them: its imports
    # (pydantic models, aiohttp, pyroute2, ...) take ~0.35 s of CPU, 0.5-1.1 s on a loaded
    # machine, and answers wait no more than the GIL's switch interval meanwhile (at most
    # 13 ms measured). Only the process that runs the agent pays for these imports.
    with no_ca_bundle_at_import():
        from shoal.agent.meshdns import answer_from_cache

        watch = watch or Stopwatch()
        state = StateDir(config.state_dir)
        state.hold_lock()  # before anything touches the host: one agent per state dir
        dns = await answer_from_cache(state, config.listen_port)
        watch.lap("cached-dns")
        await asyncio.to_thread(importlib.import_module, "shoal.agent.daemon")
    from shoal.agent.daemon import start  # imported by now

    saved = state.settings()
    agent = await start(config, watch=watch, state=state, dns=dns)
    _save_settings(state, UpSettings.of(config, saved))
    collect_again()
    await agent.run(ready)


def _save_settings(state: StateDir, settings: UpSettings) -> None:
    """Keep the settings for the next `shoal up`; a failed write only loses the comparison."""
    try:
        state.save_settings(settings)
    except StateWriteFailed as exc:
        print(f"shoal: {exc}: the next `shoal up` may not see what changed", file=sys.stderr)


def collect_again() -> None:
    """Garbage collection back on once the agent has started, if `main` turned it off for
    the start-up; what the start-up made is frozen out of it: it lives as long as the agent,
    and every full collection would walk it again. The cycles the start-up left unreachable
    stay with it (about 2,000 objects after the imports): freeing them took a full
    collection, ~50 ms on the way to the first packet, for a few hundred KB."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def _start_background(
    config: AgentConfig,
    systemd: Systemd | None = None,
    log_format: LogFormat = "text",
    changes: tuple[str, ...] = (),
    previous: AgentConfig | None = None,
) -> int:
    """Start the agent detached and return once the host is connected (or say why not).

    Where systemd runs, the agent is its unit (restarted on exit, started at boot; see
    `shoal.agent.systemd`). Elsewhere it is a fork of this process, not a new interpreter: it
    starts with this process's imports, and the token reaches it in memory (never in an argv
    or environment). A second interpreter cost a start and the CLI's imports again on the way
    to the first packet.

    An agent running already is left alone when nothing `changes`; otherwise it is restarted
    with `config` (SIGTERM leaves the tunnel forwarding, the new agent takes it over: no
    packet lost), and if that one fails to start, again with `previous`.
    """
    state = StateDir(config.state_dir)
    state.ensure()
    systemd = systemd or Systemd()
    try:
        status = fetch_status(state.socket)
    except AgentNotRunning:
        running = False
    else:
        running = True
        if not changes:  # the same settings: nothing to do
            print(f"shoal: agent already running here ({status.state}); `shoal status` for details")
            return 0
    for line in changes:
        print(f"shoal: changing {line}")
    if running:
        print("shoal: restarting the agent with the new settings (the tunnel keeps forwarding)")
        if not (systemd.running() and systemd.installed(state.path)):
            _stop_agent(state)
    try:
        return _start(config, state, systemd, log_format, restart=running)
    except AgentStartFailed as exc:
        if state.join_pending():
            raise AgentStartFailed(
                f"{exc}; the node stays registered (its token is spent): `shoal up --state-dir"
                f" {state.path}` again resumes it, `shoal down --leave --state-dir"
                f" {state.path}` withdraws it"
            ) from exc
        if not running or previous is None:
            raise
        _start(previous, state, systemd, log_format, restart=True)
        raise AgentStartFailed(f"{exc}; the agent runs again with its previous settings") from exc


def _stop_agent(state: StateDir) -> None:
    """SIGTERM the running agent of `state` and wait until it let go of the state dir. It
    leaves the host configured (only the containers' DNS redirect goes with it)."""
    try:
        pid = int(state.pidfile.read_text())
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError) as exc:
        raise AgentStartFailed(
            f"cannot stop the running agent ({state.pidfile}: {exc}); `shoal down --state-dir"
            f" {state.path}` first"
        ) from exc
    started = time.monotonic()
    while state.agent_running():
        if time.monotonic() - started > STOP_TIMEOUT_SECONDS:
            raise AgentStartFailed(
                f"the running agent (pid {pid}) did not stop in {STOP_TIMEOUT_SECONDS:.0f}s;"
                f" see {state.log}"
            )
        time.sleep(0.05)


def _start(
    config: AgentConfig, state: StateDir, systemd: Systemd, log_format: LogFormat, restart: bool
) -> int:
    """Start the agent (no other runs on `state`): the systemd unit, else a fork."""
    if systemd.running():
        return _start_unit(config, state, systemd, restart=restart)
    print(f"shoal: starting agent (log: {state.log})", file=sys.stderr)
    read, write = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    # The agent's start-up line begins with this process's time so far (the join benchmark).
    watch = Stopwatch.before_fork()
    pid = os.fork()
    if pid == 0:  # the agent; it never returns into the CLI
        os.close(read)
        os._exit(_agent_child(config, state.log, write, watch, log_format))
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        readable, _, _ = select.select([pipe], [], [], START_TIMEOUT_SECONDS)
        signal_byte = pipe.read(1) if readable else None
        if signal_byte is None:
            raise AgentStartFailed(
                f"agent did not become ready in {START_TIMEOUT_SECONDS:.0f}s; see {state.log}"
            )
        if signal_byte != READY:  # end of file: the agent exited before it was ready
            code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
            raise AgentStartFailed(_last_error(state.log) or f"agent exited ({code})")
        # The status follows, then end of file: no request back to an agent busy starting its
        # tasks (asked over the local API, 100-200 ms of a join on a loaded machine).
        status = AgentStatus.model_validate_json(pipe.read())
    return _say_up(status)


def _start_unit(
    config: AgentConfig, state: StateDir, systemd: Systemd, restart: bool = False
) -> int:
    """Join in this process (the token goes no further), then hand the agent to systemd;
    the unit's agent resumes from the state dir. `restart`: the unit's agent runs already,
    and restarts with the new settings (kept in the state dir first: the unit's own flags
    carry only the port, Docker host and metrics address)."""
    from shoal.agent.daemon import join  # the daemon's imports, only on this path

    saved = state.settings()
    asyncio.run(join(config))  # on a joined host, only new --advertise-routes are sent
    _save_settings(state, UpSettings.of(config, saved))
    unit = AgentUnit(
        state_dir=config.state_dir,
        listen_port=config.listen_port,
        docker_host=config.docker_host,
        metrics_listen=config.metrics_listen,
    )
    path = systemd.install(unit, restart=restart)
    print(
        f"shoal: started systemd unit {unit.name} ({path}; log: journalctl -u {unit.name})",
        file=sys.stderr,
    )
    started = time.monotonic()
    while time.monotonic() - started < START_TIMEOUT_SECONDS:
        try:
            status = fetch_status(state.socket, timeout=2.0)
        except AgentNotRunning:
            time.sleep(0.1)
            continue
        if status.state in (AgentState.RUNNING, AgentState.DEGRADED):
            return _say_up(status)
        time.sleep(0.1)
    raise AgentStartFailed(
        f"agent did not become ready in {START_TIMEOUT_SECONDS:.0f}s; see journalctl -u {unit.name}"
    )


def _say_up(status: AgentStatus) -> int:
    print(
        f"shoal: {status.name} is up: mesh IP {status.mesh_ip}, "
        f"containers {status.subnet or 'none (no Docker)'}, {len(status.peers)} peer(s), "
        f"{status.state}"
    )
    return 0


READY = b"1"  # what the agent writes to `shoal up`'s pipe once `shoal status` answers (then
# its status as JSON)


def _agent_child(
    config: AgentConfig,
    log_path: Path,
    ready_fd: int,
    watch: Stopwatch,
    log_format: LogFormat = "text",
) -> int:
    """The forked agent: its own session, stdin from /dev/null, stdout and stderr to its log;
    runs until stopped. Returns the exit code (a fatal error as one 'shoal: ...' line, which
    the parent reports)."""
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(null, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(null)
    os.close(log_fd)
    # Python's streams may not be the descriptors (a test harness replaced them): the agent's
    # output goes to its log either way. They live as long as the process.
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115

    def ready(status: AgentStatus) -> None:
        with os.fdopen(ready_fd, "wb") as pipe:
            pipe.write(READY + status.model_dump_json().encode())

    code = 0
    try:
        logs.setup(log_format)
        asyncio.run(_run_foreground(config, ready, watch))
    except ShoalError as exc:
        print(f"shoal: {exc}", file=sys.stderr)
        code = 1
    except BaseException:  # a bug: the traceback goes to the log
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def _last_error(log: Path) -> str | None:
    """The daemon prints its fatal error as one 'shoal: ...' line; find the last one."""
    lines = log.read_text(errors="replace").splitlines()
    for line in reversed(lines):
        if line.startswith("shoal: "):
            return line.removeprefix("shoal: ")
    return None


def cmd_status(args: argparse.Namespace) -> int:
    state = StateDir(Path(args.state_dir))
    try:
        status = fetch_status(state.socket)
    except AgentNotRunning as exc:
        warning = HealthWarning(code="agent-not-running", message=str(exc), since=datetime.now(UTC))
        status = AgentStatus(state=AgentState.STOPPED, health=(warning,))
    if args.json:
        print(status.model_dump_json(indent=2))
    else:
        print(render_status(status))
    # Non-zero when unhealthy, for scripts and health checks: DEGRADED carries warnings.
    return 0 if status.state is AgentState.RUNNING else 1


def _ago(when: datetime | None) -> str:
    if when is None:
        return "never"
    seconds = int((datetime.now(UTC) - when).total_seconds())
    return f"{seconds}s ago" if seconds < 120 else f"{seconds // 60}m ago"


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _warning(h: HealthWarning) -> str:
    return f"  ! {h.code}: {h.message} (since {_ago(h.since)})"


def _rotating(who: str, rotation: KeyRotation) -> str:
    return (
        f"  key rotation: {who} switches to {rotation.next_key.short()}… at "
        f"{rotation.switch_at:%H:%M:%S} UTC"
    )


def render_status(s: AgentStatus) -> str:
    if s.name is None:
        return "\n".join([f"{s.state}", *(_warning(h) for h in s.health)])
    lines = [
        f"{s.name}  {s.state}  mesh {s.mesh_ip}  containers {s.subnet or 'none (no Docker)'}",
        f"  {s.interface} ({s.dataplane}) port {s.listen_port}, server {s.server}, "
        f"netmap r{s.netmap_revision} from {_ago(s.netmap_received_at)}",
        "  policy "
        + ("none (defaults)" if s.policy_revision is None else f"r{s.policy_revision} enforced"),
        *(_warning(h) for h in s.health),
    ]
    if s.nat is not None:
        lines.insert(3, f"  nat {s.nat} (this host; `shoal netcheck` for details)")
    if s.rotation is not None:
        lines.append(_rotating("this host", s.rotation))
    lines += [_rotating(f"peer {p.name}", p.rotation) for p in s.peers if p.rotation]
    if s.peers:
        rows = [
            (
                p.name,
                str(p.mesh_ip),
                str(p.subnet or "-"),
                p.endpoint or "-",
                p.path or "-",
                p.nat or "?",
                _ago(p.last_handshake),
                _bytes(p.rx_bytes),
                _bytes(p.tx_bytes),
            )
            for p in s.peers
        ]
        lines.append("")
        lines.append(
            table(
                (
                    "PEER",
                    "MESH IP",
                    "CONTAINERS",
                    "ENDPOINT",
                    "PATH",
                    "NAT",
                    "HANDSHAKE",
                    "RX",
                    "TX",
                ),
                rows,
            )
        )
    else:
        lines.append("  no peers yet")
    return "\n".join(lines)


def cmd_rotate_key(args: argparse.Namespace) -> int:
    """`shoal node rotate-key`: the running agent announces a new key; it and every peer
    switch to it at the time printed."""
    if os.geteuid() != 0:
        raise NotRoot()
    rotation = request_rotate_key(StateDir(Path(args.state_dir)).socket)
    print(
        f"shoal: new key {rotation.next_key.short()}…; this host and its peers switch at "
        f"{rotation.switch_at:%Y-%m-%d %H:%M:%S} UTC"
    )
    return 0


def cmd_ping(args: argparse.Namespace) -> int:
    if not 0 < args.count <= 1000:
        raise BadArgument(f"--count {args.count}: expected 1 to 1000")
    state = StateDir(Path(args.state_dir))
    status = fetch_status(state.socket)
    target = _resolve_target(status, args.target, lambda: fetch_services(state.socket))
    replies = 0
    for seq in range(1, args.count + 1):
        result = ping_once(target, seq)
        if result.rtt_ms is None:
            print(f"{target}: seq={seq} timeout")
        else:
            replies += 1
            print(f"{target}: seq={seq} time={result.rtt_ms:.2f} ms")
            if seq < args.count:
                time.sleep(max(0.0, 0.2 - result.rtt_ms / 1000))
    print(f"{replies}/{args.count} replies from {args.target} ({target})")
    return 0 if replies else 1


def _resolve_target(
    status: AgentStatus, target: str, services: Callable[[], Sequence[ServiceInfo]]
) -> IPv4Address:
    """`shoal ping TARGET`: a node (this one or a peer), an IP, or a container of the catalog
    (`services` is asked only for a name that is no node)."""
    if target == status.name and status.mesh_ip is not None:
        return status.mesh_ip
    for peer in status.peers:
        if peer.name == target:
            return peer.mesh_ip
    try:
        addr = ip_address(target)
    except ValueError as exc:
        for service in services():
            for instance in service.instances:
                if instance.container == target:
                    return instance.ip
        known = ", ".join(p.name for p in status.peers) or "none"
        raise BadArgument(
            f"no node or container named {target!r} (peers: {known}; `shoal services` lists"
            " the containers)"
        ) from exc
    if not isinstance(addr, IPv4Address):
        raise BadArgument("shoal meshes are IPv4 only for now")
    return addr


def cmd_down(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise NotRoot()
    state = StateDir(Path(args.state_dir))
    # First the unit: stopped, the agent leaves the host as it is, and systemd no longer
    # restarts it while the host is undone below.
    unit = Systemd().remove(state.path)
    if unit is not None:
        print(f"shoal: stopped and removed systemd unit {unit}")
    try:
        report = request_down(state.socket, args.leave)
    except AgentNotRunning:
        # Imported here: only this path needs the agent's adapters (pyroute2, aiohttp).
        from shoal.agent.daemon import down_offline

        config = AgentConfig(
            state_dir=state.path, docker_host=args.docker_host or os.environ.get("DOCKER_HOST")
        )
        report = asyncio.run(down_offline(config, args.leave))
    if not report.subsystems:
        print(
            f"shoal: nothing to undo: no node was joined with state dir {state.path} "
            "(pass the --state-dir the agent was started with)"
        )
        return 0
    print(render_down(report))
    return 0 if all(s.error is None for s in report.subsystems) else 1


def render_down(report: DownReport) -> str:
    failed = [s for s in report.subsystems if s.error is not None]
    lines = [f"shoal: could not remove {s.subsystem}: {s.error}" for s in failed]
    if not failed:
        lines.append("shoal: removed interface, routes and firewall rules")
    network = report.get("docker-network")
    if network is not None and network.kept_for:
        lines.append(
            "shoal: kept Docker network 'shoal': containers still attached: "
            + ", ".join(network.kept_for)
        )
    elif network is not None and network.removed:
        lines.append("shoal: removed Docker network 'shoal'")
    if report.left is not None:
        lines.append(
            "shoal: left the mesh"
            if report.left
            else "shoal: could not reach the server to leave; `shoal node remove` there"
        )
    return "\n".join(lines)
