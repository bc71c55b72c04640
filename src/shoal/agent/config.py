"""The agent's configuration: one frozen object, from flags, and the flags' settings as the
state dir keeps them (`UpSettings`, settings.json), so a later `shoal up` knows what changed."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from shoal.agent.errors import AgentError

DEFAULT_METRICS_PORT = 9469
DEFAULT_LISTEN_PORT = 51820
DEFAULT_KEY_MAX_AGE_SECONDS = 90 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class AgentConfig:
    state_dir: Path
    server_url: str | None = None
    token: str | None = None
    name: str | None = None
    advertise_addr: IPv4Address | None = None
    listen_port: int = DEFAULT_LISTEN_PORT
    docker_host: str | None = None
    # A host without Docker (--no-docker): joins with no container subnet. Decided at the
    # join; once joined, the netmap says it (no subnet), whatever the flags.
    no_docker: bool = False
    # Subnet routes to offer the mesh when joining (--advertise-routes); None: not given.
    advertise_routes: tuple[IPv4Network, ...] | None = None
    # How long one netmap long-poll may stay open; the server caps it at 60 s.
    poll_wait_seconds: float = 25.0
    # Converge from drift (someone deleted a route) even when no netmap arrives.
    resync_seconds: float = 30.0
    # Where /metrics listens: (loopback address or "mesh", port); None: no metrics.
    metrics_listen: tuple[str, int] | None = None
    # Rotate the WireGuard key once private.key is older than this (seconds; None: never).
    # Checked at start and then every KEY_AGE_CHECK_SECONDS.
    key_max_age_seconds: float | None = DEFAULT_KEY_MAX_AGE_SECONDS


@dataclass(frozen=True, slots=True)
class UpSettings:
    """What `shoal up`'s flags set on a joined host, beyond its identity (server and name are
    node.json's, fixed at the join). `shoal up` is declarative over these: a flag given sets
    its value, a flag omitted keeps the value the agent last started with (settings.json), and
    only a difference restarts the agent. Each field's flag is its name with dashes."""

    advertise_addr: IPv4Address | None = None
    # The subnet routes the server was last sent (() none); a change is registered again.
    advertise_routes: tuple[IPv4Network, ...] = ()
    listen_port: int = DEFAULT_LISTEN_PORT
    docker_host: str | None = None
    metrics_listen: tuple[str, int] | None = None
    key_max_age: float | None = DEFAULT_KEY_MAX_AGE_SECONDS  # seconds; None: never

    @classmethod
    def of(cls, config: AgentConfig, before: UpSettings | None) -> UpSettings:
        """The settings an agent with `config` runs with (routes not sent: `before`'s)."""
        routes = config.advertise_routes
        if routes is None:
            routes = before.advertise_routes if before is not None else ()
        return cls(
            advertise_addr=config.advertise_addr,
            advertise_routes=routes,
            listen_port=config.listen_port,
            docker_host=config.docker_host,
            metrics_listen=config.metrics_listen,
            key_max_age=config.key_max_age_seconds,
        )

    def changes(self, before: UpSettings) -> tuple[str, ...]:
        """One line per setting that differs from `before`, as `--flag OLD => NEW`."""
        return tuple(
            f"--{f.name.replace('_', '-')} {_show(f.name, getattr(before, f.name))} => "
            f"{_show(f.name, getattr(self, f.name))}"
            for f in fields(self)
            if getattr(before, f.name) != getattr(self, f.name)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "advertise_addr": None if self.advertise_addr is None else str(self.advertise_addr),
            "advertise_routes": [str(r) for r in self.advertise_routes],
            "listen_port": self.listen_port,
            "docker_host": self.docker_host,
            "metrics_listen": None if self.metrics_listen is None else list(self.metrics_listen),
            "key_max_age": self.key_max_age,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UpSettings:
        """Raises ValueError, KeyError or TypeError for a file of another shape."""
        addr, metrics, max_age = data["advertise_addr"], data["metrics_listen"], data["key_max_age"]
        port = data["listen_port"]
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"listen_port {port!r}")
        docker_host = data["docker_host"]
        if docker_host is not None and not isinstance(docker_host, str):
            raise TypeError(f"docker_host {docker_host!r}")
        return cls(
            advertise_addr=None if addr is None else IPv4Address(addr),
            advertise_routes=tuple(IPv4Network(r) for r in data["advertise_routes"]),
            listen_port=port,
            docker_host=docker_host,
            metrics_listen=None if metrics is None else (str(metrics[0]), int(metrics[1])),
            key_max_age=None if max_age is None else float(max_age),
        )


def _show(name: str, value: object) -> str:
    """Setting `name`'s value as the operator types it."""
    if value is None:
        return "never" if name == "key_max_age" else "none"
    if isinstance(value, tuple) and all(isinstance(v, IPv4Network) for v in value):
        return ",".join(map(str, value)) or "none"
    if isinstance(value, tuple):  # --metrics-listen
        return ":".join(map(str, value))
    if isinstance(value, float):  # --key-max-age
        return f"{value / 86400:g}d" if value % 86400 == 0 else f"{value:g}s"
    return str(value)


def default_node_name() -> str:
    """The node name `shoal up` uses without --name: the host name's first label, lowercase."""
    return os.uname().nodename.split(".")[0].lower()


class MetricsListenRefused(AgentError):
    """--metrics-listen names an address the agent will not expose its counters on."""


MESH = "mesh"  # --metrics-listen mesh[:PORT]: this node's mesh IP, whatever it is


def parse_metrics_listen(text: str) -> tuple[str, int]:
    """ADDR[:PORT] (port 9469 by default), ADDR a loopback address or `mesh` (this node's mesh
    IP, known once joined). Raises MetricsListenRefused for anything else."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = text, str(DEFAULT_METRICS_PORT)
    usage = (
        f"expected ADDR[:PORT] with ADDR 127.0.0.1 or {MESH}, e.g. 127.0.0.1:{DEFAULT_METRICS_PORT}"
    )
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise MetricsListenRefused(f"--metrics-listen {text!r}: {usage}")
    if host == MESH:
        return MESH, int(port_text)
    try:
        address = IPv4Address(host)
    except ValueError as exc:
        raise MetricsListenRefused(f"--metrics-listen {text!r}: {usage}") from exc
    if not address.is_loopback:
        raise MetricsListenRefused(
            f"--metrics-listen {address}: only loopback or `{MESH}` (this node's mesh IP); "
            "the underlay must not see who talks to whom"
        )
    return str(address), int(port_text)
