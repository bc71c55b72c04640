"""Certificates for services (mTLS at the application layer without running a PKI by hand).

The server keeps a mesh service CA, separate from the CA that secures the control plane. A
container labelled `shoal.tls=true` gets a certificate for its mesh names (and its IP) from its
host's agent, which makes the key, asks the server to sign it and writes key, certificate and
CA bundle into a directory the container mounts, renewing it before it expires. The admin
issues one for a service name with `shoal cert issue SERVICE`. The server decides the names,
whatever the request asks for: a node gets names only for its own containers.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import Field

from shoal.model.api import CONTAINER_ID, NAME_PATTERN
from shoal.model.netmap import Container, Frozen

TLS_LABEL = ("shoal.tls", "true")  # the label that asks for a certificate
# Short-lived: renewal is automatic, and a removed container's certificate soon stops working.
CERT_LIFETIME = timedelta(hours=24)
RENEW_BEFORE = CERT_LIFETIME / 3  # the agent renews once less than this is left
MAX_CSR = 4096  # bytes of PEM: an EC or RSA-4096 request with no extensions fits


class ContainerCertRequest(Frozen):
    """`POST /v1/certs` (signed by the node): sign `csr` for one of this node's containers."""

    container_id: str = Field(pattern=CONTAINER_ID)
    csr: str = Field(max_length=MAX_CSR)  # PEM; only its public key is used


class ServiceCertRequest(Frozen):
    """`POST /v1/admin/certs` (`shoal cert issue SERVICE`): sign `csr` for a service name."""

    service: str = Field(pattern=NAME_PATTERN)
    csr: str = Field(max_length=MAX_CSR)


class IssuedCert(Frozen):
    cert: str  # PEM, the leaf
    ca: str  # PEM, the service CA to trust (peers verify each other against it)
    names: tuple[str, ...]  # the DNS names it holds
    not_after: datetime


def wants_cert(container: Container) -> bool:
    return TLS_LABEL in container.labels


# `shoal.tls.owner=UID[:GID]`: who owns the written files, for an app that does not run as
# root in its container (a 0600 root-owned key is unreadable to it). GID defaults to UID.
OWNER_LABEL = "shoal.tls.owner"


def cert_owner(container: Container) -> tuple[int, int] | None:
    """The (uid, gid) `container`'s OWNER_LABEL asks for; None without the label. Raises
    ValueError naming the label for anything but numeric ids (names differ per image)."""
    text = dict(container.labels).get(OWNER_LABEL)
    if text is None:
        return None
    uid, sep, gid = text.partition(":")
    if not uid.isdigit() or (sep and not gid.isdigit()):
        raise ValueError(f"label {OWNER_LABEL}={text!r}: expected UID or UID:GID, numeric")
    return int(uid), int(gid or uid)


def container_names(container: Container, node: str, zone: str = "shoal") -> tuple[str, ...]:
    """The DNS names the mesh serves for `container` on `node` (see `shoal.dns.records`):
    its name, and its compose service's names if it has one; what its certificate holds."""
    names = [container.name, f"{container.name}.{zone}", f"{container.name}.{node}.{zone}"]
    if container.service is not None:
        names += [container.service, f"{container.service}.{zone}"]
        if container.project is not None:
            names.append(f"{container.service}.{container.project}.{zone}")
    return tuple(dict.fromkeys(n.lower() for n in names))


def service_names(service: str, zone: str = "shoal") -> tuple[str, ...]:
    """What `shoal cert issue SERVICE` certifies: the service's mesh names."""
    return (service, f"{service}.{zone}")


def new_key_and_csr(common_name: str) -> tuple[bytes, str]:
    """A new EC P-256 private key (PEM, PKCS#8) and a request for it (PEM): the key never
    leaves the host that made it; the server signs the request's public key."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM).decode()
