"""Pick the WireGuard backend for this host: the kernel module if it works, else wireguard-go."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from shoal import hostnet
from shoal.dataplane.base import DataPlane
from shoal.dataplane.errors import NoWireGuard, hostnet_errors
from shoal.dataplane.kernel import KernelWireGuard
from shoal.dataplane.wggo import WireGuardGo
from shoal.plan.hostconfig import INTERFACE

log = logging.getLogger(__name__)


async def _kernel_works() -> bool:
    """Try to create (and at once delete) a kernel WireGuard link."""
    probe = f"shoalprobe{os.getpid() % 100000}"
    try:
        await hostnet.create_link(probe, "wireguard")
    except hostnet.HostNetError:
        return False
    with hostnet_errors():
        await hostnet.delete_link(probe)
    return True


async def _select(log_dir: Path, interface: str, binary: str) -> DataPlane:
    # A running interface decides: switching backends under it would drop every session.
    with hostnet_errors():
        kind = await hostnet.link_kind(interface)
    if kind == "wireguard":
        return KernelWireGuard(interface)
    if kind == "tun" and shutil.which(binary):
        return WireGuardGo(log_dir, binary, ifname=interface)
    if await _kernel_works():
        return KernelWireGuard(interface)
    if shutil.which(binary):
        return WireGuardGo(log_dir, binary, ifname=interface)
    raise NoWireGuard()


async def select_dataplane(
    log_dir: Path, interface: str = INTERFACE, binary: str = "wireguard-go"
) -> DataPlane:
    """The backend for this host; wireguard-go writes its log under `log_dir`."""
    plane = await _select(log_dir, interface, binary)
    log.info("data plane: %s", plane.name)
    return plane
