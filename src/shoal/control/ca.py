"""The server's own CA and TLS certificate, made on first start and kept in the data dir.

    ca.pem / ca.key            EC P-256, 10 years; its sha256 (DER) is pinned by every token
    server.pem / server.key    signed by the CA, re-issued at every start (SANs follow --listen)
    ca.next.pem / .key         a CA being introduced (`shoal server rotate-ca`)
    ca.prev.pem / .key         the CA before the last rotation, still trusted by the bundle

Private keys are written with mode 0600. Clients verify the chain against the CA they pinned
at join, and later against the trust bundle (`GET /v1/trust`: current, next and previous CA)
that they fetch over that verified channel. Rotating the CA is three steps, each followed by a
server restart, and no host joins again:

    1. `shoal server rotate-ca`             makes ca.next; the bundle now holds it too, and
                                             every agent picks the bundle up
    2. `shoal server rotate-ca --finish`    ca → ca.prev, ca.next → ca: the server's
                                             certificate is signed by the new CA, which the
                                             agents already trust; new tokens pin it
    3. `shoal server rotate-ca --drop-previous`  the old CA leaves the bundle
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shoal.control.errors import ServerConfigError
from shoal.model.api import CertKind

CA_DAYS = 3650
SERVER_DAYS = 825
EXPIRY_WARNING = dt.timedelta(days=30)  # `shoal nodes` and `shoal status` warn this early


@dataclass(frozen=True, slots=True)
class CertInfo:
    kind: CertKind
    fingerprint: str
    not_after: dt.datetime


@dataclass(frozen=True, slots=True)
class CertAuthority:
    ca_pem: bytes
    fingerprint: str  # lowercase hex sha256 of the CA certificate's DER
    cert_file: Path
    key_file: Path
    trust_pem: bytes = b""  # the bundle clients trust: current, next and previous CA
    certs: tuple[CertInfo, ...] = ()

    def server_ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def write_private(path: Path, data: bytes) -> None:
    """Write a file atomically with mode 0600 from the start (never briefly world-readable),
    on disk before it replaces the old one."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a stale .tmp keeps its mode through O_CREAT
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def fingerprint_of(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _make_ca(now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    return make_ca(f"shoal CA {socket.gethostname()}", now)


def make_ca(
    common_name: str, now: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A new self-signed CA (P-256, CA_DAYS) that signs certificates and nothing else."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _server_cert(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    hosts: tuple[str, ...],
    now: dt.datetime,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shoal server")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def server_hosts(listen_host: str) -> tuple[str, ...]:
    """The names the server certificate covers: the listen IP, loopback and the hostname."""
    hosts = ["127.0.0.1", "localhost", socket.gethostname()]
    if listen_host not in ("", "0.0.0.0", "::"):
        hosts.insert(0, listen_host)
    return tuple(hosts)


def _info(kind: CertKind, cert: x509.Certificate) -> CertInfo:
    return CertInfo(kind, fingerprint_of(cert), cert.not_valid_after_utc)


def _load_pair(data_dir: Path, stem: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_file, key_file = data_dir / f"{stem}.pem", data_dir / f"{stem}.key"
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    loaded = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise ServerConfigError(f"{key_file} is not an EC private key")
    return cert, loaded


def _write_pair(
    data_dir: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    write_private(data_dir / f"{stem}.key", _key_pem(key))
    write_private(data_dir / f"{stem}.pem", cert.public_bytes(serialization.Encoding.PEM))


class RotationError(ServerConfigError):
    """A CA rotation step asked for in the wrong order."""


def rotate_ca(data_dir: Path, step: str) -> str:
    """One step of a CA rotation (see the module docstring); what happened, in one line.

    `step` is "introduce", "finish" or "drop-previous". The server picks the change up when
    it starts again."""
    have_next = (data_dir / "ca.next.pem").exists()
    have_prev = (data_dir / "ca.prev.pem").exists()
    try:
        if step == "introduce":
            if have_next:
                raise RotationError(
                    "a new CA is already introduced; finish it: shoal server rotate-ca --finish"
                )
            cert, key = _make_ca(dt.datetime.now(dt.UTC))
            _write_pair(data_dir, "ca.next", cert, key)
            return f"introduced CA {fingerprint_of(cert)[:16]}…: restart the server"
        if step == "finish":
            if not have_next:
                raise RotationError("no new CA to switch to; start with: shoal server rotate-ca")
            for ext in ("pem", "key"):
                os.replace(data_dir / f"ca.{ext}", data_dir / f"ca.prev.{ext}")
                os.replace(data_dir / f"ca.next.{ext}", data_dir / f"ca.{ext}")
            cert = x509.load_pem_x509_certificate((data_dir / "ca.pem").read_bytes())
            return (
                f"the server now signs with CA {fingerprint_of(cert)[:16]}…: restart it; join and "
                "admin tokens made before pin the old CA, make new ones"
            )
        if step == "drop-previous":
            if not have_prev:
                raise RotationError("no previous CA to drop")
            for ext in ("pem", "key"):
                (data_dir / f"ca.prev.{ext}").unlink()
            return "the previous CA leaves the trust bundle: restart the server"
    except OSError as exc:
        raise ServerConfigError(f"cannot rotate the CA in {data_dir}: {exc}") from exc
    raise RotationError(f"unknown rotation step {step!r}")


def load_or_create_ca(data_dir: Path, listen_host: str) -> CertAuthority:
    """Load the CA from `data_dir` (creating it on first start) and issue a server cert."""
    now = dt.datetime.now(dt.UTC)
    ca_file, ca_key_file = data_dir / "ca.pem", data_dir / "ca.key"
    try:
        if ca_file.exists() != ca_key_file.exists():
            raise ServerConfigError(
                f"{data_dir} has only one of ca.pem and ca.key; restore the other from a backup "
                "(a new CA would invalidate every token and node)"
            )
        if ca_file.exists():
            ca, ca_key = _load_pair(data_dir, "ca")
        else:
            ca, ca_key = _make_ca(now)
            _write_pair(data_dir, "ca", ca, ca_key)
        cert, key = _server_cert(ca, ca_key, server_hosts(listen_host), now)
        cert_file, key_file = data_dir / "server.pem", data_dir / "server.key"
        write_private(key_file, _key_pem(key))
        write_private(cert_file, cert.public_bytes(serialization.Encoding.PEM))
        infos = [_info("ca", ca), _info("server", cert)]
        trust = [ca]
        rotating: tuple[tuple[str, CertKind], ...] = (
            ("ca.next", "ca-next"),
            ("ca.prev", "ca-previous"),
        )
        for stem, kind in rotating:
            if (data_dir / f"{stem}.pem").exists():
                other = x509.load_pem_x509_certificate((data_dir / f"{stem}.pem").read_bytes())
                trust.append(other)
                infos.append(_info(kind, other))
    except (OSError, ValueError) as exc:
        raise ServerConfigError(f"cannot set up the CA in {data_dir}: {exc}") from exc
    return CertAuthority(
        ca_pem=ca.public_bytes(serialization.Encoding.PEM),
        fingerprint=fingerprint_of(ca),
        cert_file=cert_file,
        key_file=key_file,
        trust_pem=b"".join(c.public_bytes(serialization.Encoding.PEM) for c in trust),
        certs=tuple(infos),
    )
