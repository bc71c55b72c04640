"""Forwarding between the mesh and the Docker bridge, without NAT inside the mesh.

Pure rendering in `rules`, one module (`iptables`) that reads and writes the live ruleset.
"""

from shoal.firewall.errors import FirewallError, IptablesMissing
from shoal.firewall.iptables import apply, live_ruleset, teardown
from shoal.firewall.rules import render

__all__ = ["FirewallError", "IptablesMissing", "apply", "live_ruleset", "render", "teardown"]
