"""Errors of the DNS responder.

ShoalError
└── DnsError            the responder could not do what it was asked
    ├── DnsBindFailed   an address to answer on could not be bound (in use, not on this host)
    └── HostResolverFailed  the host's resolver could not be pointed at the responder

Bad queries and dead upstreams are not errors: they are answered (FORMERR, SERVFAIL) or
dropped, and counted in `DnsServer.stats`.
"""

from __future__ import annotations

from shoal.model.errors import ShoalError


class DnsError(ShoalError):
    """The DNS responder failed; the message says what to do."""


class DnsBindFailed(DnsError):
    def __init__(self, host: str, port: int, detail: str) -> None:
        super().__init__(f"cannot answer DNS on {host}:{port}: {detail}")
        self.host, self.port, self.detail = host, port, detail

    def __reduce__(self) -> tuple[type, tuple[str, int, str]]:  # pickles with its own arguments
        return (type(self), (self.host, self.port, self.detail))


class HostResolverFailed(DnsError):
    """resolvectl failed, or /etc/resolv.conf could not be rewritten."""
