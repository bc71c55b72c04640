"""The lab's container image: a busybox rootfs as a tar, built once per lab root."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

from shoal.lab.errors import LabError

IMAGE = "shoal-lab/busybox:latest"
BUSYBOX = Path("/bin/busybox")  # busybox-static: no libc needed in the image
_DIRS = ("bin", "dev", "etc", "proc", "root", "sys", "tmp", "var", "var/www")


def busybox_tar(root: Path) -> Path:
    """Return `root/.image/busybox.tar`: bin/busybox plus a symlink per applet, built if missing."""
    out = root / ".image" / "busybox.tar"
    if out.exists():
        return out
    if not BUSYBOX.exists():
        raise LabError(f"{BUSYBOX} not found: install busybox-static: run scripts/install-deps.sh")
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".busybox.tar.{os.getpid()}")
    with tarfile.open(tmp, "w") as tar:
        for d in _DIRS:
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        data = BUSYBOX.read_bytes()
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
        for name in sorted(set(applets) - {"busybox"}):
            link = tarfile.TarInfo(f"bin/{name}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
    os.replace(tmp, out)
    return out
