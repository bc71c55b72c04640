"""Errors of the WireGuard data plane.

ShoalError
└── DataPlaneError          the interface or its peers could not be configured
    ├── NoWireGuard         neither the kernel module nor wireguard-go: install one
    ├── WireGuardGoFailed   wireguard-go did not start or its control socket is gone;
    │                       the message carries the tail of its log
    └── UapiError           wireguard-go refused a request (errno from the UAPI reply)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from shoal.hostnet.errors import HostNetError
from shoal.model.errors import ShoalError


class DataPlaneError(ShoalError):
    """The WireGuard interface or its peers could not be configured."""


class NoWireGuard(DataPlaneError):
    def __init__(self) -> None:
        super().__init__(
            "no WireGuard available: install the wireguard kernel module or wireguard-go"
        )

    def __reduce__(self) -> tuple[type, tuple[()]]:  # pickles with its own arguments
        return (type(self), ())


class WireGuardGoFailed(DataPlaneError):
    """wireguard-go did not come up, or its control socket does not answer."""


class UapiError(DataPlaneError):
    def __init__(self, ifname: str, errno: int, request: str) -> None:
        super().__init__(f"wireguard-go on {ifname} refused {request} (errno {errno})")
        self.ifname, self.errno, self.request = ifname, errno, request

    def __reduce__(self) -> tuple[type, tuple[str, int, str]]:
        return (type(self), (self.ifname, self.errno, self.request))


@contextmanager
def hostnet_errors() -> Iterator[None]:
    """The WireGuard interface's link, address or MTU failed: a data plane error."""
    try:
        yield
    except HostNetError as exc:
        raise DataPlaneError(str(exc)) from exc
