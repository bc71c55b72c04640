"""`shoal relay`: the TCP relay alone (`shoal.control.tcprelay`), on a host of its own (another
region, a host with port 443 free), next to the relay `shoal server` runs itself.

Its data dir holds its identity, made on first start: `relay-auth.key`, the X25519 key node
signatures to it are keyed with (it never sees the server's), and `relay.pem`/`relay.key`, a
self-signed TLS certificate that agents pin by its sha256 (no CA involved). It prints the
line the server needs to announce it (`shoal server --relay-at HOST:PORT,KEY,SHA256`); agents
learn it from their netmap. Which keys are nodes it learns from the server (an admin token of
scope read, `GET /v1/admin/nodes`) every MEMBERS_SECONDS: a removed node loses the relay
within that time, a new one gains it within that time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import ipaddress
import logging
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shoal.control.ca import write_private
from shoal.control.errors import ServerConfigError
from shoal.control.nodeauth import LocalClaims, NodeVerifier, load_or_create_auth_key
from shoal.control.tcprelay import TcpRelay, bind_relay_socket
from shoal.controlclient.client import ControlClient
from shoal.controlclient.errors import ControlError
from shoal.model.keys import PrivateKey, PublicKey

log = logging.getLogger(__name__)

CERT_FILE, CERT_KEY_FILE = "relay.pem", "relay.key"
CERT_DAYS = 3650
MEMBERS_SECONDS = 10.0


@dataclass(frozen=True)
class RelayIdentity:
    key: PrivateKey  # node signatures to this relay are keyed with it
    cert_pem: bytes
    cert_key_pem: bytes
    fingerprint: str  # sha256 of the certificate (DER), hex

    def spec(self, host: str, port: int) -> str:
        """The `--relay-at` value that announces this relay at `host`:`port`."""
        return f"{host}:{port},{self.key.public_key()},{self.fingerprint}"

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        # load_cert_chain reads files only: a private temporary copy, gone once loaded.
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
            cert.write_bytes(self.cert_pem)
            write_private(key, self.cert_key_pem)
            ctx.load_cert_chain(cert, key)
        return ctx


def load_or_create_identity(data_dir: Path, host: str) -> RelayIdentity:
    """The relay's keys and certificate from `data_dir`, made there on first use."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = load_or_create_auth_key(data_dir)
    cert_path, key_path = data_dir / CERT_FILE, data_dir / CERT_KEY_FILE
    if not cert_path.exists() or not key_path.exists():
        cert_pem, key_pem = _self_signed(host)
        write_private(key_path, key_pem)
        cert_path.write_bytes(cert_pem)
    cert_pem = cert_path.read_bytes()
    cert = x509.load_pem_x509_certificate(cert_pem)
    fingerprint = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    return RelayIdentity(key, cert_pem, key_path.read_bytes(), fingerprint)


def _self_signed(host: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shoal relay")])
    sans: list[x509.GeneralName] = []
    try:
        sans.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        sans.append(x509.DNSName(host or "localhost"))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


class Members:
    """The mesh's node keys as the server last listed them."""

    def __init__(self) -> None:
        self.keys: frozenset[PublicKey] = frozenset()
        self.known = False  # a list has come at least once

    def __contains__(self, key: PublicKey) -> bool:
        return key in self.keys

    async def refresh(self, client: ControlClient) -> None:
        nodes = await client.list_nodes()
        keys = {n.public_key for n in nodes} | {n.next_key for n in nodes if n.next_key}
        if frozenset(keys) != self.keys:
            log.info("relay: %d node keys from the server", len(keys))
        self.keys = frozenset(keys)
        self.known = True

    async def follow(self, client: ControlClient) -> None:
        """Refresh every MEMBERS_SECONDS; a failure keeps the last list (logged)."""
        while True:
            try:
                await self.refresh(client)
            except ControlError as exc:
                log.warning("relay: cannot list the mesh's nodes (keeping the last list): %s", exc)
            await asyncio.sleep(MEMBERS_SECONDS)


async def serve_relay(
    host: str, port: int, data_dir: Path, client: ControlClient, announce: str | None = None
) -> None:
    """Run the standalone relay until cancelled. `announce`: the address agents reach it at
    (default `host`; needed when listening on 0.0.0.0)."""
    identity = load_or_create_identity(data_dir, announce or host)
    members = Members()
    relay = TcpRelay(NodeVerifier(identity.key, LocalClaims()), members.__contains__)
    sock = bind_relay_socket(host, port)
    if sock is None:
        raise ServerConfigError(f"cannot listen on {host}:{port} (see the log line above)")
    bound = int(sock.getsockname()[1])
    await relay.serve(sock, identity.ssl_context())
    print(f"shoal relay: add to the server: --relay-at {identity.spec(announce or host, bound)}")
    try:
        await members.follow(client)
    finally:
        await relay.close()
