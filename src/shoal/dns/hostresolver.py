"""The host's own resolver learns `.shoal` (a host without Docker: its processes, not
containers, are the mesh's workload there).

Two ways, chosen by what the host runs:
- systemd-resolved (its stub at /run/systemd/resolve): split DNS on the mesh interface,
  `resolvectl dns shoal0 MESH_IP` and `resolvectl domain shoal0 ~shoal`. Only `.shoal` names
  go to the agent; everything else keeps the host's resolvers. Undone with `resolvectl revert`
  by the process that set it, and in any case by the interface going away (`shoal down`).
- otherwise /etc/resolv.conf: a `nameserver MESH_IP` line first, marked `# added by shoal`.
  Every name then goes to the agent, which answers `.shoal` and forwards the rest to the
  file's other nameservers (read before the line is added); if the agent stops, the C
  library falls back to the next nameserver after its timeout (5 s). The file is rewritten in
  place (a bind mount or a symlink target stays what it is) and the marked line is removed
  on teardown. A resolv.conf managed by another tool (resolvconf, NetworkManager) may drop
  the line on its next update: the agent's next apply puts it back.
"""

from __future__ import annotations

import asyncio
import shutil
from ipaddress import IPv4Address
from pathlib import Path

from shoal.dns.errors import HostResolverFailed

RESOLV_CONF = Path("/etc/resolv.conf")
RESOLVED_DIR = Path("/run/systemd/resolve")
MARK = "# added by shoal"
ZONE = "shoal"


def resolved_present(run_dir: Path = RESOLVED_DIR) -> bool:
    """systemd-resolved runs here (its runtime dir exists and resolvectl is installed)."""
    return run_dir.is_dir() and shutil.which("resolvectl") is not None


def with_nameserver(text: str, address: IPv4Address) -> str:
    """resolv.conf `text` with `nameserver address` (marked) first and no other marked line."""
    kept = without_ours(text)
    return f"nameserver {address} {MARK}\n{kept}"


def without_ours(text: str) -> str:
    """resolv.conf `text` without the lines shoal added."""
    return "".join(line for line in text.splitlines(keepends=True) if MARK not in line)


def _rewrite(path: Path, change: str) -> bool:
    """Write `change` over `path` in place; False when it already says that."""
    try:
        with path.open("r+") as f:
            if f.read() == change:
                return False
            f.seek(0)
            f.write(change)
            f.truncate()
    except OSError as exc:
        raise HostResolverFailed(f"cannot rewrite {path}: {exc.strerror or exc}") from exc
    return True


async def _resolvectl(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "resolvectl", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _out, err = await proc.communicate()
    if proc.returncode != 0:
        detail = err.decode(errors="replace").strip().splitlines()
        raise HostResolverFailed(
            f"resolvectl {' '.join(args)}: {detail[0] if detail else f'exit {proc.returncode}'}"
        )


class HostResolver:
    """Points this host's resolver at the mesh DNS responder, and takes it back."""

    def __init__(
        self, interface: str, path: Path = RESOLV_CONF, resolved_dir: Path = RESOLVED_DIR
    ) -> None:
        self.interface = interface
        self.path = path
        self.resolved_dir = resolved_dir
        self._link_set = False  # resolvectl settings made by this process

    async def point_at(self, address: IPv4Address) -> bool:
        """Send `.shoal` lookups to `address`; whether anything changed (resolvectl is
        always run again: its link settings are cheap and vanish with the link)."""
        if resolved_present(self.resolved_dir):
            await _resolvectl("dns", self.interface, str(address))
            await _resolvectl("domain", self.interface, f"~{ZONE}")
            self._link_set = True
            return True
        try:
            text = self.path.read_text()
        except OSError as exc:
            raise HostResolverFailed(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        return _rewrite(self.path, with_nameserver(text, address))

    async def release(self) -> bool:
        """Undo `point_at`; whether there was anything to undo."""
        if resolved_present(self.resolved_dir):
            if not self._link_set:
                return False  # not ours, or gone with the interface
            await _resolvectl("revert", self.interface)
            self._link_set = False
            return True
        try:
            text = self.path.read_text()
        except OSError:
            return False
        return MARK in text and _rewrite(self.path, without_ours(text))
