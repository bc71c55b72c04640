"""The server's configuration: one frozen `ServerConfig`, validated from the command's flags
by `load_config` (flags left None fall back to what the mesh was created with, else defaults;
that part needs the store and is resolved at start in `shoal.control.app`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path

from shoal.control.errors import ServerConfigError
from shoal.control.limits import RateLimits
from shoal.control.listener import ConnectionLimits
from shoal.control.liveness import DEFAULT_HEARTBEAT_TIMEOUT
from shoal.control.registry import DEFAULT_QUARANTINE
from shoal.control.service import DEFAULT_EPHEMERAL_TIMEOUT, DEFAULT_ROTATION_LEAD
from shoal.model.api import RelayServer

# WireGuard over IPv6 costs 80 bytes per packet: the smallest IPv6 MTU is 1280, the largest
# IPv4 packet 65535.
MIN_MTU, MAX_MTU = 1280, 65455


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The server's whole configuration; pools left None come from the store, else defaults."""

    listen_host: str
    listen_port: int
    data_dir: Path
    store_url: str | None = None
    mesh_pool: IPv4Network | None = None
    container_pool: IPv4Network | None = None
    subnet_prefix: int | None = None
    mtu: int | None = None  # None: what this mesh was created with, else DEFAULT_MTU
    heartbeat_timeout: timedelta = DEFAULT_HEARTBEAT_TIMEOUT
    # A removed node's addresses go to no other node before this (issue: peers would route
    # the old node's traffic to a newcomer).
    address_quarantine: timedelta = DEFAULT_QUARANTINE
    ephemeral_timeout: timedelta = DEFAULT_EPHEMERAL_TIMEOUT
    connections: ConnectionLimits = field(default_factory=ConnectionLimits)
    rates: RateLimits = field(default_factory=RateLimits)
    # How long before a key rotation's switch the server announces it to every peer.
    rotation_lead: timedelta = DEFAULT_ROTATION_LEAD
    # The TCP relay's port on listen_host (control.tcprelay); None: no TCP relay, 0: any port.
    relay_port: int | None = None
    # Standalone relays (`shoal relay`) announced to agents after the server's own.
    extra_relays: tuple[RelayServer, ...] = ()


def load_config(
    *,
    listen: str,
    data_dir: str | Path,
    store: str | None = None,
    mesh_pool: str | None = None,
    container_pool: str | None = None,
    subnet_prefix: int | None = None,
    heartbeat_timeout: float | None = None,
    mtu: int | None = None,
    address_quarantine: timedelta | None = None,
    ephemeral_timeout: timedelta | None = None,
    no_limits_from: str | None = None,
    relay_port: str | None = None,
    relay_at: Sequence[str] = (),
) -> ServerConfig:
    """Flags (None = not given) → a validated `ServerConfig`; `ServerConfigError` says why not."""
    host, sep, port_text = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ServerConfigError(f"--listen {listen!r}: expected ADDR:PORT, e.g. 0.0.0.0:8443")

    def network(flag: str, text: str | None) -> IPv4Network | None:
        if text is None:
            return None
        try:
            return IPv4Network(text, strict=True)
        except ValueError as exc:
            raise ServerConfigError(f"--{flag} {text!r}: {exc}") from exc

    if heartbeat_timeout is not None and not 1.0 <= heartbeat_timeout <= 3600.0:
        raise ServerConfigError(
            f"--heartbeat-timeout {heartbeat_timeout:g}: expected 1 to 3600 seconds"
        )
    if mtu is not None and not MIN_MTU <= mtu <= MAX_MTU:
        raise ServerConfigError(
            f"--mtu {mtu}: expected {MIN_MTU} to {MAX_MTU} (the underlay's MTU minus 80)"
        )
    exempt: list[IPv4Network | IPv6Network] = []
    for text in (no_limits_from or "").split(","):
        if text.strip():
            try:
                exempt.append(ip_network(text.strip(), strict=True))
            except ValueError as exc:
                raise ServerConfigError(f"--no-limits-from {text.strip()!r}: {exc}") from exc
    if (
        relay_port is not None
        and relay_port != "off"
        and not (relay_port.isdigit() and 0 <= int(relay_port) <= 65535)
    ):
        raise ServerConfigError(f"--relay-port {relay_port!r}: expected a port or 'off'")
    return ServerConfig(
        relay_port=None if relay_port in (None, "off") else int(relay_port),
        extra_relays=tuple(parse_relay_spec(text) for text in relay_at),
        connections=ConnectionLimits(exempt=tuple(exempt)),
        mtu=mtu,
        listen_host=host or "0.0.0.0",
        listen_port=int(port_text),
        data_dir=Path(data_dir),
        store_url=store,
        mesh_pool=network("mesh-pool", mesh_pool),
        container_pool=network("container-pool", container_pool),
        subnet_prefix=subnet_prefix,
        heartbeat_timeout=DEFAULT_HEARTBEAT_TIMEOUT
        if heartbeat_timeout is None
        else timedelta(seconds=heartbeat_timeout),
        address_quarantine=DEFAULT_QUARANTINE if address_quarantine is None else address_quarantine,
        ephemeral_timeout=DEFAULT_EPHEMERAL_TIMEOUT
        if ephemeral_timeout is None
        else ephemeral_timeout,
    )


def parse_relay_spec(text: str) -> RelayServer:
    """`HOST:PORT,KEY,SHA256` (what `shoal relay` prints) → RelayServer; ServerConfigError
    naming the bad part otherwise."""
    parts = text.strip().split(",")
    if len(parts) != 3:
        raise ServerConfigError(f"--relay-at {text!r}: expected HOST:PORT,KEY,SHA256")
    address, key, fingerprint = parts
    host, _, port = address.rpartition(":")
    try:
        return RelayServer.model_validate(
            {
                "host": host,
                "port": int(port),
                "public_key": key,
                "cert_sha256": fingerprint.lower(),
            }
        )
    except ValueError as exc:
        raise ServerConfigError(
            f"--relay-at {text!r}: expected IPv4:PORT,KEY,SHA256 as `shoal relay` prints it"
        ) from exc
