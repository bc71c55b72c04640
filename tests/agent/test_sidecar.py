"""The sidecar's preflight: each missing piece of the container is named with its fix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shoal.agent.sidecar import (
    CAP_NET_ADMIN,
    SidecarHost,
    SidecarNotReady,
    check_sidecar,
    effective_caps,
)

# Docker's default capability set (no NET_ADMIN), and the same with --cap-add NET_ADMIN.
DOCKER_DEFAULT = 0x00000000A80425FB
WITH_NET_ADMIN = DOCKER_DEFAULT | 1 << CAP_NET_ADMIN


def host(
    tmp_path: Path, caps: int, *, tun: bool = True, module: bool = False, wg_go: bool = True
) -> SidecarHost:
    status = tmp_path / "status"
    status.write_text(f"Name:\tshoal\nCapInh:\t0000000000000000\nCapEff:\t{caps:016x}\n")
    return SidecarHost(
        proc_status=status,
        # A character device that exists everywhere stands for /dev/net/tun.
        tun=Path("/dev/null") if tun else tmp_path / "tun",
        wireguard_module=tmp_path if module else tmp_path / "absent",
        which=lambda name: f"/usr/bin/{name}" if wg_go else None,
    )


def test_a_container_with_net_admin_and_tun_runs_wireguard_go(tmp_path: Path) -> None:
    assert check_sidecar(host(tmp_path, WITH_NET_ADMIN)) == "wireguard-go"


def test_the_hosts_kernel_module_needs_no_tun_device(tmp_path: Path) -> None:
    assert check_sidecar(host(tmp_path, WITH_NET_ADMIN, tun=False, module=True)) == "kernel"


def test_without_net_admin_the_fix_is_named(tmp_path: Path) -> None:
    with pytest.raises(SidecarNotReady, match=r"--cap-add NET_ADMIN .*cap_add"):
        check_sidecar(host(tmp_path, DOCKER_DEFAULT))


def test_without_tun_the_device_option_is_named(tmp_path: Path) -> None:
    with pytest.raises(SidecarNotReady, match="--device /dev/net/tun"):
        check_sidecar(host(tmp_path, WITH_NET_ADMIN, tun=False))
    # A regular file where the device should be is no device.
    fake = host(tmp_path, WITH_NET_ADMIN)
    (tmp_path / "tunfile").write_text("")
    with pytest.raises(SidecarNotReady, match="--device"):
        check_sidecar(SidecarHost(fake.proc_status, tmp_path / "tunfile", fake.wireguard_module))


def test_without_wireguard_go_the_image_is_blamed(tmp_path: Path) -> None:
    with pytest.raises(SidecarNotReady, match="wireguard-go is not installed in this image"):
        check_sidecar(host(tmp_path, WITH_NET_ADMIN, wg_go=False))


def test_capabilities_are_read_from_proc_status() -> None:
    # This test process: whatever it holds, the real file parses.
    assert effective_caps(Path(f"/proc/{os.getpid()}/status").read_text()) >= 0
    assert effective_caps("CapEff:\t0000000000001000\n") == 1 << CAP_NET_ADMIN
    for bad in ("", "CapEff:\tzz\n"):
        with pytest.raises(SidecarNotReady, match="capabilities"):
            effective_caps(bad)


def test_an_unreadable_status_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SidecarNotReady, match="cannot read"):
        check_sidecar(SidecarHost(proc_status=tmp_path / "missing"))
