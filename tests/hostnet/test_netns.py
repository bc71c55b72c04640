"""Entering another process's network namespace for one function (doctor's in-container DNS
check): the caller's thread never moves, errors are named."""

from __future__ import annotations

import os
import subprocess
import threading

import pytest

from shoal.hostnet.errors import HostNetError
from shoal.hostnet.netns import run_in_netns_of
from tests.hostnet.netns import NETNS_DIR, NetnsFactory


def netns_inode() -> int:
    return os.stat(f"/proc/self/task/{threading.get_native_id()}/ns/net").st_ino


def test_the_function_runs_in_the_namespace_and_returns_its_value(netns: NetnsFactory) -> None:
    ours = netns_inode()
    ns = netns.new("enter")
    sleeper = subprocess.Popen(["ip", "netns", "exec", ns.name, "sleep", "60"])
    try:
        # `ip netns exec` enters the namespace, then execs sleep under the same pid.
        target = (NETNS_DIR / ns.name).stat().st_ino
        while os.stat(f"/proc/{sleeper.pid}/ns/net").st_ino != target:
            threading.Event().wait(0.01)
        assert run_in_netns_of(sleeper.pid, netns_inode) == target != ours
        assert netns_inode() == ours  # the caller's thread never moved
    finally:
        sleeper.kill()
        sleeper.wait()


def test_what_the_function_raises_reaches_the_caller() -> None:
    def boom() -> None:
        raise ValueError("inside")

    with pytest.raises(ValueError, match="inside"):
        run_in_netns_of(os.getpid(), boom)


def test_a_process_that_is_gone_is_a_named_error() -> None:
    with pytest.raises(HostNetError, match="no network namespace of process 999999999"):
        run_in_netns_of(999_999_999, lambda: None)
