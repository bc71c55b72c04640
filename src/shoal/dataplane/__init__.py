"""The WireGuard data plane: one Protocol, a kernel and a wireguard-go backend.

`select_dataplane` picks the backend at start; `shoal status` reports its `name`.
"""

from shoal.dataplane.base import DataPlane, PeerStats, WireGuardDataPlane
from shoal.dataplane.errors import DataPlaneError, NoWireGuard, UapiError, WireGuardGoFailed
from shoal.dataplane.kernel import KernelWireGuard
from shoal.dataplane.select import select_dataplane
from shoal.dataplane.wggo import WireGuardGo

__all__ = [
    "DataPlane",
    "DataPlaneError",
    "KernelWireGuard",
    "NoWireGuard",
    "PeerStats",
    "UapiError",
    "WireGuardDataPlane",
    "WireGuardGo",
    "WireGuardGoFailed",
    "select_dataplane",
]
