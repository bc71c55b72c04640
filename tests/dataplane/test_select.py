"""Backend selection on this machine (no WireGuard kernel module)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.dataplane import NoWireGuard, select_dataplane
from tests.hostnet.netns import NetnsFactory


def test_falls_back_to_wireguard_go_then_gives_up(netns: NetnsFactory, tmp_path: Path) -> None:
    ns = netns.new("sel")
    kernel = ns.sh("ip", "link", "add", "probe0", "type", "wireguard", check=False)
    # With the module the kernel backend wins; without it, wireguard-go does.
    expected = "kernel" if kernel.returncode == 0 else "wireguard-go"
    ns.sh("ip", "link", "del", "probe0", check=False)

    async def chosen() -> str:
        return (await select_dataplane(tmp_path)).name

    assert ns.run(chosen) == expected
    if expected == "kernel":
        return
    with pytest.raises(NoWireGuard, match="install the wireguard kernel module or wireguard-go"):
        ns.run(lambda: select_dataplane(tmp_path, binary="no-such-wireguard-go"))
    assert ns.sh("ip", "-o", "link").stdout.count(":") >= 1  # only lo: the probe left nothing
    assert "probe" not in ns.sh("ip", "-o", "link").stdout
