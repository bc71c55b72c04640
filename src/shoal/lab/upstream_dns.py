"""The lab's "internet" resolver: a fixed zone on the server host, so upstream names resolve in
the lab with no traffic leaving the machine.

`python -m shoal.lab.upstream_dns --listen 192.0.2.2:53` answers zone `lab.test` over UDP and
TCP (`www.lab.test A 192.0.2.80`, more with `--record NAME=IP`); every other name is NXDOMAIN,
so nothing is ever forwarded. It is shoal's own responder (`shoal.dns.DnsServer`) with a static
resolver instead of the mesh's record table. Runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Mapping, Sequence
from ipaddress import IPv4Address

from shoal.dns import ARecord, DnsServer, Outcome, QType, Resolution, SoaRecord, rdtype_name

ZONE = "lab.test"
DEFAULT_RECORDS: Mapping[str, IPv4Address] = {"www.lab.test": IPv4Address("192.0.2.80")}
TTL = 60


class StaticZone:
    """A `shoal.dns.Resolver` for fixed A records; NXDOMAIN (with the zone's SOA) elsewhere."""

    def __init__(self, records: Mapping[str, IPv4Address], zone: str = ZONE) -> None:
        self.zone = zone.lower().strip(".")
        self._records = {name.lower().strip("."): ip for name, ip in records.items()}
        self._soa = SoaRecord(
            name=f"{self.zone}.",
            mname=f"ns.{self.zone}.",
            rname=f"hostmaster.{self.zone}.",
            serial=1,
        )

    def admits(self, source: IPv4Address | None) -> bool:
        """Everyone: this stands for the internet's resolvers, which the whole lab may ask."""
        return True

    def resolve(self, qname: str, qtype: QType, source: IPv4Address | None = None) -> Resolution:
        name = qname.lower().strip(".")
        ip = self._records.get(name)
        if ip is not None and rdtype_name(qtype) in ("A", "ANY"):
            return Resolution(Outcome.ANSWER, answer=(ARecord(f"{name}.", ip),), ttl=TTL)
        if ip is not None or name == self.zone:
            return Resolution(Outcome.NODATA, authority=(self._soa,), ttl=TTL)
        return Resolution(Outcome.NXDOMAIN, authority=(self._soa,), ttl=TTL)


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def _record(text: str) -> tuple[str, IPv4Address]:
    name, _, ip = text.partition("=")
    try:
        return name, IPv4Address(ip)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected NAME=IPv4, got {text!r}") from exc


async def serve(listen: Sequence[tuple[str, int]], records: Mapping[str, IPv4Address]) -> None:
    zone = StaticZone(records)
    server = DnsServer(lambda: zone, upstreams=[])
    await server.start(listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"upstream-dns: zone {ZONE} on {server.bound}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shoal.lab.upstream_dns")
    parser.add_argument("--listen", type=_address, action="append", required=True)
    parser.add_argument("--record", type=_record, action="append", default=[])
    args = parser.parse_args(argv)
    records = {**DEFAULT_RECORDS, **dict(args.record)}
    asyncio.run(serve(args.listen, records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
