"""The kernel backend's parsing of pyroute2's WireGuard messages (the module itself is tested
in the VM suite; this host has no WireGuard module)."""

from __future__ import annotations

from typing import Any

import pytest

from shoal.dataplane import kernel
from shoal.model.keys import PrivateKey


class _Msg:
    def __init__(self, attrs: dict[str, Any]) -> None:
        self._attrs = attrs

    def get_attr(self, name: str) -> Any:
        return self._attrs.get(name)


@pytest.mark.parametrize("wrap", [lambda b: b, lambda b: {"value": b}], ids=["0.9", "0.7"])
def test_key_attributes_parse_in_both_pyroute2_shapes(wrap: Any) -> None:
    """pyroute2 0.9.x returns keys as base64 bytes; older releases as {"value": bytes}."""
    priv = PrivateKey.generate()
    pub = priv.public_key()
    peer = _Msg(
        {
            "WGPEER_A_PUBLIC_KEY": wrap(str(pub).encode()),
            "WGPEER_A_ENDPOINT": {"addr": "192.0.2.2", "port": 51820},
            "WGPEER_A_ALLOWEDIPS": [{"addr": "10.42.1.0/24"}, {"addr": "100.64.0.2/32"}],
            "WGPEER_A_LAST_HANDSHAKE_TIME": {"tv_sec": 1_700_000_000},
            "WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL": 25,
            "WGPEER_A_RX_BYTES": 10,
            "WGPEER_A_TX_BYTES": 20,
        }
    )
    live = kernel._live_peer(peer)
    assert live.public_key == pub
    assert live.endpoint == "192.0.2.2:51820"
    assert [str(n) for n in live.allowed_ips] == ["10.42.1.0/24", "100.64.0.2/32"]
    assert (live.rx_bytes, live.tx_bytes, live.keepalive) == (10, 20, 25)
    assert kernel._key_text(wrap(priv.to_base64().encode())) == priv.to_base64()
