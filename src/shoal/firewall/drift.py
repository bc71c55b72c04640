"""How the live firewall differs from a `FirewallConfig`, for `shoal doctor`: read only.

Each list is what the next apply would change, in the adapters' own readable lines (empty:
in sync), so doctor and the agent's log describe a difference in the same words.
"""

from __future__ import annotations

from dataclasses import dataclass

from shoal.firewall import antispoof, iptables, nft, nftables, rules
from shoal.plan.hostconfig import FirewallConfig


@dataclass(frozen=True, slots=True)
class Drift:
    table: tuple[str, ...]  # shoal's nftables tables `inet shoal` and `bridge shoal`
    docker: tuple[str, ...]  # the iptables side: DOCKER-USER jump, NAT exemption, DNS redirect


async def drift(cfg: FirewallConfig) -> Drift:
    """Raises FirewallError when nft or iptables cannot be read."""
    table = nft.changes(cfg, await nftables.live_table())
    bridge = antispoof.render(await nftables.bindings(cfg))
    table += nft.diff(antispoof.FAMILY, await nftables.live_table(antispoof.FAMILY), bridge)
    docker = rules.changes(cfg, await iptables.live_ruleset()) if iptables.needed(cfg) else []
    return Drift(table=tuple(table), docker=tuple(docker))
