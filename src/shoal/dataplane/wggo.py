"""The userspace backend: wireguard-go, configured over its UAPI control socket.

wireguard-go runs detached from the agent (own session, output to a log file), so an agent
restart or crash leaves the interface and every session untouched; the next agent finds the
interface healthy and only reconciles. Deleting the interface makes wireguard-go exit.
Supplies only the link and the device's read and write; the cycle is `base.WireGuardDataPlane`'s.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from pathlib import Path

from shoal import hostnet
from shoal.dataplane.base import DeviceDiff, LiveDevice, PeerDiff, WireGuardDataPlane
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
from shoal.plan.hostconfig import INTERFACE

log = logging.getLogger(__name__)

SOCKET_DIR = Path("/var/run/wireguard")
START_TIMEOUT = 5.0  # seconds for wireguard-go to create its interface and socket
EXIT_TIMEOUT = 3.0  # seconds for wireguard-go to exit once its interface is deleted
POLL = 0.02


class WireGuardGoBackend:
    """wireguard-go: a process per interface, read and written over its UAPI socket."""

    name = "wireguard-go"

    def __init__(
        self, log_dir: Path, binary: str = "wireguard-go", socket_dir: Path = SOCKET_DIR
    ) -> None:
        self.log_dir = log_dir
        self.binary = binary
        self.socket_dir = socket_dir
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

    async def ensure_link(self, ifname: str) -> bool:
        """Start wireguard-go when the interface is missing or nobody answers behind it."""
        if await self._healthy(ifname):
            return False
        if await self._link_exists(ifname):
            # A link without a live wireguard-go behind it cannot carry traffic anyway.
            log.warning("%s: exists but wireguard-go does not answer: recreating", ifname)
            with hostnet_errors():
                await hostnet.delete_link(ifname)
        await self._start(ifname)
        return True

    async def read(self, ifname: str) -> LiveDevice:
        device = await self._get(ifname)
        return LiveDevice(device.private_key, device.listen_port, device.peers)

    async def write(self, ifname: str, device: DeviceDiff, peers: PeerDiff) -> None:
        if device:
            request = render_device(device.private_key, device.listen_port)
            await self._request(ifname, request, "the device settings")
        if peers:
            await self._request(ifname, render_peers(peers), "the peer changes")

    async def delete_link(self, ifname: str) -> bool:
        """Delete the interface; wireguard-go notices and exits, removing its socket."""
        with hostnet_errors():
            removed = await hostnet.delete_link(ifname)  # logs "<name>: deleted"
        deadline = time.monotonic() + EXIT_TIMEOUT
        while self._socket(ifname).exists() and time.monotonic() < deadline:
            await asyncio.sleep(POLL)
        if self._socket(ifname).exists():
            log.warning("%s: wireguard-go left its socket behind; removing it", ifname)
            self._socket(ifname).unlink(missing_ok=True)
            removed = True
        self._started = [proc for proc in self._started if proc.poll() is None]
        return removed


class WireGuardGo(WireGuardDataPlane):
    """The tunnel adapter on wireguard-go; it writes its log under `log_dir`."""

    def __init__(
        self,
        log_dir: Path,
        binary: str = "wireguard-go",
        socket_dir: Path = SOCKET_DIR,
        ifname: str = INTERFACE,
    ) -> None:
        super().__init__(WireGuardGoBackend(log_dir, binary, socket_dir), ifname)
