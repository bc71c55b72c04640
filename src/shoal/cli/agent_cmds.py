"""`shoal up | status | ping | down`: rendering and process handling around shoal.agent."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from ipaddress import IPv4Address, ip_address
from pathlib import Path

from shoal.agent.config import AgentConfig, parse_metrics_listen
from shoal.agent.errors import AgentNotRunning, AgentStartFailed, NotRoot
from shoal.agent.localclient import fetch_services, fetch_status, request_down
from shoal.agent.ping import ping_once
from shoal.agent.statefiles import StateDir
from shoal.cli.render import json_list, table
from shoal.model.errors import ShoalError
from shoal.model.status import AgentState, AgentStatus, DownReport, HealthWarning
from shoal.model.tokens import parse_join_token

START_TIMEOUT_SECONDS = 90.0
TOKEN_ENV = "SHOAL_TOKEN"
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


def _token_in_sight(args: argparse.Namespace) -> bool:
    """The token came in argv or the environment, where `ps` and /proc show it for the life
    of the process."""
    return (args.token not in (None, "-")) or (
        args.token is None and args.token_file is None and args.token_fd is None
        and bool(os.environ.get(TOKEN_ENV, "").strip())
    )  # fmt: skip


def _token_pipe(token: str) -> int:
    """A pipe holding the token, its read end inheritable: how the token reaches the agent
    process without appearing in its argv or environment."""
    read, write = os.pipe()
    os.write(write, token.encode())
    os.close(write)
    os.set_inheritable(read, True)
    return read


def _without_token(argv: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--token", "--token-file", "--token-fd"):
            skip = True
        elif not arg.startswith(("--token=", "--token-file=", "--token-fd=")):
            out.append(arg)
    return out


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != TOKEN_ENV}


def _config(args: argparse.Namespace) -> AgentConfig:
    advertise = None
    if args.advertise_addr:
        try:
            advertise = IPv4Address(args.advertise_addr)
        except ValueError as exc:
            raise BadArgument(
                f"--advertise-addr {args.advertise_addr!r} is not an IPv4 address"
            ) from exc
    return AgentConfig(
        state_dir=Path(args.state_dir),
        server_url=args.server.rstrip("/") if args.server else None,
        token=read_token(args),
        name=args.name,
        advertise_addr=advertise,
        listen_port=args.listen_port,
        docker_host=args.docker_host or os.environ.get("DOCKER_HOST"),
        metrics_listen=parse_metrics_listen(args.metrics_listen) if args.metrics_listen else None,
    )


def cmd_up(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise NotRoot()
    config = _config(args)
    if args.foreground:
        if config.token is not None and _token_in_sight(args):
            # Start again with the token in a pipe: the agent runs for months and its argv
            # and environment are there for anyone to read all along.
            read = _token_pipe(config.token)
            argv = [sys.executable, "-m", "shoal.cli.main", *_without_token(sys.argv[1:])]
            os.execve(sys.executable, [*argv, "--token-fd", str(read)], _clean_env())
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        asyncio.run(_run_foreground(config))
        return 0
    return _start_background(args, config)


async def _run_foreground(config: AgentConfig) -> None:
    # Imported here: the daemon's imports (Docker SDK, pyroute2, ...) cost about a second,
    # which `shoal up` in the foreground pays once and the starting parent not at all.
    from shoal.agent.daemon import start

    agent = await start(config)
    await agent.run()


def _start_background(args: argparse.Namespace, config: AgentConfig) -> int:
    """Start the daemon detached and return once the host is connected (or say why not)."""
    state = StateDir(config.state_dir)
    state.ensure()
    try:
        status = fetch_status(state.socket)
    except AgentNotRunning:
        pass
    else:
        print(f"shoal: agent already running here ({status.state}); `shoal status` for details")
        return 0

    argv = [sys.executable, "-m", "shoal.cli.main", "up", "--foreground"]
    for flag in ("server", "name", "advertise_addr", "docker_host", "metrics_listen"):
        value = getattr(args, flag)
        if value:
            argv += [f"--{flag.replace('_', '-')}", str(value)]
    argv += ["--state-dir", str(config.state_dir), "--listen-port", str(config.listen_port)]
    fds: tuple[int, ...] = ()
    if config.token is not None:
        fds = (_token_pipe(config.token),)
        argv += ["--token-fd", str(fds[0])]
    print(f"shoal: starting agent (log: {state.log})", file=sys.stderr)
    with state.log.open("ab") as log:
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            pass_fds=fds,
            env=_clean_env(),
        )
    for fd in fds:
        os.close(fd)
    started = time.monotonic()
    while time.monotonic() - started < START_TIMEOUT_SECONDS:
        if child.poll() is not None:
            raise AgentStartFailed(_last_error(state.log) or f"agent exited ({child.returncode})")
        try:
            status = fetch_status(state.socket, timeout=2.0)
        except AgentNotRunning:
            time.sleep(0.1)
            continue
        if status.state in (AgentState.RUNNING, AgentState.DEGRADED):
            print(
                f"shoal: {status.name} is up: mesh IP {status.mesh_ip}, "
                f"containers {status.subnet}, {len(status.peers)} peer(s), {status.state}"
            )
            return 0
        time.sleep(0.1)
    raise AgentStartFailed(
        f"agent did not become ready in {START_TIMEOUT_SECONDS:.0f}s; see {state.log}"
    )


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
    return 0 if status.state in (AgentState.RUNNING, AgentState.DEGRADED) else 1


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


def render_status(s: AgentStatus) -> str:
    if s.name is None:
        return "\n".join([f"{s.state}", *(_warning(h) for h in s.health)])
    lines = [
        f"{s.name}  {s.state}  mesh {s.mesh_ip}  containers {s.subnet}",
        f"  {s.interface} ({s.dataplane}) port {s.listen_port}, server {s.server}, "
        f"netmap r{s.netmap_revision} from {_ago(s.netmap_received_at)}",
        *(_warning(h) for h in s.health),
    ]
    if s.peers:
        rows = [
            (
                p.name,
                str(p.mesh_ip),
                str(p.subnet),
                p.endpoint or "-",
                p.path or "-",
                _ago(p.last_handshake),
                _bytes(p.rx_bytes),
                _bytes(p.tx_bytes),
            )
            for p in s.peers
        ]
        lines.append("")
        lines.append(
            table(
                ("PEER", "MESH IP", "CONTAINERS", "ENDPOINT", "PATH", "HANDSHAKE", "RX", "TX"),
                rows,
            )
        )
    else:
        lines.append("  no peers yet")
    return "\n".join(lines)


def cmd_ping(args: argparse.Namespace) -> int:
    state = StateDir(Path(args.state_dir))
    status = fetch_status(state.socket)
    target = _resolve_target(status, args.target)
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


def _resolve_target(status: AgentStatus, target: str) -> IPv4Address:
    for peer in status.peers:
        if peer.name == target:
            return peer.mesh_ip
    try:
        addr = ip_address(target)
    except ValueError as exc:
        known = ", ".join(p.name for p in status.peers) or "none"
        raise BadArgument(f"unknown node {target!r} (peers: {known})") from exc
    if not isinstance(addr, IPv4Address):
        raise BadArgument("shoal meshes are IPv4 only for now")
    return addr


def cmd_down(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise NotRoot()
    state = StateDir(Path(args.state_dir))
    try:
        report = request_down(state.socket, args.leave)
    except AgentNotRunning:
        # Imported here: only this path needs the agent's adapters (pyroute2, Docker SDK).
        from shoal.agent.daemon import down_offline

        config = AgentConfig(
            state_dir=state.path, docker_host=args.docker_host or os.environ.get("DOCKER_HOST")
        )
        report = asyncio.run(down_offline(config, args.leave))
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


def cmd_services(args: argparse.Namespace) -> int:
    """The catalog as this host's agent sees it, or the server's with --data-dir/--server."""
    if args.data_dir or args.server:
        from shoal.cli.server_cmds import cmd_services_admin

        return cmd_services_admin(args)
    services = fetch_services(StateDir(Path(args.state_dir)).socket)
    if args.json:
        print(json_list(services))
        return 0
    if not services:
        print("no containers on the shoal network anywhere in the mesh")
        return 0
    rows = []
    for service in services:
        for i, instance in enumerate(service.instances):
            rows.append(
                (
                    service.name if i == 0 else "",
                    instance.container,
                    instance.node,
                    str(instance.ip),
                    instance.health,
                )
            )
    print(table(("SERVICE", "INSTANCE", "HOST", "IP", "HEALTH"), rows))
    return 0
