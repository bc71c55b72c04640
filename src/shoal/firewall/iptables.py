"""Applies shoal's rules with iptables-save / iptables-restore (whichever variant is installed:
Docker and shoal must use the same one, and both follow the system's `iptables` alternative).

Each call reads the live ruleset once and writes only when it differs, with one atomic
`iptables-restore --noflush` that leaves every chain but shoal's untouched.
"""

from __future__ import annotations

import asyncio
import logging
import shutil

from shoal.firewall.errors import FirewallError, IptablesMissing
from shoal.firewall.rules import (
    Ruleset,
    apply_script,
    changes,
    parse_save,
    teardown_script,
)
from shoal.plan.hostconfig import FirewallConfig

log = logging.getLogger(__name__)

SAVE = "iptables-save"
RESTORE = "iptables-restore"


def installed() -> bool:
    return shutil.which(SAVE) is not None and shutil.which(RESTORE) is not None


def needed(cfg: FirewallConfig) -> bool:
    """Whether `cfg` needs iptables: for Docker's FORWARD policy and NAT (a container subnet)
    or a subnet route's masquerade. A host with neither (a laptop, a VM with a native
    database) has nothing there, and Debian installs nftables but not iptables: shoal does
    without it where it is missing, and writes its chains as on any host where it is not."""
    return cfg.local_subnet is not None or bool(cfg.subnet_routes) or installed()


async def _run(argv: list[str], stdin: str | None = None) -> str:
    if shutil.which(argv[0]) is None:
        raise IptablesMissing(argv[0])
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    except OSError as exc:
        raise FirewallError(f"cannot run {argv[0]}: {exc}") from exc
    if proc.returncode != 0:
        detail = err.decode(errors="replace").strip().splitlines()
        raise FirewallError(
            f"{' '.join(argv)} failed (exit {proc.returncode}): {' | '.join(detail[-3:])}"
        )
    return out.decode(errors="replace")


async def live_ruleset() -> Ruleset:
    """shoal's view of the current iptables ruleset (filter, nat and mangle tables)."""
    return parse_save(await _run([SAVE]))


async def apply(cfg: FirewallConfig, live: Ruleset | None = None) -> bool:
    """Converge shoal's iptables chains and jumps to `cfg`; False when they already matched.
    `live`: the ruleset read just before (`live_ruleset`), else it is read here."""
    if live is None:
        live = await live_ruleset()
    script = apply_script(cfg, live)
    if script is None:
        return False
    lines = changes(cfg, live)
    await _run([RESTORE, "-w", "--noflush"], script)
    for line in lines:
        log.info("%s", line)
    return True


async def teardown() -> bool:
    """Remove shoal's jumps and chains; False when there were none (or no iptables)."""
    if not installed():
        return False  # nothing of shoal's can be there: it could not have written it
    script = teardown_script(await live_ruleset())
    if script is None:
        return False
    await _run([RESTORE, "-w", "--noflush"], script)
    log.info("firewall: shoal iptables chains and jumps removed")
    return True
