"""Errors of the firewall adapter.

ShoalError
└── FirewallError       the forwarding/NAT rules could not be read or written
    └── IptablesMissing iptables (iptables-save, iptables-restore) is not installed
"""

from __future__ import annotations

from shoal.model.errors import ShoalError


class FirewallError(ShoalError):
    """iptables refused or failed; the message carries its stderr."""


class IptablesMissing(FirewallError):
    def __init__(self, binary: str) -> None:
        super().__init__(f"{binary} not found: install the iptables package")
