"""Run a function inside another process's network namespace (a container's, to look at the
network as the container sees it).

setns(2) switches only the calling thread: the function runs in a thread of its own that ends
with it, so no other thread of the process ever leaves the agent's namespace. Sockets the
function opens stay in the namespace they were made in. Needs CAP_SYS_ADMIN (root).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Callable
from functools import cache
from typing import TypeVar

from shoal.hostnet.errors import HostNetError

T = TypeVar("T")
CLONE_NEWNET = 0x40000000


@cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def run_in_netns_of(pid: int, fn: Callable[[], T]) -> T:
    """`fn()` run in the network namespace of process `pid`; blocks until it returns.
    Raises HostNetError when the namespace cannot be entered (no such process, not root),
    and whatever `fn` raises."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def body() -> None:
        try:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        except OSError as exc:
            failure.append(HostNetError(f"no network namespace of process {pid}: {exc.strerror}"))
            return
        try:
            if _libc().setns(fd, CLONE_NEWNET) != 0:
                reason = os.strerror(ctypes.get_errno())
                failure.append(
                    HostNetError(f"cannot enter the network namespace of process {pid}: {reason}")
                )
                return
        finally:
            os.close(fd)
        try:
            outcome.append(fn())
        except BaseException as exc:  # handed to the caller's thread, re-raised there
            failure.append(exc)

    thread = threading.Thread(target=body, name=f"shoal-netns-{pid}", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]
