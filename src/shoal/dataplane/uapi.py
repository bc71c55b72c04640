"""The cross-platform userspace interface (UAPI) text protocol of wireguard-go, as pure code.

A request is `get=1` or `set=1` followed by `key=value` lines and an empty line; the reply is
`key=value` lines ending with `errno=N` and an empty line. Keys travel as hex.
See https://www.wireguard.com/xplatform/.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from ipaddress import IPv4Network, ip_network

from shoal.dataplane.base import LivePeer, PeerDiff
from shoal.model.keys import PrivateKey, PublicKey

GET = "get=1\n\n"


class UapiParseError(ValueError):
    """A reply that does not follow the protocol."""


@dataclass(frozen=True, slots=True)
class Device:
    private_key: PrivateKey | None
    listen_port: int
    peers: dict[PublicKey, LivePeer] = field(default_factory=dict)


def reply_errno(reply: str) -> int:
    """The `errno=N` that ends every reply (0: success)."""
    for line in reversed(reply.splitlines()):
        if line.startswith("errno="):
            return int(line.removeprefix("errno="))
    raise UapiParseError("reply without errno")


@dataclass(slots=True)
class _PeerReply:
    key: PublicKey
    endpoint: str | None = None
    allowed_ips: list[IPv4Network] = field(default_factory=list)
    keepalive: int = 0
    handshake_sec: int = 0
    handshake_nsec: int = 0
    rx_bytes: int = 0
    tx_bytes: int = 0

    def set(self, key: str, value: str) -> None:
        if key == "endpoint":
            self.endpoint = value
        elif key == "allowed_ip":
            net = ip_network(value)
            if isinstance(net, IPv4Network):
                self.allowed_ips.append(net)
        elif key == "persistent_keepalive_interval":
            self.keepalive = int(value)
        elif key == "last_handshake_time_sec":
            self.handshake_sec = int(value)
        elif key == "last_handshake_time_nsec":
            self.handshake_nsec = int(value)
        elif key == "rx_bytes":
            self.rx_bytes = int(value)
        elif key == "tx_bytes":
            self.tx_bytes = int(value)

    def live(self) -> LivePeer:
        handshake = None
        if self.handshake_sec or self.handshake_nsec:
            handshake = datetime.fromtimestamp(
                self.handshake_sec + self.handshake_nsec / 1e9, tz=UTC
            )
        return LivePeer(
            public_key=self.key,
            endpoint=self.endpoint,
            allowed_ips=tuple(
                sorted(self.allowed_ips, key=lambda n: (int(n.network_address), n.prefixlen))
            ),
            keepalive=self.keepalive,
            last_handshake=handshake,
            rx_bytes=self.rx_bytes,
            tx_bytes=self.tx_bytes,
        )


def parse_get(reply: str) -> Device:
    """The device and its peers from a `get=1` reply (IPv6 allowed IPs are ignored)."""
    private_key: PrivateKey | None = None
    listen_port = 0
    peers: list[_PeerReply] = []
    try:
        for line in reply.splitlines():
            if not line:
                continue
            key, sep, value = line.partition("=")
            if not sep:
                raise UapiParseError(f"not key=value: {line!r}")
            if key == "public_key":
                peers.append(_PeerReply(PublicKey(bytes.fromhex(value))))
            elif peers:
                peers[-1].set(key, value)
            elif key == "private_key":
                private_key = PrivateKey(bytes.fromhex(value))
            elif key == "listen_port":
                listen_port = int(value)
    except UapiParseError:
        raise
    except ValueError as exc:
        raise UapiParseError(str(exc)) from exc
    return Device(private_key, listen_port, {p.key: p.live() for p in peers})


def render_device(private_key: PrivateKey | None, listen_port: int | None) -> str:
    """A `set=1` request for the device's own settings (None: leave as is)."""
    lines = ["set=1"]
    if private_key is not None:
        lines.append(f"private_key={private_key.hex()}")
    if listen_port is not None:
        lines.append(f"listen_port={listen_port}")
    return "\n".join(lines) + "\n\n"


def render_peers(diff: PeerDiff) -> str:
    """A `set=1` request applying `diff`: updates and additions, then removals (see
    `PeerDiff` for why in that order).

    Peers not named are left alone (no `replace_peers`), so their sessions live on.
    """
    lines = ["set=1"]
    for change in diff.change:
        lines.append(f"public_key={change.public_key.hex()}")
        if change.endpoint is not None:
            lines.append(f"endpoint={change.endpoint}")
        if change.keepalive is not None:
            lines.append(f"persistent_keepalive_interval={change.keepalive}")
        if change.allowed_ips is not None:
            lines.append("replace_allowed_ips=true")
            lines += [f"allowed_ip={ip}" for ip in change.allowed_ips]
    for key in diff.remove:
        lines += [f"public_key={key.hex()}", "remove=true"]
    return "\n".join(lines) + "\n\n"
