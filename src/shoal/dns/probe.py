"""One DNS question for `shoal doctor`: does a resolver answer at all, with what rcode and
which addresses; asked from this host (`ask`) or from inside a container (`ask_from`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import dns.asyncquery
import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from shoal.hostnet.netns import run_in_netns_of

PROBE_TIMEOUT = 2.0
DOCKER_RESOLVER = "127.0.0.11"  # Docker's embedded resolver, inside every container


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    rcode: str | None  # "NOERROR", "NXDOMAIN", "REFUSED"...; None: no answer (see error)
    error: str | None = None
    addresses: tuple[str, ...] = ()  # the A records of the answer


def _answer(reply: dns.message.Message) -> DnsAnswer:
    addresses = tuple(
        rdata.to_text()
        for rrset in reply.answer
        if rrset.rdtype == dns.rdatatype.A
        for rdata in rrset
    )
    return DnsAnswer(dns.rcode.to_text(reply.rcode()), addresses=addresses)


async def ask_from(pid: int, name: str, timeout: float = PROBE_TIMEOUT) -> DnsAnswer:
    """An A query for `name` to Docker's embedded resolver, sent from inside the network
    namespace of process `pid` (a container's main process): the way the container's own
    lookups go. Raises HostNetError when that namespace cannot be entered."""

    def one() -> DnsAnswer:
        query = dns.message.make_query(name, "A")
        try:
            return _answer(dns.query.udp(query, DOCKER_RESOLVER, port=53, timeout=timeout))
        except dns.exception.Timeout:
            return DnsAnswer(None, f"no answer within {timeout:g}s")
        except (OSError, dns.exception.DNSException) as exc:
            return DnsAnswer(None, str(exc) or type(exc).__name__)

    return await asyncio.to_thread(run_in_netns_of, pid, one)


async def ask(server: str, port: int, name: str, timeout: float = PROBE_TIMEOUT) -> DnsAnswer:
    """An A query for `name` to server:port over UDP; never raises for the resolver's faults."""
    query = dns.message.make_query(name, "A")
    try:
        reply = await dns.asyncquery.udp(query, server, port=port, timeout=timeout)
    except dns.exception.Timeout:
        return DnsAnswer(None, f"no answer within {timeout:g}s")
    except (OSError, dns.exception.DNSException) as exc:
        return DnsAnswer(None, str(exc) or type(exc).__name__)
    return _answer(reply)
