"""The agent's configuration: one frozen object, from flags (there is no config file yet)."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path


@dataclass(frozen=True, slots=True)
class AgentConfig:
    state_dir: Path
    server_url: str | None = None
    token: str | None = None
    name: str | None = None
    advertise_addr: IPv4Address | None = None
    listen_port: int = 51820
    docker_host: str | None = None
    # How long one netmap long-poll may stay open; the server caps it at 60 s.
    poll_wait_seconds: float = 25.0
    # Converge from drift (someone deleted a route) even when no netmap arrives.
    resync_seconds: float = 30.0
