"""Processes, namespaces and mounts, seen through /proc: who runs where, and stopping them by PID.

Nothing here kills by name: every PID comes from the lab's own records or from membership in one
of the lab's own network namespaces.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

NETNS_DIR = Path("/var/run/netns")


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of stat), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def is_alive(pid: int, started: int | None = None) -> bool:
    """True if `pid` runs (not a zombie) and, when `started` is given, is still that process."""
    # Reap it if it is our child, so a dead child does not linger as a zombie.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat[stat.rindex(")") + 2] in "ZX":
        return False
    return started is None or start_time(pid) == started


def stop(pids: Iterable[tuple[int, int | None]], timeout: float = 10.0) -> None:
    """SIGTERM each (pid, start time) still alive; SIGKILL those still alive after `timeout` s."""
    live = [(p, s) for p, s in pids if is_alive(p, s)]
    for pid, _ in live:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while live and time.monotonic() < deadline:
        time.sleep(0.1)
        live = [(p, s) for p, s in live if is_alive(p, s)]
    kill([p for p, _ in live])


def kill(pids: Iterable[int], timeout: float = 5.0) -> None:
    """SIGKILL each PID and wait (up to `timeout` s) until they are gone."""
    pids = list(pids)
    for pid in pids:
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if is_alive(p)]
        if pids:
            time.sleep(0.05)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def stray_pids(netns: Iterable[str], state_dir: Path) -> list[int]:
    """PIDs inside any of the named network namespaces (what `ip netns pids` lists), plus those
    whose root directory lies under `state_dir` (containers of a dockerd that died before it
    could remove them)."""
    inodes = {i for n in netns if (i := _inode(NETNS_DIR / n)) is not None}
    prefix = str(state_dir.resolve()) + "/"
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            if _inode(entry / "ns" / "net") in inodes or os.readlink(entry / "root").startswith(
                prefix
            ):
                found.append(int(entry.name))
        except OSError:
            continue
    return [p for p in found if is_alive(p)]


_OCTAL = re.compile(r"\\([0-7]{3})")


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below `path` in this mount namespace, deepest first."""
    prefix = str(path.resolve())
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), line.split()[4])
        if point == prefix or point.startswith(prefix + "/"):
            points.append(Path(point))
    return sorted(set(points), key=lambda p: (-len(p.parts), str(p)))


def umount_lazy(points: Iterable[Path]) -> None:
    """`umount -l` each mount point, ignoring those already gone."""
    for point in points:
        subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)
