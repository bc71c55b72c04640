"""Small builders for model values, so tests state only what matters to them."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from shoal.model.keys import PrivateKey
from shoal.model.netmap import Endpoint, MeshSettings, NetworkMap, Node

SETTINGS = MeshSettings(
    mesh_pool=IPv4Network("100.64.0.0/10"), container_pool=IPv4Network("10.42.0.0/16")
)


def node(i: int, name: str | None = None) -> Node:
    return Node(
        id=f"n{i}",
        name=name or f"h{i}",
        public_key=PrivateKey(bytes([i]) * 32).public_key(),
        mesh_ip=IPv4Address(f"100.64.0.{i}"),
        subnet=IPv4Network(f"10.42.{i}.0/24"),
        endpoints=(Endpoint(host=IPv4Address(f"192.0.2.{10 + i}"), port=51820),),
    )


def netmap(self_index: int, peer_indexes: list[int], revision: int = 1) -> NetworkMap:
    return NetworkMap(
        revision=revision,
        settings=SETTINGS,
        self_node=node(self_index),
        peers=tuple(sorted((node(i) for i in peer_indexes), key=lambda n: n.id)),  # as served
    )
