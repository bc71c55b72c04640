"""DockerHost against a real dockerd in a throwaway network namespace."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network

import pytest

from shoal.dockerhost import DockerHost, DockerUnavailable, NetworkInUse, RemoveResult
from shoal.plan.hostconfig import DockerNetworkConfig
from tests.dockerhost.conftest import Dockerd

CFG = DockerNetworkConfig(
    name="shoal",
    bridge="shoal-br0",
    subnet=IPv4Network("10.42.1.0/24"),
    gateway=IPv4Address("10.42.1.1"),
    mtu=1420,
)


def inspect(d: Dockerd, name: str) -> dict[str, object]:
    attrs: dict[str, object] = json.loads(d.cli("network", "inspect", name).stdout)[0]
    return attrs


async def test_unreachable_dockerd_is_a_typed_error(tmp_path: object) -> None:
    with pytest.raises(DockerUnavailable, match="cannot reach dockerd at unix:///nonexistent"):
        await DockerHost("unix:///nonexistent/docker.sock").ping()


async def test_network_lifecycle(dockerd: Dockerd) -> None:
    host = DockerHost(dockerd.url)
    await host.ping()
    assert await host.ensure_network(CFG) is True
    assert await host.ensure_network(CFG) is False
    net = inspect(dockerd, "shoal")
    assert net["Driver"] == "bridge"
    assert net["IPAM"] == {
        "Driver": "default",
        "Options": None,
        "Config": [{"Subnet": "10.42.1.0/24", "Gateway": "10.42.1.1"}],
    }
    assert net["Options"] == {
        "com.docker.network.bridge.name": "shoal-br0",
        "com.docker.network.driver.mtu": "1420",
        "com.docker.network.bridge.enable_ip_masquerade": "false",
    }
    assert net["Labels"] == {"io.shoal.managed": "1"}

    assert await host.network_subnets(exclude=["shoal"]) == [IPv4Network("172.31.250.0/24")]
    assert IPv4Network("10.42.1.0/24") in await host.network_subnets()

    # A new subnet with nothing attached: recreated.
    moved = CFG.model_copy(
        update={"subnet": IPv4Network("10.42.2.0/24"), "gateway": IPv4Address("10.42.2.1")}
    )
    assert await host.ensure_network(moved) is True
    assert inspect(dockerd, "shoal")["IPAM"]["Config"] == [  # type: ignore[index]
        {"Subnet": "10.42.2.0/24", "Gateway": "10.42.2.1"}
    ]

    # With a container attached: refused, and removal reports who holds it.
    image = dockerd.image()
    dockerd.cli("run", "-d", "--name", "web", "--network", "shoal", image, "sleep", "600")
    with pytest.raises(NetworkInUse, match=r"containers are attached \(web\)"):
        await host.ensure_network(CFG)
    assert await host.remove_network("shoal") == RemoveResult(removed=False, attached=("web",))

    dockerd.cli("rm", "-f", "web")
    assert await host.remove_network("shoal") == RemoveResult(removed=True)
    assert await host.remove_network("shoal") == RemoveResult(removed=False)
    assert dockerd.cli("network", "inspect", "shoal", check=False).returncode != 0
