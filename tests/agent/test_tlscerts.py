"""A container's certificate directory: written whole (key 0600), renewed with a third left."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from shoal.agent.tlscerts import cert_dir, due, write_bundle
from shoal.control.servicecerts import ServiceCA
from shoal.model.certs import RENEW_BEFORE, new_key_and_csr

NOW = datetime.now(UTC)


def test_the_bundle_is_written_whole_and_renewed_when_a_third_is_left(tmp_path: Path) -> None:
    key_pem, csr = new_key_and_csr("web")
    (tmp_path / "server").mkdir()
    issued = ServiceCA(tmp_path / "server").issue(csr, ["web", "web.shoal"], [], NOW)
    out = cert_dir(tmp_path / "agent", "web")
    assert out == tmp_path / "agent" / "tls" / "web"
    assert due(out, NOW)  # nothing there yet
    write_bundle(out, key_pem, issued)
    assert sorted(p.name for p in out.iterdir()) == ["ca.pem", "cert.pem", "key.pem"]
    assert (out / "key.pem").stat().st_mode & 0o777 == 0o600
    assert (out / "key.pem").read_bytes() == key_pem
    assert not due(out, issued.not_after - RENEW_BEFORE * 2)
    assert due(out, issued.not_after - RENEW_BEFORE / 2)
    (out / "cert.pem").write_text("garbage")
    assert due(out, NOW)  # unreadable: issued again


def test_an_owner_gets_the_directory_and_files_key_still_0600(tmp_path: Path) -> None:
    # An app running as uid 70 in its container (postgres's) must read its own key, and only it.
    key_pem, csr = new_key_and_csr("db")
    (tmp_path / "server").mkdir()
    issued = ServiceCA(tmp_path / "server").issue(csr, ["db", "db.shoal"], [], NOW)
    out = cert_dir(tmp_path / "agent", "db")
    write_bundle(out, key_pem, issued)  # first without the label: root's
    write_bundle(out, key_pem, issued, owner=(70, 71))
    for path in (out, out / "key.pem", out / "cert.pem", out / "ca.pem"):
        assert (path.stat().st_uid, path.stat().st_gid) == (70, 71), path
    assert (out / "key.pem").stat().st_mode & 0o777 == 0o600
    assert not list(out.glob(".*.tmp"))
