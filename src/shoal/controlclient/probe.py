"""One timed look at the control server for `shoal doctor`: reachable, its certificate's
expiry, and its clock (the Date header).

A plain HTTP/1.0 GET of the public `/v1/ca` over a TLS connection verified against the pinned
CA: nothing is signed or sent that a stranger could not send, and the peer certificate is read
from the very connection that answered.
"""

from __future__ import annotations

import asyncio
import email.utils
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

from cryptography import x509

from shoal.controlclient.tls import ssl_context

PROBE_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class ServerProbe:
    """What one probe saw. `error` set: the server could not be reached (or not verified)."""

    error: str | None = None
    rtt_ms: float | None = None  # connect + TLS + one request
    server_time: datetime | None = None  # the Date header (1 s resolution)
    local_time: datetime | None = None  # our clock halfway through the request
    cert_not_after: datetime | None = None  # the server's certificate
    ca_not_after: datetime | None = None  # the last of the trusted CAs (a bundle mid-rotation)


def _ca_not_after(ca_pem: bytes) -> datetime | None:
    try:
        return max(c.not_valid_after_utc for c in x509.load_pem_x509_certificates(ca_pem))
    except ValueError:
        return None


async def probe_server(
    server_url: str, ca_pem: bytes, timeout: float = PROBE_TIMEOUT
) -> ServerProbe:
    """Never raises for the server's or the network's faults: they come back in `error`."""
    ca_after = _ca_not_after(ca_pem)
    parts = urlsplit(server_url)
    host, port = parts.hostname or "", parts.port or 443
    start = time.monotonic()
    sent_at = datetime.now(UTC)
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, ssl=ssl_context(ca_pem))
            peer = writer.get_extra_info("peercert") or {}
            writer.write(f"GET /v1/ca HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
    except ssl.SSLCertVerificationError as exc:
        return ServerProbe(
            error=f"certificate not valid for the pinned CA: {exc.verify_message}",
            ca_not_after=ca_after,
        )
    except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        text = "timed out" if isinstance(exc, TimeoutError) else (str(exc) or type(exc).__name__)
        return ServerProbe(error=f"cannot reach {host}:{port}: {text}", ca_not_after=ca_after)
    finally:
        if writer is not None:
            writer.close()
    rtt = (time.monotonic() - start) * 1000
    local = sent_at + (datetime.now(UTC) - sent_at) / 2
    server_time = None
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "date":
            try:
                server_time = email.utils.parsedate_to_datetime(value.strip())
            except (TypeError, ValueError):
                server_time = None
    not_after = peer.get("notAfter")
    cert_after = (
        datetime.fromtimestamp(ssl.cert_time_to_seconds(not_after), UTC)
        if isinstance(not_after, str)
        else None
    )
    return ServerProbe(
        rtt_ms=rtt,
        server_time=server_time,
        local_time=local,
        cert_not_after=cert_after,
        ca_not_after=ca_after,
    )
