"""What a sidecar container must have before the agent starts in it (`shoal sidecar`).

A sidecar is the agent run as a host without Docker inside a container's own network
namespace: the container joins the mesh with its own identity, and an app sharing that
namespace (`network_mode: service:shoal`) is on the mesh. It needs no root on the host, only
what a container can be given: CAP_NET_ADMIN (its interface, routes and nftables table, in
its namespace only) and a WireGuard data plane, the host's kernel module or wireguard-go on
/dev/net/tun. Each missing piece is named with the `docker run` / compose option that gives
it, before anything is half set up.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shoal.agent.errors import AgentError

CAP_NET_ADMIN = 12  # linux/capability.h
PROC_STATUS = Path("/proc/self/status")
TUN = Path("/dev/net/tun")
WIREGUARD_MODULE = Path("/sys/module/wireguard")


class SidecarNotReady(AgentError):
    """The container lacks what the sidecar needs (a capability, a device): the operator's
    container definition must give it; retrying will not help."""


@dataclass(frozen=True, slots=True)
class SidecarHost:
    """Where the checks look (the real paths by default; tests point them at files)."""

    proc_status: Path = PROC_STATUS
    tun: Path = TUN
    wireguard_module: Path = WIREGUARD_MODULE
    which: Callable[[str], str | None] = shutil.which


def effective_caps(status_text: str) -> int:
    """The effective capability mask from /proc/<pid>/status text (its `CapEff:` hex line).

    Raises SidecarNotReady when the line is missing or not hex (not a Linux /proc)."""
    for line in status_text.splitlines():
        key, _, value = line.partition(":")
        if key == "CapEff":
            try:
                return int(value.strip(), 16)
            except ValueError:
                break
    raise SidecarNotReady("cannot read this process's capabilities (CapEff in /proc/self/status)")


def check_sidecar(host: SidecarHost | None = None) -> str:
    """Check the container can run the sidecar; return the data plane it will use
    ("kernel" or "wireguard-go"). Raises SidecarNotReady naming the missing option."""
    host = host or SidecarHost()
    try:
        status = host.proc_status.read_text()
    except OSError as exc:
        raise SidecarNotReady(f"cannot read {host.proc_status}: {exc.strerror or exc}") from exc
    if not effective_caps(status) >> CAP_NET_ADMIN & 1:
        raise SidecarNotReady(
            "the sidecar needs CAP_NET_ADMIN in its container: docker run --cap-add NET_ADMIN "
            "(compose: cap_add: [NET_ADMIN])"
        )
    if host.wireguard_module.is_dir():
        return "kernel"
    if not host.tun.is_char_device():
        raise SidecarNotReady(
            f"no {host.tun} in this container and no WireGuard module in the host's kernel: "
            f"docker run --device {TUN} (compose: devices: [{TUN}])"
        )
    if host.which("wireguard-go") is None:
        raise SidecarNotReady(
            "wireguard-go is not installed in this image and the host's kernel has no "
            "WireGuard module: build the sidecar image with wireguard-go"
        )
    return "wireguard-go"
