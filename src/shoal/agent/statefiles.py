"""What the agent keeps in its state dir, and nothing else writes there.

private.key    WireGuard private key, 0600; never leaves the host
node.json      server URL, pinned CA, node id and name (the key in private.key is the credential)
netmap.json    the last netmap received: the mesh keeps working from it with the server away
agent.sock     the local API (`shoal status`, `shoal down`)
agent.log      the daemon's log; wireguard-go.log beside it
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from shoal.model.keys import PrivateKey
from shoal.model.netmap import NetworkMap


def _write_private(path: Path, text: str) -> None:
    """Write atomically with mode 0600 from the first byte (no window where others can read)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    server_url: str
    ca_pem: str
    node_id: str
    name: str


@dataclass(frozen=True, slots=True)
class CachedNetmap:
    netmap: NetworkMap
    received_at: datetime


class StateDir:
    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def socket(self) -> Path:
        return self.path / "agent.sock"

    @property
    def log(self) -> Path:
        return self.path / "agent.log"

    @property
    def pidfile(self) -> Path:
        return self.path / "agent.pid"

    def ensure(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)

    def private_key(self) -> PrivateKey:
        """This node's key, made on first use."""
        path = self.path / "private.key"
        if path.exists():
            return PrivateKey.parse(path.read_text())
        key = PrivateKey.generate()
        _write_private(path, key.to_base64() + "\n")
        return key

    def identity(self) -> NodeIdentity | None:
        path = self.path / "node.json"
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        return NodeIdentity(
            server_url=data["server_url"],
            ca_pem=data["ca_pem"],
            node_id=data["node_id"],
            name=data["name"],
        )

    def save_identity(self, identity: NodeIdentity) -> None:
        fields = {
            "server_url": identity.server_url,
            "ca_pem": identity.ca_pem,
            "node_id": identity.node_id,
            "name": identity.name,
        }
        _write_private(self.path / "node.json", json.dumps(fields, indent=2) + "\n")

    def cached_netmap(self) -> CachedNetmap | None:
        path = self.path / "netmap.json"
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        return CachedNetmap(
            netmap=NetworkMap.model_validate(data["netmap"]),
            received_at=datetime.fromisoformat(data["received_at"]),
        )

    def save_netmap(self, netmap: NetworkMap) -> CachedNetmap:
        cached = CachedNetmap(netmap=netmap, received_at=datetime.now(UTC))
        body = {
            "received_at": cached.received_at.isoformat(),
            "netmap": netmap.model_dump(mode="json"),
        }
        _write_private(self.path / "netmap.json", json.dumps(body) + "\n")
        return cached

    def forget(self) -> None:
        """Drop the mesh identity (after `shoal down --leave`); the next `up` joins afresh."""
        for name in ("node.json", "netmap.json", "private.key"):
            (self.path / name).unlink(missing_ok=True)
