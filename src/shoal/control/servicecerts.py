"""The mesh service CA: certificates for services' mTLS, kept apart from the control plane's CA.

    service-ca.pem / service-ca.key   EC P-256, 10 years, made on first use in the data dir

A compromised service key or CA never lets anyone impersonate the server to agents, and the
control CA's rotation does not touch services. Leaves live `CERT_LIFETIME`, hold exactly the
names the caller computed (never what the request asks for) and are for both TLS client and
server authentication, so the same pair serves and dials.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import threading
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shoal.control.ca import make_ca, write_private
from shoal.control.errors import BadRequest
from shoal.model.certs import CERT_LIFETIME, IssuedCert

CERT_FILE, KEY_FILE = "service-ca.pem", "service-ca.key"


class ServiceCA:
    """Loads the service CA from `data_dir`, making it on first use (not at server start: a
    mesh that never issues one keeps no key it does not need)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._lock = threading.Lock()
        self._pair: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None

    def ca_pem(self) -> str:
        return self._load()[0].public_bytes(serialization.Encoding.PEM).decode()

    def issue(
        self,
        csr_pem: str,
        names: Sequence[str],
        ips: Sequence[ipaddress.IPv4Address],
        now: dt.datetime,
    ) -> IssuedCert:
        """A leaf for the public key of `csr_pem` (whose signature must hold: the caller has
        the private key) naming `names` and `ips`; BadRequest for a request that is not one."""
        key = _requested_key(csr_pem)
        ca_cert, ca_key = self._load()
        not_after = now + CERT_LIFETIME
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
        sans += [x509.IPAddress(ip) for ip in ips]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_cert.subject)
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))  # clocks differ a little
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        return IssuedCert(
            cert=cert.public_bytes(serialization.Encoding.PEM).decode(),
            ca=self.ca_pem(),
            names=tuple(names),
            not_after=not_after,
        )

    def _load(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        with self._lock:
            if self._pair is None:
                self._pair = _load_or_create(self.data_dir)
            return self._pair


def _requested_key(
    csr_pem: str,
) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey:
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        key = csr.public_key()
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm, InvalidSignature) as exc:
        raise BadRequest(f"csr: not a PEM certificate request ({exc})") from exc
    if not valid:
        raise BadRequest("csr: its signature does not match its key")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
        raise BadRequest(f"csr: an RSA key of {key.key_size} bits (at least 2048)")
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
        raise BadRequest("csr: only EC, RSA (2048+) and Ed25519 keys are signed")
    return key


def _load_or_create(data_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_file, key_file = data_dir / CERT_FILE, data_dir / KEY_FILE
    if cert_file.exists() and key_file.exists():
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey), f"{key_file} holds an EC key"
        return cert, key
    cert, key = make_ca("shoal mesh service CA", dt.datetime.now(dt.UTC))
    write_private(
        key_file,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key
