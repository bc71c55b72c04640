"""Service certificates as an operator uses them, in the lab: two containers on two hosts,
labelled `shoal.tls=true` and mounting their agent's certificate directory, do mutual TLS
with what shoal wrote there (the server checks the client's certificate, the client checks
the server's name `tls-a.shoal`); a client with no certificate, or one from another CA, is
refused. The TLS ends run in each container's network namespace (the lab image has no TLS
stack): the files are the ones the containers mount.
"""

from __future__ import annotations

import datetime as dt
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shoal.agent.tlscerts import CA, CERT, KEY, cert_dir
from shoal.lab import IMAGE, Lab, LabHost
from tests.e2e.runbook import up, wait_until

pytestmark = pytest.mark.e2e

PORT = 8443

# Serves mTLS on argv[1] with cert, key, CA (argv[2:5]): requires a client certificate signed
# by the CA and answers with the client's common name.
_SERVER = textwrap.dedent(
    """
    import socket, ssl, sys
    port, cert, key, ca = int(sys.argv[1]), *sys.argv[2:5]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    with socket.create_server(("0.0.0.0", port)) as s:
        while True:
            conn, _ = s.accept()
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    subject = dict(x[0] for x in tls.getpeercert()["subject"])
                    tls.sendall(subject["commonName"].encode())
            except (ssl.SSLError, OSError):
                pass
    """
)
# Dials argv[1]:argv[2] expecting the name argv[3], trusting CA argv[4], presenting the cert
# and key argv[5:7] if given; prints what the server answered, or the error.
_CLIENT = textwrap.dedent(
    """
    import socket, ssl, sys
    ip, port, name, ca, *mine = sys.argv[1:]
    ctx = ssl.create_default_context(cafile=ca)
    if mine:
        ctx.load_cert_chain(*mine)
    try:
        with socket.create_connection((ip, int(port)), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname=name) as tls:
                print("answer:", tls.recv(100).decode())
    except (ssl.SSLError, OSError) as exc:
        print("refused:", type(exc).__name__)
    """
)


def in_container(host: LabHost, name: str, script: str, *args: str) -> list[str]:
    return ["nsenter", "-t", str(host.container_pid(name)), "-n", sys.executable, "-c", script,
            *args]  # fmt: skip


def files(host: LabHost, container: str) -> tuple[str, str, str]:
    d = cert_dir(host.state_dir, container)
    return str(d / CERT), str(d / KEY), str(d / CA)


@pytest.fixture(scope="module")
def pair(lab: Lab, join_token: str) -> Iterator[tuple[LabHost, LabHost]]:
    """tls-a on h1 serving mTLS on 8443, tls-b on h2; both labelled and mounting their dirs."""
    h1, h2 = lab.hosts[:2]
    both = ((h1, "tls-a"), (h2, "tls-b"))
    for host, _name in both:
        up(lab, host, join_token)  # "already running" when another module joined it
    start = time.monotonic()
    for host, name in both:
        mount = f"{cert_dir(host.state_dir, name)}:/tls:ro"
        host.run_container(name, image=IMAGE, options=("--label", "shoal.tls=true", "-v", mount))

    def written() -> bool:
        return all(Path(f).exists() for host, name in both for f in files(host, name))

    wait_until("both certificates", written)
    print(f"certificates written {time.monotonic() - start:.2f}s after the first docker run")
    server = h1.popen(in_container(h1, "tls-a", _SERVER, str(PORT), *files(h1, "tls-a")),
                      log=h1.dir / "mtls-server.log")  # fmt: skip
    try:
        # Until it listens the dial is refused by TCP; then by TLS (no client certificate).
        wait_until("the mTLS server", lambda: "ConnectionRefused" not in dial(h1, h2))
        yield h1, h2
    finally:
        server.terminate()
        server.wait(timeout=10)
        for host, name in ((h1, "tls-a"), (h2, "tls-b")):
            host.docker("rm", "-f", name, check=False)


def dial(h1: LabHost, h2: LabHost, *mine: str) -> str:
    """tls-b (on h2) dials tls-a as tls-a.shoal; what it got back."""
    ip = str(h1.container_ip("tls-a"))
    _cert, _key, ca = files(h2, "tls-b")
    argv = in_container(h2, "tls-b", _CLIENT, ip, str(PORT), "tls-a.shoal", ca, *mine)
    return h2.exec(argv, timeout=30).stdout.strip()


def test_containers_do_mutual_tls_with_the_certificates_shoal_wrote(
    pair: tuple[LabHost, LabHost],
) -> None:
    h1, h2 = pair
    # The container sees them where it mounted them.
    assert "BEGIN CERTIFICATE" in h2.container_exec("tls-b", ["cat", "/tls/cert.pem"]).stdout
    cert, key, _ca = files(h2, "tls-b")
    assert dial(h1, h2, cert, key) == "answer: tls-b"


def test_a_client_without_a_valid_certificate_is_refused(
    pair: tuple[LabHost, LabHost], tmp_path: Path
) -> None:
    h1, h2 = pair
    assert dial(h1, h2).startswith("refused:")  # no certificate at all
    # A self-signed certificate for the right name: not from the mesh's CA, refused.
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "tls-b")])
    now = dt.datetime.now(dt.UTC)
    rogue = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    cert, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(rogue.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert dial(h1, h2, str(cert), str(key_file)).startswith("refused:")


def test_an_app_user_reads_its_key_given_the_owner_label(pair: tuple[LabHost, LabHost]) -> None:
    h1, _h2 = pair
    mount = f"{cert_dir(h1.state_dir, 'tls-c')}:/tls:ro"
    labels = ("--label", "shoal.tls=true", "--label", "shoal.tls.owner=1000")
    h1.run_container("tls-c", image=IMAGE, options=(*labels, "--user", "1000", "-v", mount))
    try:
        _cert, key, _ca = files(h1, "tls-c")
        wait_until("tls-c's certificate", lambda: Path(key).exists())
        # The app's user (1000, not root) reads its key; the key stays 0600.
        got = h1.container_exec("tls-c", ["head", "-1", "/tls/key.pem"], check=False)
        assert "PRIVATE KEY" in got.stdout, got.stderr
        assert Path(key).stat().st_mode & 0o777 == 0o600
    finally:
        h1.docker("rm", "-f", "tls-c", check=False)
