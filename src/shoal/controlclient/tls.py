"""Trust on first use, pinned: the token carries the CA fingerprint, the CA becomes the root.

`fetch_pinned_ca` downloads the server's CA over an unverified connection and accepts it only if
its sha256 matches the fingerprint from the join (or admin) token; every later connection
verifies the server's chain against that CA alone (`ssl_context`). Nothing secret is sent over
the unverified connection. Token texts:

    SHOAL-1-<ca sha256 hex, 64>-<secret hex, 32>         join token
    SHOAL-ADMIN-1-<ca sha256 hex, 64>-<secret hex, 32>   admin token
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ssl
from datetime import datetime

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from shoal.controlclient.errors import ControlUnreachable, FingerprintMismatch

CA_FETCH_TIMEOUT = 10.0


def ca_fingerprint(ca_pem: bytes) -> str:
    """Lowercase hex sha256 of the certificate's DER encoding."""
    try:
        cert = x509.load_pem_x509_certificate(ca_pem)
    except ValueError as exc:
        raise ValueError(f"not a PEM certificate: {exc}") from exc
    return _fingerprint(cert)


def bundle_fingerprints(bundle_pem: bytes) -> set[str]:
    """`ca_fingerprint` of each certificate of a pinned bundle (two during a CA rotation)."""
    return {_fingerprint(cert) for cert in x509.load_pem_x509_certificates(bundle_pem)}


def _fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


async def fetch_pinned_ca(server_url: str, fingerprint: str) -> bytes:
    """GET the server's CA (PEM) and return it if its sha256 matches `fingerprint`; with
    several URLs (`A,B`), from the first replica that answers.

    Raises `ControlUnreachable` if no server can be reached and `FingerprintMismatch` if one
    answers with another CA (a different server, or someone in between).
    """
    urls = [u.strip().rstrip("/") for u in server_url.split(",") if u.strip()]
    for url in urls[:-1]:
        try:
            return await _fetch_pinned_ca(url, fingerprint)
        except ControlUnreachable:
            continue
    return await _fetch_pinned_ca(urls[-1] if urls else server_url, fingerprint)


async def _fetch_pinned_ca(server_url: str, fingerprint: str) -> bytes:
    url = server_url + "/v1/ca"
    timeout = aiohttp.ClientTimeout(total=CA_FETCH_TIMEOUT)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url, ssl=False) as resp,
        ):
            if resp.status != 200:
                raise ControlUnreachable(
                    f"cannot reach server at {server_url}: GET /v1/ca answered {resp.status}"
                )
            body = await resp.read()
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise ControlUnreachable(f"cannot reach server at {server_url}: {_describe(exc)}") from exc
    try:
        got = ca_fingerprint(body)
    except ValueError as exc:
        raise FingerprintMismatch(
            f"server at {server_url} did not send a CA certificate; is it a shoal server?"
        ) from exc
    if not hmac.compare_digest(got, fingerprint.lower()):
        raise FingerprintMismatch(
            f"server at {server_url} has CA fingerprint {got[:16]}…, the token expects "
            f"{fingerprint[:16]}…: wrong server URL, or a token from another server"
        )
    return body


def trust_bundle(pem: bytes) -> tuple[bytes, tuple[datetime, ...]]:
    """A PEM bundle of CA certificates normalised (one PEM each, in order) and their expiry
    times; `ValueError` if it holds no certificate or something else."""
    certs = x509.load_pem_x509_certificates(pem)
    if not certs or any(not _is_ca(c) for c in certs):
        raise ValueError("not a bundle of CA certificates")
    return b"".join(c.public_bytes(Encoding.PEM) for c in certs), tuple(
        c.not_valid_after_utc for c in certs
    )


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def ssl_context(ca_pem: bytes) -> ssl.SSLContext:
    """A client context that trusts exactly this CA.

    Hostnames are not checked: agents reach the server by whatever address routes, and the
    pinned private CA (whose key never leaves the server) is the trust root, as in Swarm.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=ca_pem.decode())
    return ctx


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]
