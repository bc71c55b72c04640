"""Who may reach the mesh, and forwarding between the mesh and the Docker bridge without NAT
inside the mesh.

Pure rendering in `nft` (shoal's own nftables table) and `rules` (its iptables chains); one
module runs each binary (`nftables`, `iptables`); `adapter` converges both.
"""

from shoal.firewall.adapter import apply, teardown
from shoal.firewall.errors import FirewallError, IptablesMissing, NftMissing
from shoal.firewall.iptables import live_ruleset
from shoal.firewall.nftables import live_table
from shoal.firewall.rules import render

__all__ = [
    "FirewallError",
    "IptablesMissing",
    "NftMissing",
    "apply",
    "live_ruleset",
    "live_table",
    "render",
    "teardown",
]
