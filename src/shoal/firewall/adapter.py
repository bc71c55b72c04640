"""The firewall adapter: shoal's nftables table (who may reach the mesh) and its iptables
chains (Docker's FORWARD exemption, NAT), converged together.

Order matters only while they are half applied: the table's drops go in before the iptables
accepts and come out after them, so there is never a moment with the accepts and no guard.
"""

from __future__ import annotations

import asyncio
import contextlib

from shoal.firewall import conntrack, iptables, nftables
from shoal.plan.hostconfig import FirewallConfig


async def apply(cfg: FirewallConfig) -> bool:
    """Converge both to `cfg`; False when both already matched."""
    if iptables.needed(cfg):
        # iptables is read while the tables load (a join waits for the firewall: ~40 ms
        # less); only its write must come after them.
        loading = asyncio.create_task(nftables.apply(cfg))
        try:
            live = await iptables.live_ruleset()
        except BaseException:
            # The tables' write ends before the read's error goes up: never left running
            # under the next attempt. Its own outcome is not the error to report.
            with contextlib.suppress(BaseException):
                await loading
            raise
        loaded = await loading
        changed = await iptables.apply(cfg, live) or loaded.changed
    else:
        loaded = await nftables.apply(cfg)
        changed = loaded.changed
    if loaded.changed and (cfg.policy is not None or loaded.replaced_policy):
        # Established flows skip the policy: the ones it denies now (a policy removed
        # included: hosts' services close again) are cut here.
        await conntrack.cut_denied(cfg)
    return changed


async def teardown() -> bool:
    """Remove both; False when neither had anything left."""
    removed = await iptables.teardown()
    removed |= await nftables.teardown()
    return removed
