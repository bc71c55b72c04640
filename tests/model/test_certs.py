"""What a service certificate names, and the key and request a host makes for it."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from shoal.model.certs import (
    cert_owner,
    container_names,
    new_key_and_csr,
    service_names,
    wants_cert,
)
from shoal.model.netmap import Container


def box(**kw: object) -> Container:
    return Container(
        id="a" * 64,
        node_id="n1",
        name="Web1",
        ip=IPv4Address("10.42.1.2"),
        **kw,  # type: ignore[arg-type]
    )


def test_a_container_is_named_as_the_mesh_dns_names_it() -> None:
    assert container_names(box(), "h1") == ("web1", "web1.shoal", "web1.h1.shoal")
    composed = box(project="app", service="web")
    assert container_names(composed, "h1")[3:] == ("web", "web.shoal", "web.app.shoal")
    assert service_names("billing") == ("billing", "billing.shoal")


def test_only_the_label_asks_for_one() -> None:
    assert not wants_cert(box())
    assert not wants_cert(box(labels=(("shoal.tls", "false"),)))
    assert wants_cert(box(labels=(("shoal.tls", "true"),)))


def test_the_request_carries_the_new_keys_public_half() -> None:
    key_pem, csr_pem = new_key_and_csr("web1")
    key = serialization.load_pem_private_key(key_pem, password=None)
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    assert csr.is_signature_valid
    assert csr.public_key() == key.public_key()


def test_the_owner_label_gives_uid_and_gid_and_refuses_names() -> None:
    assert cert_owner(box(labels=(("shoal.tls", "true"),))) is None
    assert cert_owner(box(labels=(("shoal.tls.owner", "70"),))) == (70, 70)
    assert cert_owner(box(labels=(("shoal.tls.owner", "101:0"),))) == (101, 0)
    for bad in ("postgres", "70:", ":70", "-1", "70:x"):
        with pytest.raises(ValueError, match=r"shoal\.tls\.owner"):
            cert_owner(box(labels=(("shoal.tls.owner", bad),)))
