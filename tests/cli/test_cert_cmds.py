"""`shoal cert issue SERVICE` against a real server subprocess: the files, and a bad name."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from tests.control.test_cli import server_dir, shoal

__all__ = ["server_dir"]  # the fixture, used by name


def test_issue_writes_key_cert_and_ca_for_the_services_names(
    server_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "billing-tls"
    done = shoal("cert", "issue", "billing", "--out", str(out), "--data-dir", str(server_dir))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"certificate for billing, billing.shoal in {out}/")
    cert = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate((out / "ca.pem").read_bytes()))
    assert (out / "key.pem").stat().st_mode & 0o777 == 0o600
    assert (server_dir / "service-ca.key").stat().st_mode & 0o777 == 0o600


def test_a_bad_service_name_is_one_line(server_dir: Path, tmp_path: Path) -> None:
    done = shoal(
        "cert", "issue", "Bad_Name", "--out", str(tmp_path / "x"), "--data-dir", str(server_dir)
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "service" in done.stderr
