"""The agent's configuration: one frozen object, from flags (there is no config file yet)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from shoal.agent.errors import AgentError

DEFAULT_METRICS_PORT = 9469
DEFAULT_KEY_MAX_AGE_SECONDS = 90 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class AgentConfig:
    state_dir: Path
    server_url: str | None = None
    token: str | None = None
    name: str | None = None
    advertise_addr: IPv4Address | None = None
    listen_port: int = 51820
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
