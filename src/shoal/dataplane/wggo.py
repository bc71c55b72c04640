"""The userspace backend: wireguard-go, configured over its UAPI control socket.

wireguard-go runs detached from the agent (own session, output to a log file), so an agent
restart or crash leaves the interface and every session untouched; the next agent finds the
interface healthy and only reconciles. Deleting the interface makes wireguard-go exit.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from shoal import hostnet
from shoal.dataplane.base import (
    PeerStats,
    converge_link,
    diff_device,
    diff_peers,
    record_endpoints,
    require_interface,
    sorted_stats,
)
from shoal.dataplane.errors import UapiError, WireGuardGoFailed, hostnet_errors
from shoal.dataplane.uapi import (
    GET,
    Device,
    UapiParseError,
    parse_get,
    render_device,
    render_peers,
    reply_errno,
)
from shoal.model.keys import PublicKey
from shoal.plan.hostconfig import InterfaceConfig, PeerConfig

log = logging.getLogger(__name__)

SOCKET_DIR = Path("/var/run/wireguard")
START_TIMEOUT = 5.0  # seconds for wireguard-go to create its interface and socket
EXIT_TIMEOUT = 3.0  # seconds for wireguard-go to exit once its interface is deleted
POLL = 0.02


class WireGuardGo:
    name = "wireguard-go"

    def __init__(
        self, log_dir: Path, binary: str = "wireguard-go", socket_dir: Path = SOCKET_DIR
    ) -> None:
        self.log_dir = log_dir
        self.binary = binary
        self.socket_dir = socket_dir
        self._ifname: str | None = None
        self._applied_endpoints: dict[PublicKey, str | None] = {}
        self._started: list[subprocess.Popen[bytes]] = []  # reaped when they exit

    def _socket(self, ifname: str) -> Path:
        return self.socket_dir / f"{ifname}.sock"

    def _log_path(self, ifname: str) -> Path:
        return self.log_dir / f"wireguard-go-{ifname}.log"

    async def _request(self, ifname: str, request: str, what: str) -> str:
        try:
            reader, writer = await asyncio.open_unix_connection(str(self._socket(ifname)))
        except OSError as exc:
            raise WireGuardGoFailed(
                f"wireguard-go for {ifname} does not answer on {self._socket(ifname)}: {exc}"
            ) from exc
        try:
            writer.write(request.encode())
            await writer.drain()
            reply = (await reader.readuntil(b"\n\n")).decode()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise WireGuardGoFailed(f"wireguard-go for {ifname} hung up: {exc}") from exc
        finally:
            writer.close()
        try:
            errno = reply_errno(reply)
        except UapiParseError as exc:
            raise WireGuardGoFailed(f"wireguard-go for {ifname}: bad reply: {exc}") from exc
        if errno != 0:
            raise UapiError(ifname, errno, what)
        return reply

    async def _get(self, ifname: str) -> Device:
        reply = await self._request(ifname, GET, "get")
        try:
            return parse_get(reply)
        except UapiParseError as exc:
            raise WireGuardGoFailed(f"wireguard-go for {ifname}: bad reply: {exc}") from exc

    async def _link_exists(self, ifname: str) -> bool:
        with hostnet_errors():
            return await hostnet.link_exists(ifname)

    async def _healthy(self, ifname: str) -> bool:
        if not await self._link_exists(ifname):
            return False
        try:
            await self._get(ifname)
        except WireGuardGoFailed:
            return False
        return True

    def _spawn(self, ifname: str) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            with self._log_path(ifname).open("ab") as out:
                # A session of its own: the agent's signals and exit never reach it.
                return subprocess.Popen(
                    [self.binary, "-f", ifname],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                )
        except OSError as exc:
            raise WireGuardGoFailed(f"cannot start {self.binary}: {exc}") from exc

    def _log_tail(self, ifname: str) -> str:
        try:
            lines = self._log_path(ifname).read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return " | ".join(line.strip() for line in lines[-3:] if line.strip())

    async def _start(self, ifname: str) -> None:
        self._socket(ifname).unlink(missing_ok=True)  # stale, its process is gone
        proc = self._spawn(ifname)
        self._started.append(proc)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise WireGuardGoFailed(
                    f"wireguard-go for {ifname} exited with {proc.returncode}: "
                    f"{self._log_tail(ifname)} (log {self._log_path(ifname)})"
                )
            # The socket file appears a moment before wireguard-go accepts on it: ready means
            # it answered a `get`, not that the file exists.
            if self._socket(ifname).exists() and await self._healthy(ifname):
                log.info("%s: created (wireguard-go pid %d)", ifname, proc.pid)
                return
            await asyncio.sleep(POLL)
        raise WireGuardGoFailed(
            f"wireguard-go for {ifname} did not come up in {START_TIMEOUT:.0f} s "
            f"(log {self._log_path(ifname)})"
        )

    async def ensure_interface(self, cfg: InterfaceConfig) -> bool:
        """Create the interface when missing, then converge key, port, MTU, address and up."""
        changed = False
        if not await self._healthy(cfg.name):
            if await self._link_exists(cfg.name):
                # A link without a live wireguard-go behind it cannot carry traffic anyway.
                log.warning("%s: exists but wireguard-go does not answer: recreating", cfg.name)
                with hostnet_errors():
                    await hostnet.delete_link(cfg.name)
            await self._start(cfg.name)
            changed = True
        self._ifname = cfg.name
        device = await self._get(cfg.name)
        settings = diff_device(cfg, device.private_key, device.listen_port)
        if settings:
            request = render_device(settings.private_key, settings.listen_port)
            await self._request(cfg.name, request, "the device settings")
            for line in settings.lines:
                log.info("%s", line)
            changed = True
        changed |= await converge_link(cfg)
        return changed

    async def set_peers(self, peers: Sequence[PeerConfig]) -> bool:
        """Add, update and remove only the peers that differ from the live list."""
        ifname = require_interface(self._ifname)
        device = await self._get(ifname)
        diff = diff_peers(ifname, device.peers, peers, self._applied_endpoints)
        if not diff:
            return False
        await self._request(ifname, render_peers(diff), "the peer changes")
        for line in diff.lines:
            log.info("%s", line)
        record_endpoints(self._applied_endpoints, diff)
        return True

    async def stats(self) -> list[PeerStats]:
        ifname = require_interface(self._ifname)
        device = await self._get(ifname)
        return sorted_stats(device.peers)

    async def teardown(self, name: str) -> bool:
        """Delete the interface; wireguard-go notices and exits, removing its socket."""
        with hostnet_errors():
            removed = await hostnet.delete_link(name)  # logs "<name>: deleted"
        deadline = time.monotonic() + EXIT_TIMEOUT
        while self._socket(name).exists() and time.monotonic() < deadline:
            await asyncio.sleep(POLL)
        if self._socket(name).exists():
            log.warning("%s: wireguard-go left its socket behind; removing it", name)
            self._socket(name).unlink(missing_ok=True)
            removed = True
        self._started = [proc for proc in self._started if proc.poll() is None]
        if self._ifname == name:
            self._ifname = None
            self._applied_endpoints.clear()
        return removed
