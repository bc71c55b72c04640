"""The kernel backend: a `wireguard` link configured over generic netlink (pyroute2).

Supplies only the link and the device's read and write; the read → diff → write → log cycle is
`base.WireGuardDataPlane`'s. Chosen when the kernel can create a WireGuard link.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from datetime import UTC, datetime
from ipaddress import IPv4Network, ip_network
from typing import Any

from shoal import hostnet
from shoal.dataplane.base import (
    DeviceDiff,
    LiveDevice,
    LivePeer,
    PeerDiff,
    WireGuardDataPlane,
)
from shoal.dataplane.errors import DataPlaneError, hostnet_errors
from shoal.hostnet.pyroute2_lean import NetlinkError, WireGuard
from shoal.model.keys import PrivateKey, PublicKey
from shoal.plan.hostconfig import INTERFACE

log = logging.getLogger(__name__)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _key_text(attr: Any) -> str:
    """A key attribute as base64 text. pyroute2 0.9.x hands key attributes over as base64
    bytes; older releases wrapped them as `{"value": bytes}`: accept both."""
    raw = attr["value"] if isinstance(attr, dict) else attr
    return raw.decode() if isinstance(raw, bytes | bytearray) else str(raw)


def _live_peer(msg: Any) -> LivePeer:
    key = PublicKey.parse(_key_text(msg.get_attr("WGPEER_A_PUBLIC_KEY")))
    endpoint_nla = msg.get_attr("WGPEER_A_ENDPOINT")
    endpoint = f"{endpoint_nla['addr']}:{endpoint_nla['port']}" if endpoint_nla else None
    ips: list[IPv4Network] = []
    for allowed in msg.get_attr("WGPEER_A_ALLOWEDIPS") or []:
        net = ip_network(allowed["addr"])
        if isinstance(net, IPv4Network):
            ips.append(net)
    handshake = msg.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME")
    sec = handshake["tv_sec"] if handshake else 0
    return LivePeer(
        public_key=key,
        endpoint=endpoint,
        allowed_ips=tuple(sorted(ips, key=lambda n: (int(n.network_address), n.prefixlen))),
        keepalive=msg.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") or 0,
        last_handshake=datetime.fromtimestamp(sec, tz=UTC) if sec else None,
        rx_bytes=msg.get_attr("WGPEER_A_RX_BYTES") or 0,
        tx_bytes=msg.get_attr("WGPEER_A_TX_BYTES") or 0,
    )


def _info(ifname: str) -> LiveDevice:
    with WireGuard() as wg:
        msgs = wg.info(ifname)
    private_key: PrivateKey | None = None
    listen_port = 0
    peers: dict[PublicKey, LivePeer] = {}
    for msg in msgs:  # a large peer list arrives in several messages
        raw = msg.get_attr("WGDEVICE_A_PRIVATE_KEY")
        if raw:
            parsed = PrivateKey.parse(_key_text(raw))
            if any(parsed.raw):
                private_key = parsed
        listen_port = msg.get_attr("WGDEVICE_A_LISTEN_PORT") or listen_port
        for peer_msg in msg.get_attr("WGDEVICE_A_PEERS") or []:
            peer = _live_peer(peer_msg)
            peers[peer.public_key] = peer
    return LiveDevice(private_key, listen_port, peers)


def _set_device(ifname: str, private_key: PrivateKey | None, listen_port: int | None) -> None:
    kwargs: dict[str, Any] = {}
    if private_key is not None:
        kwargs["private_key"] = private_key.to_base64()
    if listen_port is not None:
        kwargs["listen_port"] = listen_port
    with WireGuard() as wg:
        wg.set(ifname, **kwargs)


def _set_peers(ifname: str, diff: PeerDiff) -> None:
    with WireGuard() as wg:
        # Updates and additions, then removals (see PeerDiff); every other peer is left alone.
        for change in diff.change:
            peer: dict[str, Any] = {"public_key": _b64(change.public_key.raw)}
            if change.endpoint is not None:
                host, _, port = change.endpoint.rpartition(":")
                peer["endpoint_addr"] = host
                peer["endpoint_port"] = int(port)
            if change.keepalive is not None:
                peer["persistent_keepalive"] = change.keepalive
            if change.allowed_ips is not None:
                peer["replace_allowed_ips"] = True
                peer["allowed_ips"] = [str(ip) for ip in change.allowed_ips]
            wg.set(ifname, peer=peer)
        for key in diff.remove:
            wg.set(ifname, peer={"public_key": _b64(key.raw), "remove": True})


class KernelBackend:
    """Kernel WireGuard: a `wireguard` link, read and written over generic netlink."""

    name = "kernel"

    async def _call(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args)
        except NetlinkError as exc:
            raise DataPlaneError(f"{what}: {exc.args[-1] if exc.args else exc} (netlink)") from exc
        except (OSError, ValueError) as exc:
            raise DataPlaneError(f"{what}: {exc}") from exc

    async def ensure_link(self, ifname: str) -> bool:
        with hostnet_errors():
            kind = await hostnet.link_kind(ifname)
        if kind not in (None, "wireguard"):
            raise DataPlaneError(f"{ifname} exists but is a {kind or 'non-WireGuard'} link")
        if kind is not None:
            return False
        with hostnet_errors():
            await hostnet.create_link(ifname, "wireguard")
        log.info("%s: created (kernel WireGuard)", ifname)
        return True

    async def read(self, ifname: str) -> LiveDevice:
        device: LiveDevice = await self._call(f"read {ifname}", _info, ifname)
        return device

    async def write(self, ifname: str, device: DeviceDiff, peers: PeerDiff) -> None:
        if device:
            await self._call(
                f"configure {ifname}", _set_device, ifname, device.private_key, device.listen_port
            )
        if peers:
            await self._call(f"set peers on {ifname}", _set_peers, ifname, peers)

    async def delete_link(self, ifname: str) -> bool:
        with hostnet_errors():
            return await hostnet.delete_link(ifname)  # logs "<name>: deleted"


class KernelWireGuard(WireGuardDataPlane):
    """The tunnel adapter on kernel WireGuard."""

    def __init__(self, ifname: str = INTERFACE) -> None:
        super().__init__(KernelBackend(), ifname)
