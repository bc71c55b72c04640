"""The host's resolver pointed at the mesh DNS responder (resolv.conf arrangement; the
systemd-resolved one is chosen only where its runtime dir exists)."""

from __future__ import annotations

import os
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from shoal.dns.hostresolver import MARK, HostResolver, resolved_present, with_nameserver

MESH_IP = IPv4Address("100.64.0.5")
ORIGINAL = "# from DHCP\nsearch example.net\nnameserver 192.0.2.53\n"


def test_the_nameserver_goes_first_once_and_comes_out_exactly() -> None:
    once = with_nameserver(ORIGINAL, MESH_IP)
    assert once == f"nameserver 100.64.0.5 {MARK}\n{ORIGINAL}"
    assert with_nameserver(once, MESH_IP) == once
    moved = with_nameserver(once, IPv4Address("100.64.0.9"))
    assert moved.count(MARK) == 1 and "100.64.0.5" not in moved


async def test_resolv_conf_is_rewritten_in_place_and_restored(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(ORIGINAL)
    inode = conf.stat().st_ino  # a bind mount's target must stay the same file
    resolver = HostResolver("shoal0", path=conf, resolved_dir=tmp_path / "no-resolved")
    assert await resolver.point_at(MESH_IP) is True
    assert conf.read_text().startswith(f"nameserver {MESH_IP} {MARK}\n")
    assert await resolver.point_at(MESH_IP) is False
    assert await resolver.release() is True
    assert conf.read_text() == ORIGINAL and conf.stat().st_ino == inode
    assert await resolver.release() is False


def test_resolved_is_used_only_where_it_runs(tmp_path: Path) -> None:
    assert resolved_present(tmp_path / "absent") is False


async def test_with_systemd_resolved_only_shoal_goes_to_the_mesh_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in `resolvectl` on PATH records its calls; resolv.conf is left alone."""
    bin_dir, run_dir, calls = tmp_path / "bin", tmp_path / "resolve", tmp_path / "calls"
    bin_dir.mkdir()
    run_dir.mkdir()
    fake = bin_dir / "resolvectl"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    conf = tmp_path / "resolv.conf"
    conf.write_text(ORIGINAL)
    resolver = HostResolver("shoal0", path=conf, resolved_dir=run_dir)
    assert await resolver.point_at(MESH_IP) is True
    assert await resolver.release() is True
    assert await resolver.release() is False  # nothing of ours left to revert
    assert calls.read_text().splitlines() == [
        "dns shoal0 100.64.0.5",
        "domain shoal0 ~shoal",
        "revert shoal0",
    ]
    assert conf.read_text() == ORIGINAL
