"""The VM asset recipe's pure parts: the cache key and the initramfs archive format."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest

from tests.vm import assets


def test_the_cache_directory_is_named_by_the_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    first = assets.asset_dir()
    assert first == assets.asset_dir()
    assert first.parent == assets.CACHE
    monkeypatch.setattr(assets, "GUEST_PACKAGES", (*assets.GUEST_PACKAGES, "strace"))
    assert assets.asset_dir() != first


def test_guest_requirements_are_pinned_to_this_venv() -> None:
    pinned = dict(r.split("==") for r in assets.requirements())
    assert {"pydantic", "pyroute2", "pytest", "pytest-asyncio"} <= set(pinned)
    assert all(version for version in pinned.values())


def test_the_initramfs_archive_is_a_cpio_busybox_reads(tmp_path: Path) -> None:
    buf = io.BytesIO()
    assets._cpio_entry(buf, 1, "bin", 0o040755, b"")
    assets._cpio_entry(buf, 2, "init", 0o100755, b"#!/bin/sh\necho hi\n")
    assets._cpio_entry(buf, 0, "TRAILER!!!", 0, b"")
    archive = tmp_path / "a.cpio"
    archive.write_bytes(buf.getvalue())
    out = subprocess.run(
        ["busybox", "cpio", "-i", "-d"], input=archive.read_bytes(), cwd=tmp_path,
        capture_output=True, check=True,
    )  # fmt: skip
    assert out.returncode == 0
    assert (tmp_path / "init").read_text() == "#!/bin/sh\necho hi\n"
    assert (tmp_path / "init").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "bin").is_dir()
