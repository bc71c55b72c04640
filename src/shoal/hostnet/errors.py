"""Errors of the host networking adapter (links, addresses, routes, sysctls).

ShoalError
└── HostNetError        netlink or /proc refused an operation; the message names it
    └── LinkNotFound    the interface does not exist (not created yet, or deleted under us)
"""

from __future__ import annotations

from shoal.model.errors import ShoalError


class HostNetError(ShoalError):
    """The kernel refused or failed a host networking operation."""


class LinkNotFound(HostNetError):
    def __init__(self, ifname: str) -> None:
        super().__init__(f"network interface {ifname} does not exist")
        self.ifname = ifname

    def __reduce__(self) -> tuple[type, tuple[str]]:  # pickles with its own arguments
        return (type(self), (self.ifname,))
