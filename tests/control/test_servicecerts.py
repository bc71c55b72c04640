"""Service certificates through the real API: a node gets one for its own container labelled
shoal.tls=true (its mesh names and IP, from the mesh service CA, usable for both ends of
mTLS), nothing for an unlabelled or foreign container or a forged request; the admin issues
one for a service name."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from shoal.control.app import RunningServer
from shoal.controlclient.errors import ControlRejected
from shoal.model.api import ContainerReport, ContainersReport
from shoal.model.certs import ContainerCertRequest, ServiceCertRequest, new_key_and_csr
from tests.control.servers import Joined, admin_client, join, node_client

WEB_ID, DB_ID = f"{1:064x}", f"{2:064x}"


async def report(server: RunningServer, node: Joined) -> IPv4Address:
    subnet = node.netmap.self_node.subnet
    assert subnet is not None
    ip = subnet[2]
    containers = (
        ContainerReport(
            id=WEB_ID,
            name="web1",
            ip=ip,
            project="app",
            service="web",
            labels=(("shoal.tls", "true"),),
        ),
        ContainerReport(id=DB_ID, name="db", ip=subnet[3]),
    )
    async with node_client(server, node.key) as client:
        await client.report_containers(ContainersReport(containers=containers))
    return ip


def sans(pem: str) -> tuple[list[str], list[IPv4Address]]:
    cert = x509.load_pem_x509_certificate(pem.encode())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return names.get_values_for_type(x509.DNSName), names.get_values_for_type(x509.IPAddress)


async def test_a_labelled_container_gets_its_mesh_names_signed_by_the_service_ca(
    server: RunningServer,
) -> None:
    h1 = await join(server, "h1")
    ip = await report(server, h1)
    _key, csr = new_key_and_csr("web1")
    async with node_client(server, h1.key) as client:
        issued = await client.container_cert(ContainerCertRequest(container_id=WEB_ID, csr=csr))
    assert sans(issued.cert) == (
        ["web1", "web1.shoal", "web1.h1.shoal", "web", "web.shoal", "web.app.shoal"],
        [ip],
    )
    cert = x509.load_pem_x509_certificate(issued.cert.encode())
    ca = x509.load_pem_x509_certificate(issued.ca.encode())
    cert.verify_directly_issued_by(ca)
    assert ca != x509.load_pem_x509_certificate(server.ca.ca_pem)  # not the control plane's
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usage) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}


async def test_no_certificate_for_unlabelled_foreign_or_forged_requests(
    server: RunningServer,
) -> None:
    h1, h2 = await join(server, "h1"), await join(server, "h2")
    await report(server, h1)
    _key, csr = new_key_and_csr("x")
    async with node_client(server, h1.key) as client:
        with pytest.raises(ControlRejected) as unlabelled:
            await client.container_cert(ContainerCertRequest(container_id=DB_ID, csr=csr))
        assert "no label shoal.tls=true" in unlabelled.value.message
        forged = csr.replace(csr.splitlines()[3], csr.splitlines()[3][::-1])
        with pytest.raises(ControlRejected) as bad:
            await client.container_cert(ContainerCertRequest(container_id=WEB_ID, csr=forged))
        assert bad.value.code == "bad_request"
    async with node_client(server, h2.key) as client:  # h1's container is not h2's to name
        with pytest.raises(ControlRejected) as foreign:
            await client.container_cert(ContainerCertRequest(container_id=WEB_ID, csr=csr))
        assert foreign.value.code == "not_found"


async def test_the_admin_issues_one_for_a_service_name(server: RunningServer) -> None:
    _key, csr = new_key_and_csr("billing")
    async with admin_client(server) as admin:
        issued = await admin.service_cert(ServiceCertRequest(service="billing", csr=csr))
    assert sans(issued.cert) == (["billing", "billing.shoal"], [])
