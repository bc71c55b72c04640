"""What the agent keeps in its state dir, and nothing else writes there.

private.key    WireGuard private key, 0600; never leaves the host
private.key.next  the next key during a key rotation, 0600: written before the server hears
               of it, promoted to private.key (atomic rename) at the switch
node.json      server URL, pinned CA, node id and name (the key in private.key is the credential)
join.pending   present from a join's registration until the host was first configured: a
               failed first configuration is undone on the host but keeps node.json and
               private.key, so the next `shoal up` resumes the registered node (a single-use
               token is spent by then) instead of joining again
settings.json  the settings of `shoal up` the agent last started with (see `UpSettings`): a
               later `shoal up` compares its flags with them, and omitted flags keep them
netmap.json    the last netmap received: the mesh keeps working from it with the server away
agent.sock     the local API (`shoal status`, `shoal down`)
agent.lock     flock()ed by the one agent running on this state dir, for its whole life
agent.log      the daemon's log; wireguard-go.log beside it

A file that does not parse (truncated by a crash, corrupted) never stops the agent: it is set
aside as `<name>.corrupt-<UTC time>` for a post-mortem, and rebuilt (the netmap from the server;
the identity by joining again). A failed write raises `StateWriteFailed`; the file on disk is
then the previous, complete one (writes are atomic).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from shoal.agent.config import UpSettings
from shoal.agent.errors import AgentAlreadyRunning, StateWriteFailed
from shoal.model.keys import PrivateKey
from shoal.model.netmap import NetworkMap

log = logging.getLogger(__name__)

# What a truncated or corrupted file raises while being parsed (ValidationError is a
# ValueError, and so is json's JSONDecodeError; a wrong shape gives KeyError or TypeError).
_UNREADABLE = (ValueError, KeyError, TypeError, ValidationError, UnicodeDecodeError)


def _write_private(path: Path, text: str) -> None:
    """Write atomically with mode 0600 from the first byte (no window where others can read).

    Raises:
        StateWriteFailed: the disk is full, read-only, ...; `path` is left as it was.
    """
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StateWriteFailed(f"cannot write {path}: {exc.strerror or exc}") from exc


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
        # One line per file set aside since start, for the agent's health warning.
        self.set_aside: list[str] = []
        self._lock_fd: int | None = None

    def _set_aside(self, name: str, error: BaseException) -> None:
        path = self.path / name
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        kept = path.with_name(f"{name}.corrupt-{stamp}")
        path.replace(kept)
        note = f"{name} was unreadable ({_describe(error)}); set aside as {kept.name}"
        log.warning("%s", note)
        self.set_aside.append(note)

    @property
    def socket(self) -> Path:
        return self.path / "agent.sock"

    @property
    def catalog_socket(self) -> Path:
        """The read-only catalog for tools (see `localapi.serve_catalog`)."""
        return self.path / "catalog.sock"

    @property
    def log(self) -> Path:
        return self.path / "agent.log"

    @property
    def pidfile(self) -> Path:
        return self.path / "agent.pid"

    def ensure(self) -> None:
        """The state dir at mode 0700 and every file in it at 0600, also when they existed
        before with looser modes (a pre-made dir, an older version): they hold the node's
        key, its identity and the mesh's map."""
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.path, 0o700)
        for entry in self.path.iterdir():
            if entry.is_file() and not entry.is_symlink():
                os.chmod(entry, 0o600)

    def private_key(self) -> PrivateKey:
        """This node's key, made on first use."""
        path = self.path / "private.key"
        if path.exists():
            try:
                return PrivateKey.parse(path.read_text())
            except _UNREADABLE as exc:
                self._set_aside("private.key", exc)
                # The identity and netmap belong to the lost key: this node must join again.
                for name in ("node.json", "netmap.json"):
                    if (self.path / name).exists():
                        self._set_aside(name, ValueError("its private key was unreadable"))
        key = PrivateKey.generate()
        _write_private(path, key.to_base64() + "\n")
        return key

    def key_age(self, now: datetime) -> float:
        """Seconds since private.key was written (0 when there is none)."""
        try:
            written = (self.path / "private.key").stat().st_mtime
        except FileNotFoundError:
            return 0.0
        return max(0.0, now.timestamp() - written)

    def next_private_key(self) -> PrivateKey | None:
        """The next key of a key rotation in progress; None when there is none (or it is
        unreadable: then it is set aside, and the rotation cannot complete on this host)."""
        path = self.path / "private.key.next"
        if not path.exists():
            return None
        try:
            return PrivateKey.parse(path.read_text())
        except _UNREADABLE as exc:
            self._set_aside("private.key.next", exc)
            return None

    def save_next_private_key(self, key: PrivateKey) -> None:
        """Keep `key` as the next key (before the server hears of it: it must survive a crash)."""
        _write_private(self.path / "private.key.next", key.to_base64() + "\n")

    def drop_next_private_key(self) -> None:
        (self.path / "private.key.next").unlink(missing_ok=True)

    def promote_next_private_key(self) -> None:
        """private.key.next becomes private.key, atomically (a crash leaves one or the other).

        Raises:
            StateWriteFailed: the rename failed; both files are as they were.
        """
        try:
            os.replace(self.path / "private.key.next", self.path / "private.key")
        except OSError as exc:
            raise StateWriteFailed(
                f"cannot promote private.key.next: {exc.strerror or exc}"
            ) from exc

    def identity(self) -> NodeIdentity | None:
        path = self.path / "node.json"
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
            return NodeIdentity(
                server_url=data["server_url"],
                ca_pem=data["ca_pem"],
                node_id=data["node_id"],
                name=data["name"],
            )
        except _UNREADABLE as exc:
            self._set_aside("node.json", exc)
            return None

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
        try:
            data = json.loads(path.read_text())
            return CachedNetmap(
                netmap=NetworkMap.model_validate(data["netmap"]),
                received_at=datetime.fromisoformat(data["received_at"]),
            )
        except _UNREADABLE as exc:
            self._set_aside("netmap.json", exc)
            return None

    def save_netmap(self, cached: CachedNetmap) -> None:
        """Write `cached` for the next start (StateWriteFailed: the old file stays)."""
        body = {
            "received_at": cached.received_at.isoformat(),
            "netmap": cached.netmap.model_dump(mode="json"),
        }
        _write_private(self.path / "netmap.json", json.dumps(body) + "\n")

    @property
    def _join_pending(self) -> Path:
        return self.path / "join.pending"

    def mark_join_pending(self) -> None:
        """Record that the node is registered but the host not yet configured (before
        node.json is written: a crash in between leaves a marker and no identity, which a
        fresh join overwrites)."""
        _write_private(self._join_pending, "registered; first configuration not done\n")

    def join_pending(self) -> bool:
        """Whether this node's host was never configured since its join (the first
        configuration failed, or has not run yet)."""
        return self._join_pending.exists()

    def join_done(self) -> None:
        """The host was configured once: later failures are a running node's, not a join's."""
        self._join_pending.unlink(missing_ok=True)

    def settings(self) -> UpSettings | None:
        """The settings the agent last started with; None before the first start (or from a
        version that kept none; an unreadable file is set aside)."""
        path = self.path / "settings.json"
        if not path.exists():
            return None
        try:
            return UpSettings.from_json(json.loads(path.read_text()))
        except _UNREADABLE as exc:
            self._set_aside("settings.json", exc)
            return None

    def save_settings(self, settings: UpSettings) -> None:
        """Keep `settings` for the next `shoal up` (StateWriteFailed: the old file stays)."""
        _write_private(self.path / "settings.json", json.dumps(settings.to_json(), indent=2) + "\n")

    def hold_lock(self) -> None:
        """Make this process the one agent of this state dir until it ends (the kernel drops
        the lock however it ends, SIGKILL included); AgentAlreadyRunning if another holds it.
        A second agent on one state dir fought the first over shoal0 and port 53, and on its
        way out deleted the first one's socket and DNS redirect."""
        self.ensure()
        # CLOEXEC: wireguard-go, started by the agent, must not keep the lock after it.
        fd = os.open(self.path / "agent.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise AgentAlreadyRunning(
                f"an agent already runs with state dir {self.path}: `shoal status --state-dir "
                f"{self.path}`; `shoal down --state-dir {self.path}` first to start it anew"
            ) from exc
        self._lock_fd = fd

    def agent_running(self) -> bool:
        """Whether an agent holds this state dir's lock (see `hold_lock`); asked without
        taking it for longer than the question."""
        try:
            fd = os.open(self.path / "agent.lock", os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # drops the lock, if this took it
        return False

    def holds_node(self) -> bool:
        """Whether a node was joined with this state dir: its identity or netmap is here (or
        was set aside as corrupt). Only then is the shoal configuration on this host its own."""
        return any(self.path.glob("node.json*")) or any(self.path.glob("netmap.json*"))

    def forget(self) -> None:
        """Drop the mesh identity (after `shoal down --leave`); the next `up` joins afresh."""
        for name in (
            "node.json",
            "netmap.json",
            "private.key",
            "private.key.next",
            "join.pending",
            "settings.json",
        ):
            (self.path / name).unlink(missing_ok=True)


def _describe(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text[:120]
