"""Certificate files for this host's containers labelled `shoal.tls=true` (see
`shoal.model.certs`): one directory per container, which the container mounts.

    <state-dir>/tls/<container>/key.pem    its private key (0600; made here, never sent)
    <state-dir>/tls/<container>/cert.pem   its certificate: its mesh names and IP
    <state-dir>/tls/<container>/ca.pem     the mesh service CA, to verify its peers with

Each file is replaced by a rename inside the directory, so a reader never sees half a file
(a bind-mounted directory shows the new files; a file bind-mounted alone would not).
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from cryptography import x509

from shoal.model.certs import RENEW_BEFORE, IssuedCert

KEY, CERT, CA = "key.pem", "cert.pem", "ca.pem"


def cert_dir(state_dir: Path, container: str) -> Path:
    return state_dir / "tls" / container


def due(directory: Path, now: datetime) -> bool:
    """No certificate here yet, or less than RENEW_BEFORE of it left (or it is unreadable)."""
    if not all((directory / f).exists() for f in (KEY, CERT, CA)):
        return True
    try:
        cert = x509.load_pem_x509_certificate((directory / CERT).read_bytes())
    except (OSError, ValueError):
        return True
    return cert.not_valid_after_utc - now < RENEW_BEFORE


def write_bundle(
    directory: Path, key_pem: bytes, issued: IssuedCert, owner: tuple[int, int] | None = None
) -> None:
    """Key, certificate and CA into `directory` (made 0700 if missing), each atomically; the
    key first, so a certificate is never next to a key it does not belong to for long.

    `owner` (uid, gid): the directory and files are chowned to it (the container's app user
    reads its key); None leaves them to the writer (root)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if owner is not None:
        os.chown(directory, *owner)
    _replace(directory / KEY, key_pem, 0o600, owner)
    _replace(directory / CERT, issued.cert.encode(), 0o644, owner)
    _replace(directory / CA, issued.ca.encode(), 0o644, owner)


def _replace(path: Path, data: bytes, mode: int, owner: tuple[int, int] | None) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
        if owner is not None:  # before the rename: the key is never readable by the old owner
            os.fchown(fd, *owner)
    finally:
        os.close(fd)
    os.replace(tmp, path)
