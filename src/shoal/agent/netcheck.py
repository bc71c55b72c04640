"""`shoal netcheck`: this host's NAT behaviour and what it can reach, measured now.

Uses the joined node's identity from the state dir (the probe is MACed with the node's key)
and probes the server exactly as the agent does (`shoal.agent.endpoints`), from WireGuard's
port, whether or not the agent runs. Also tries TCP to the server host's port 443, the control
API itself and each TCP relay (`GET /v1/relays`), with the time each connection took and the
relay the agent would pick by it.
"""

from __future__ import annotations

import asyncio
import time
from ipaddress import IPv4Address
from urllib.parse import urlsplit

from shoal.agent.endpoints import discover
from shoal.agent.errors import NetcheckFailed, NotJoined
from shoal.agent.statefiles import StateDir
from shoal.agent.traversal import relay_endpoint, relay_target, server_address
from shoal.controlclient.client import ControlClient
from shoal.controlclient.errors import ControlError
from shoal.model.netmap import Endpoint, Frozen, NatKind

TCP_TIMEOUT = 2.0

_NAT_TEXT: dict[str, str] = {
    "none": "none (the server sees this host's own address and port)",
    "easy": "easy (endpoint-independent mapping: one outside port for every destination)",
    "hard": "hard (symmetric: every destination sees another outside port; direct paths only "
    "to peers without NAT or behind easy NATs)",
    "udp-blocked": "unknown (no probe answer: UDP is blocked, or the server has no responder)",
}


class TcpCheck(Frozen):
    target: str  # "ip:port"
    open: bool  # the path is open (connected, or refused by the host itself)
    detail: str
    connect_ms: float | None = None  # how long the connection took (None: none made)


class NetcheckReport(Frozen):
    server: str
    nat: NatKind
    udp: bool  # a probe answer came back
    mapped: tuple[str | None, ...]  # what each server probe port saw ("ip:port")
    endpoints: tuple[Endpoint, ...]
    tcp_443: TcpCheck
    control: TcpCheck
    relays: tuple[TcpCheck, ...] = ()  # the TCP relays, in the server's order of preference
    # The relay the agent would make its home without UDP (`relay_endpoint`: the nearest
    # healthy one by these connect times); None: no relay.
    nearest_relay: str | None = None

    def lines(self) -> list[str]:
        mapped = ", ".join(m or "no answer" for m in self.mapped)
        ends = ", ".join(f"{e} ({e.kind or 'advertised'})" for e in self.endpoints) or "-"
        return [
            f"nat:       {_NAT_TEXT[self.nat]}",
            f"udp:       {'yes' if self.udp else 'no'} (server probe ports saw: {mapped})",
            f"tcp/443:   {'yes' if self.tcp_443.open else 'no'} ({self.tcp_443.detail})",
            f"control:   {'yes' if self.control.open else 'no'} ({self.control.detail})",
            *(
                f"relay:     {'yes' if r.open else 'no'} ({r.detail})"
                + (", nearest" if r.target == self.nearest_relay else "")
                for r in self.relays
            ),
            f"endpoints: {ends}",
        ]


async def tcp_check(host: IPv4Address, port: int) -> TcpCheck:
    target = f"{host}:{port}"
    start = time.monotonic()
    try:
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection(str(host), port), TCP_TIMEOUT
        )
    except ConnectionRefusedError:
        return TcpCheck(target=target, open=True, detail="refused by the host: path open")
    except (TimeoutError, OSError) as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        return TcpCheck(target=target, open=False, detail=f"{target}: {why}")
    writer.close()
    ms = (time.monotonic() - start) * 1000
    return TcpCheck(
        target=target, open=True, detail=f"{target} connected in {ms:.1f} ms", connect_ms=ms
    )


async def netcheck(state: StateDir, listen_port: int, local: Endpoint | None) -> NetcheckReport:
    """Measure now; NotJoined if this state dir holds no node."""
    identity = state.identity()
    if identity is None:
        raise NotJoined(f"no node in {state.path}: join first (shoal up), then run netcheck")
    server = await asyncio.to_thread(server_address, identity.server_url)
    if server is None:
        raise NetcheckFailed(f"cannot resolve the server of {identity.server_url}")
    key = state.private_key()
    try:
        async with ControlClient(
            identity.server_url, identity.ca_pem.encode(), node_key=key
        ) as client:
            mac_key = await client.mac_key()
            try:
                relays = (await client.relays()).relays
            except ControlError:  # a server from before the relays list: none to check
                relays = ()
    except ControlError as exc:
        raise NetcheckFailed(f"the server does not answer, cannot probe: {exc}") from exc
    found = await discover(server, listen_port, local, mac_key, key.public_key())
    control_port = urlsplit(identity.server_url).port or 443
    tcp_443, control, *relay_checks = await asyncio.gather(
        tcp_check(server, 443),
        tcp_check(server, control_port),
        *(tcp_check(r.host or server, r.port) for r in relays),
    )
    targets = [
        relay_target(relays, server, Endpoint(host=r.host or server, port=r.port)) for r in relays
    ]
    rtts = {t: c.connect_ms for t, c in zip(targets, relay_checks, strict=True)}
    nearest = relay_endpoint(relays, server, lambda _t: False, rtts)
    return NetcheckReport(
        server=str(server),
        nat=found.nat,
        udp=any(m is not None for m in found.mapped),
        mapped=tuple(f"{m[0]}:{m[1]}" if m else None for m in found.mapped),
        endpoints=found.endpoints(),
        tcp_443=tcp_443,
        control=control,
        relays=tuple(relay_checks),
        nearest_relay=None if nearest is None else str(nearest),
    )
