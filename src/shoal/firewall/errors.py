"""Errors of the firewall adapter.

ShoalError
└── FirewallError       shoal's table or chains could not be read or written
    ├── IptablesMissing iptables (iptables-save, iptables-restore) is not installed
    └── NftMissing      nft (the nftables command) is not installed
"""

from __future__ import annotations

from shoal.model.errors import ShoalError


class FirewallError(ShoalError):
    """iptables or nft refused or failed; the message carries its stderr."""


class IptablesMissing(FirewallError):
    def __init__(self, binary: str) -> None:
        super().__init__(f"{binary} not found: install the iptables package")


class NftMissing(FirewallError):
    def __init__(self) -> None:
        super().__init__("nft not found: install the nftables package")
