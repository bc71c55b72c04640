"""Cuts established flows a new policy denies: the only module that runs `conntrack`.

The nft table accepts established flows at the top of its chains (one cheap match per packet),
so a policy change alone would let flows it now denies live on. After each load of a table
with a policy, the connection-tracking entries of flows arriving from the mesh to this host
or its containers are judged again with `shoal.plan.policy.explain`, the same decision the
table makes for a first packet, and the denied ones are deleted: their next packet is new
again and meets the policy.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from dataclasses import dataclass
from ipaddress import IPv4Address

from shoal.firewall.errors import FirewallError
from shoal.model.policy import Proto
from shoal.plan.hostconfig import FirewallConfig
from shoal.plan.policy import explain

log = logging.getLogger(__name__)

CONNTRACK = "conntrack"


@dataclass(frozen=True, slots=True)
class Flow:
    """The original direction of one tracked connection (tcp or udp)."""

    proto: str
    src: IPv4Address
    dst: IPv4Address
    sport: int
    dport: int


def parse_flows(listing: str) -> list[Flow]:
    """The tcp and udp flows of `conntrack -L` output (first tuple: the original direction)."""
    flows = []
    for line in listing.splitlines():
        words = line.split()
        if not words or words[0] not in ("tcp", "udp"):
            continue
        first: dict[str, str] = {}
        for word in words:
            key, sep, value = word.partition("=")
            if sep and key in ("src", "dst", "sport", "dport") and key not in first:
                first[key] = value
        try:
            flows.append(
                Flow(
                    words[0],
                    IPv4Address(first["src"]),
                    IPv4Address(first["dst"]),
                    int(first["sport"]),
                    int(first["dport"]),
                )
            )
        except (KeyError, ValueError):
            continue  # a line of another shape (a summary): nothing to judge
    return flows


def denied(cfg: FirewallConfig, flows: list[Flow]) -> list[Flow]:
    """The flows from the mesh into this host (its containers, its mesh IP) that `cfg`'s
    policy denies; with no policy, those to the host's own services (closed by default)."""
    mesh_ip = cfg.policy.mesh_ip if cfg.policy is not None else cfg.dns_address
    out = []
    for f in flows:
        local = cfg.local_subnet
        from_mesh = (f.src in cfg.container_pool or f.src in cfg.mesh_pool) and not (
            (local is not None and f.src in local) or f.src == mesh_ip
        )
        to_here = (local is not None and f.dst in local) or f.dst == mesh_ip
        if not (from_mesh and to_here) or mesh_ip is None:
            continue
        proto: Proto = "tcp" if f.proto == "tcp" else "udp"
        if not explain(cfg.policy, mesh_ip, f.src, f.dst, proto, f.dport).allow:
            out.append(f)
    return out


async def _run(*args: str) -> tuple[int, str, str]:
    if shutil.which(CONNTRACK) is None:
        raise FirewallError(
            "conntrack not found: install the conntrack package (without it, flows a new "
            "policy denies are not cut)"
        )
    try:
        proc = await asyncio.create_subprocess_exec(
            CONNTRACK,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
    except OSError as exc:
        raise FirewallError(f"cannot run {CONNTRACK}: {exc}") from exc
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


async def cut_denied(cfg: FirewallConfig) -> int:
    """Delete the tracking entries of flows `cfg` denies; how many were cut."""
    code, out, err = await _run("-L", "-f", "ipv4")
    if code != 0:
        raise FirewallError(f"{CONNTRACK} -L failed (exit {code}): {err.strip()}")
    cut = 0
    for f in denied(cfg, parse_flows(out)):
        # Exit 1: the flow ended meanwhile; nothing to cut.
        code, _out, _err = await _run(
            "-D", "-f", "ipv4", "-p", f.proto, "-s", str(f.src), "-d", str(f.dst),
            "--sport", str(f.sport), "--dport", str(f.dport),
        )  # fmt: skip
        if code == 0:
            cut += 1
            log.info(
                "firewall: cut %s %s:%d -> %s:%d (the policy denies it now)",
                f.proto, f.src, f.sport, f.dst, f.dport,
            )  # fmt: skip
    return cut
