"""Kernel switches under /proc/sys/net, read and written for the current network namespace."""

from __future__ import annotations

import logging
from pathlib import Path

from shoal.hostnet.errors import HostNetError

log = logging.getLogger(__name__)

IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


def ensure_ip_forward(path: Path = IP_FORWARD) -> bool:
    """Turn on IPv4 forwarding (the host routes between the mesh and its containers)."""
    try:
        if path.read_text().strip() == "1":
            return False
        path.write_text("1\n")
    except OSError as exc:
        raise HostNetError(f"cannot enable IPv4 forwarding ({path}): {exc}") from exc
    log.info("net.ipv4.ip_forward 0 => 1")
    return True
