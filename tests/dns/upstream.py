"""An upstream resolver for the tests: answers `example.test` names on loopback.

It is itself a `DnsServer` over a table of zone `example.test` with no forwarding, plus a
knob to answer over UDP with TC set (to test the TCP retry) and one to stay silent."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address

import dns.flags
import dns.message
import dns.rcode
import dns.rrset


class Upstream:
    """Answers `<label>.example.test A 192.0.2.<len(label)>` and `big.example.test` with 60
    A records; NXDOMAIN otherwise. `truncate_udp` sets TC on every UDP answer; `silent`
    swallows every query."""

    def __init__(self) -> None:
        self.truncate_udp = False
        self.silent = False
        self.udp_queries = 0
        self.tcp_queries = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self.address: tuple[str, int] = ("127.0.0.1", 0)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        up = self

        class Proto(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
                up.udp_queries += 1
                reply = up.answer(data, udp=True)
                if reply is not None:
                    self.transport.sendto(reply, addr)  # type: ignore[attr-defined]

        for _ in range(20):  # the port UDP picked may be taken for TCP: pick again
            udp, _ = await loop.create_datagram_endpoint(Proto, local_addr=("127.0.0.1", 0))
            port = udp.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, "127.0.0.1", port)
            except OSError:
                udp.close()
                continue
            self._udp, self.address = udp, ("127.0.0.1", port)
            return
        raise RuntimeError("no port free for both UDP and TCP")

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            length = int.from_bytes(await reader.readexactly(2), "big")
            self.tcp_queries += 1
            reply = self.answer(await reader.readexactly(length), udp=False)
            if reply is not None:
                writer.write(len(reply).to_bytes(2, "big") + reply)
                await writer.drain()
        finally:
            writer.close()

    def answer(self, data: bytes, udp: bool) -> bytes | None:
        if self.silent:
            return None
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query, recursion_available=True)
        name = query.question[0].name
        labels = name.to_text(omit_final_dot=True).lower().split(".")
        if labels[1:] == ["example", "test"]:
            count = 60 if labels[0] == "big" else 1
            rrset = response.find_rrset(response.answer, name, 1, 1, create=True)  # IN A
            for i in range(count):
                rrset.add(dns.rdata.from_text("IN", "A", str(address(labels[0], i))), 30)
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
        if udp and self.truncate_udp:
            response.answer = []
            response.flags |= dns.flags.TC
        return response.to_wire()


def address(label: str, i: int = 0) -> IPv4Address:
    return IPv4Address(f"198.51.{len(label)}.{i + 1}")
