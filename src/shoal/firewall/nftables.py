"""Loads shoal's table (`nft.render`) with the `nft` binary: one atomic `nft -f` of the whole
table when the live one differs, nothing otherwise; the only module that runs `nft`."""

from __future__ import annotations

import asyncio
import logging
import shutil
from dataclasses import dataclass

from shoal.firewall import nft
from shoal.firewall.errors import FirewallError, NftMissing
from shoal.plan.hostconfig import FirewallConfig

log = logging.getLogger(__name__)

NFT = "nft"


async def _run(args: list[str], stdin: str | None = None) -> tuple[int, str, str]:
    if shutil.which(NFT) is None:
        raise NftMissing()
    try:
        proc = await asyncio.create_subprocess_exec(
            NFT,
            *args,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    except OSError as exc:
        raise FirewallError(f"cannot run {NFT}: {exc}") from exc
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


def _failed(args: list[str], code: int, err: str) -> FirewallError:
    detail = " | ".join(err.strip().splitlines()[-3:])
    return FirewallError(f"{NFT} {' '.join(args)} failed (exit {code}): {detail}")


async def live_table() -> str | None:
    """`nft list table inet shoal`, or None when there is no such table."""
    args = ["list", "table", nft.FAMILY, nft.TABLE]
    code, out, err = await _run(args)
    if code != 0:
        if "No such file or directory" in err:
            return None
        raise _failed(args, code, err)
    return out


@dataclass(frozen=True, slots=True)
class Loaded:
    """What `apply` did: whether it loaded the table, and whether the table it replaced
    enforced a policy (flows it allowed may be denied now, with or without a new policy)."""

    changed: bool
    replaced_policy: bool


async def apply(cfg: FirewallConfig) -> Loaded:
    """Converge the table to `cfg`; `changed` False when it already matched."""
    live = await live_table()
    if live is not None and nft.canonical(live) == nft.canonical(nft.render(cfg)):
        return Loaded(changed=False, replaced_policy=cfg.policy is not None)
    lines = nft.changes(cfg, live)
    code, _out, err = await _run(["-f", "-"], nft.load_script(cfg))
    if code != 0:
        raise _failed(["-f", "-"], code, err)
    for line in lines:
        log.info("%s", line)
    return Loaded(changed=True, replaced_policy=live is not None and nft.enforces_policy(live))


async def teardown() -> bool:
    """Delete the table; False when there was none."""
    if await live_table() is None:
        return False
    code, _out, err = await _run(["-f", "-"], nft.DELETE_SCRIPT)
    if code != 0:
        raise _failed(["-f", "-"], code, err)
    log.info("firewall: table %s %s removed", nft.FAMILY, nft.TABLE)
    return True
