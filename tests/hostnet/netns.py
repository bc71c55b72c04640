"""Throwaway network namespaces for tests that touch real networking.

Every namespace is named `shoaltest-<pid>-<tag>`; `NetnsFactory.cleanup()` kills whatever still
runs inside the namespaces it made and deletes them. Leftovers of an aborted earlier run (a
`shoaltest-<pid>-...` whose pid is gone) are removed before the first namespace is made.

Code under test runs *inside* a namespace through `Netns.run`: a forked child enters the
namespace before anything else (so every thread it starts, e.g. `asyncio.to_thread`, is inside
too), runs the function and sends the result back. The test process itself never leaves the
root namespace and never changes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import inspect
import os
import pickle
import re
import signal
import subprocess
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

PREFIX = "shoaltest-"
NETNS_DIR = Path("/var/run/netns")
WG_SOCKET_DIR = Path("/var/run/wireguard")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pids_in(name: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def delete_netns(name: str) -> None:
    """Kill what still runs in `name` (SIGTERM, then SIGKILL) and delete it."""
    pids = _pids_in(name)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 3
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if _alive(p) and p in _pids_in(name)]
        time.sleep(0.05)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


def remove_stale() -> None:
    """Delete `shoaltest-<pid>-*` namespaces and `swt<pid>*` sockets of runs that are gone."""
    if NETNS_DIR.is_dir():
        for entry in NETNS_DIR.iterdir():
            m = re.fullmatch(rf"{PREFIX}(\d+)-.*", entry.name)
            if m and not _alive(int(m.group(1))):
                delete_netns(entry.name)
    if WG_SOCKET_DIR.is_dir():
        for sock in WG_SOCKET_DIR.glob("swt*.sock"):
            m = re.fullmatch(r"swt(\d+)[a-z]\d*\.sock", sock.name)
            if m and not _alive(int(m.group(1))):
                sock.unlink(missing_ok=True)


class Netns:
    def __init__(self, name: str) -> None:
        self.name = name
        self.path = NETNS_DIR / name

    def sh(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command in this namespace (network only: /sys stays the root's)."""
        return subprocess.run(
            ["nsenter", f"--net={self.path}", *argv], capture_output=True, text=True, check=check
        )

    def pids(self) -> list[int]:
        """Processes living in this namespace (asked from outside it)."""
        return _pids_in(self.name)

    def wait_empty(self, timeout: float = 5) -> bool:
        """Wait until no process lives in this namespace any more."""
        deadline = time.monotonic() + timeout
        while self.pids():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def run(self, fn: Callable[[], Any], timeout: float = 60) -> Any:
        """Run `fn` (sync or async) in a forked child inside this namespace; return its result."""
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            os.close(read_fd)
            code = 0
            try:
                fd = os.open(self.path, os.O_RDONLY)
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns failed")
                os.close(fd)
                result: Any = fn()
                if inspect.isawaitable(result):
                    result = asyncio.run(_await(result))
                payload = pickle.dumps(("ok", result))
            except BaseException as exc:
                code = 1
                exc.add_note("in netns " + self.name + ":\n" + traceback.format_exc())
                try:
                    payload = pickle.dumps(("err", exc))
                except Exception:
                    payload = pickle.dumps(("err", RuntimeError(repr(exc))))
            with os.fdopen(write_fd, "wb") as w:
                w.write(payload)
            os._exit(code)
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as r:
            data = r.read()
        os.waitpid(pid, 0)
        kind, value = pickle.loads(data)
        if kind == "err":
            raise value
        return value


async def _await(aw: Any) -> Any:
    return await aw


class NetnsFactory:
    def __init__(self) -> None:
        self.made: list[Netns] = []
        self._n = 0

    def new(self, tag: str = "") -> Netns:
        if not self.made:
            remove_stale()
        self._n += 1
        name = f"{PREFIX}{os.getpid()}-{tag or self._n}"
        if (NETNS_DIR / name).exists():
            delete_netns(name)
        subprocess.run(["ip", "netns", "add", name], check=True)
        ns = Netns(name)
        self.made.append(ns)
        ns.sh("ip", "link", "set", "lo", "up")
        return ns

    def cleanup(self) -> None:
        for ns in reversed(self.made):
            delete_netns(ns.name)
        self.made.clear()


_ifcounter = 0


def unique_ifname(letter: str = "a") -> str:
    """A WireGuard interface name no other test (or other run) uses: `swt<pid><letter><n>`."""
    global _ifcounter
    _ifcounter += 1
    return f"swt{os.getpid()}{letter}{_ifcounter}"[:15]


@contextlib.contextmanager
def netns_factory() -> Iterator[NetnsFactory]:
    factory = NetnsFactory()
    try:
        yield factory
    finally:
        factory.cleanup()
