"""One DNS question for `shoal doctor`: does a resolver answer at all, and with what rcode."""

from __future__ import annotations

from dataclasses import dataclass

import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode

PROBE_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    rcode: str | None  # "NOERROR", "NXDOMAIN", "REFUSED"...; None: no answer (see error)
    error: str | None = None


async def ask(server: str, port: int, name: str, timeout: float = PROBE_TIMEOUT) -> DnsAnswer:
    """An A query for `name` to server:port over UDP; never raises for the resolver's faults."""
    query = dns.message.make_query(name, "A")
    try:
        reply = await dns.asyncquery.udp(query, server, port=port, timeout=timeout)
    except dns.exception.Timeout:
        return DnsAnswer(None, f"no answer within {timeout:g}s")
    except (OSError, dns.exception.DNSException) as exc:
        return DnsAnswer(None, str(exc) or type(exc).__name__)
    return DnsAnswer(dns.rcode.to_text(reply.rcode()))
