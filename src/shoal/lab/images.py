"""Real images for the lab, built from Debian's packages: Redis, PostgreSQL and a small app.

There is no image registry here (see LAB.md), so the examples' images are made locally: one
bookworm root filesystem (debootstrap minbase + `apt-get install` in a chroot) holding
redis-server, PostgreSQL 15 and Python 3 with the redis and psycopg2 clients, imported into a
host's dockerd once and committed three times with a different command:

  shoal-lab/redis:7      redis-server (protected mode off: the mesh and policies guard it)
  shoal-lab/postgres:15  PostgreSQL, initialised on first start from POSTGRES_USER,
                         POSTGRES_PASSWORD and POSTGRES_DB like Docker's official image
  shoal-lab/app:1        a stdlib HTTP app on :8000 reading and writing REDIS_URL and
                         querying DATABASE_URL (see `shoal.lab.demo_app`)

The root filesystem is built once per recipe and kept as a tar in
`/var/cache/shoal-images/<recipe hash>/rootfs.tar` with a manifest (what, how long): the hash
covers the suite, the package list and what is trimmed, so a machine rebuilds only when they
change. The files (entrypoint, app) and image configs go in when an image is loaded, labelled
with `images_hash()`: changing the app costs a commit per host, not a debootstrap.
`python -m shoal.lab.images build` builds (idempotent; measured 63-121 s on the 2-core
machine, 250 MB of tar); `Lab.load_images()` / `shoal lab images` loads them into every host's
dockerd (3 hosts in parallel: 21 s the first time, 0.1 s when loaded).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from shoal.lab.errors import LabError

CACHE = Path("/var/cache/shoal-images")
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = (
    "redis-server",
    "postgresql-15",
    "python3",
    "python3-redis",
    "python3-psycopg2",
    "netcat-openbsd",
    "iproute2",
)
# Trimmed from the root after installing: documentation, locale sources, and LLVM with its Z3
# (~130 MB), which PostgreSQL only loads for JIT compilation (jit=off in the entrypoint, so it
# never asks for it). Measured: 330 MB of tar before, see the manifest for after.
_TRIM = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/i18n",
    "var/cache/apt",
    "var/lib/apt/lists",
    "usr/lib/postgresql/15/lib/llvmjit.so",
    "usr/lib/postgresql/15/lib/bitcode",
)
_TRIM_GLOBS = ("usr/lib/x86_64-linux-gnu/libLLVM-*.so*", "usr/lib/x86_64-linux-gnu/libz3.so*")

POSTGRES_ENTRYPOINT = r"""#!/bin/sh
# Initialise the cluster on first start (POSTGRES_USER/PASSWORD/DB as Docker's official image
# names them), then run the server as the postgres user in the foreground.
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
bin=/usr/lib/postgresql/15/bin
as_pg() { setpriv --reuid postgres --regid postgres --init-groups "$@"; }
mkdir -p "$PGDATA" /run/postgresql
chown postgres:postgres "$PGDATA" /run/postgresql
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "postgres: set POSTGRES_PASSWORD" >&2
    exit 1
  fi
  printf '%s\n' "$POSTGRES_PASSWORD" > /tmp/pwfile
  chown postgres /tmp/pwfile
  as_pg "$bin/initdb" -D "$PGDATA" -U "$POSTGRES_USER" --pwfile=/tmp/pwfile \
    --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f /tmp/pwfile
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  as_pg "$bin/pg_ctl" -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
  if [ "$POSTGRES_DB" != postgres ]; then
    as_pg "$bin/createdb" -U "$POSTGRES_USER" -O "$POSTGRES_USER" "$POSTGRES_DB"
  fi
  as_pg "$bin/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
fi
exec setpriv --reuid postgres --regid postgres --init-groups \
  "$bin/postgres" -D "$PGDATA" -c listen_addresses='*' -c jit=off "$@"
"""


@dataclass(frozen=True)
class ImageSpec:
    """One image committed from the root filesystem: its tag and config (`docker commit -c`)."""

    tag: str
    changes: tuple[str, ...]


IMAGES = (
    ImageSpec(
        "shoal-lab/redis:7",
        ('CMD ["redis-server", "--protected-mode", "no"]', "EXPOSE 6379/tcp"),
    ),
    ImageSpec(
        "shoal-lab/postgres:15",
        (
            'ENTRYPOINT ["/usr/local/bin/postgres-entrypoint"]',
            "CMD []",
            "ENV PGDATA=/var/lib/postgresql/data",
            "EXPOSE 5432/tcp",
        ),
    ),
    ImageSpec(
        "shoal-lab/app:1",
        ('CMD ["python3", "/usr/local/bin/shoal-demo-app"]', "EXPOSE 8000/tcp"),
    ),
)
_BASE_REPO = "shoal-lab/debian"
LABEL = "shoal-lab.images"  # the images_hash() an image was made from


def _app_source() -> str:
    return resources.files("shoal.lab").joinpath("demo_app.py").read_text()


def _files() -> dict[str, tuple[str, int]]:
    """Files written into the root: path -> (text, mode)."""
    return {
        "usr/local/bin/postgres-entrypoint": (POSTGRES_ENTRYPOINT, 0o755),
        "usr/local/bin/shoal-demo-app": (_app_source(), 0o755),
    }


def recipe() -> dict[str, object]:
    """Every input of the root filesystem; its hash names the cache directory and the base
    image's tag. The files and image configs are not in it: they go in at load time (a
    changed app costs a commit, not a debootstrap)."""
    return {"version": 1, "suite": SUITE, "packages": PACKAGES, "trim": (_TRIM, _TRIM_GLOBS)}


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def recipe_hash() -> str:
    return _digest(recipe())


def images_hash() -> str:
    """What the committed images are made of: the root, the files and each image's config."""
    return _digest([recipe_hash(), _files(), [(i.tag, i.changes) for i in IMAGES]])


def cache_dir() -> Path:
    return CACHE / recipe_hash()


def base_tag() -> str:
    """The imported root filesystem's tag on a host: the recipe hash, so a stale base is never
    mistaken for the current one."""
    return f"{_BASE_REPO}:{recipe_hash()}"


def rootfs_tar() -> Path:
    """The built root filesystem; LabError naming the command that builds it when missing."""
    tar = cache_dir() / "rootfs.tar"
    if not (cache_dir() / "manifest.json").is_file():
        raise LabError(
            f"the lab's images are not built ({tar} missing): run `make lab-images` "
            "or `python -m shoal.lab.images build`"
        )
    return tar


def progress(message: str) -> None:
    print(f"lab-images: {message}", file=sys.stderr, flush=True)


def _run(argv: Sequence[str], *, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
        raise LabError(f"{' '.join(argv)} exited with {proc.returncode}:\n{tail}")
    return proc.stdout


@contextlib.contextmanager
def _proc_mounted(root: Path) -> Iterator[None]:
    _run(["mount", "-t", "proc", "proc", str(root / "proc")])
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(root / "proc")], check=False)


def build() -> Path:
    """Build the root filesystem tar if this recipe's is not cached; returns the cache dir."""
    out = cache_dir()
    if (out / "manifest.json").is_file():
        return out
    if shutil.which("debootstrap") is None:
        raise LabError("debootstrap not found: run scripts/install-deps.sh")
    started = time.monotonic()
    work = out.with_name(f".{out.name}.{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    root = work / "rootfs"
    root.mkdir(parents=True)
    try:
        progress(f"debootstrap {SUITE} into {root}")
        _run(["debootstrap", "--variant=minbase", SUITE, str(root), MIRROR])
        debootstrap_s = time.monotonic() - started
        shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
        # No service may start inside the chroot (PostgreSQL's postinst would start a cluster).
        policy = root / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        # The image's entrypoint makes the cluster where the container says (PGDATA); the
        # package's own "main" cluster would only weigh 40 MB.
        conf = root / "etc/postgresql-common/createcluster.conf"
        conf.parent.mkdir(parents=True)
        conf.write_text("create_main_cluster = false\n")
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root",
            "DEBIAN_FRONTEND": "noninteractive",
        }
        progress(f"apt-get install {' '.join(PACKAGES)}")
        with _proc_mounted(root):
            _run(["chroot", str(root), "apt-get", "install", "-y", "-qq",
                  "--no-install-recommends", *PACKAGES], env=env)  # fmt: skip
            _run(["chroot", str(root), "apt-get", "clean"], env=env)
        for rel in _TRIM:
            target = root / rel
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        for pattern in _TRIM_GLOBS:
            for target in root.glob(pattern):
                target.unlink()
        (root / "etc/resolv.conf").write_text("")
        policy.unlink()
        progress("tar of the root filesystem")
        _run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(work / "rootfs.tar"), "."])
        shutil.rmtree(root)
        manifest = {
            "recipe": recipe(),
            "debootstrap_s": round(debootstrap_s, 1),
            "build_s": round(time.monotonic() - started, 1),
            "tar_bytes": (work / "rootfs.tar").stat().st_size,
        }
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(work, out)
    finally:
        if work.exists():
            subprocess.run(["umount", "-l", str(root / "proc")], check=False, capture_output=True)
            shutil.rmtree(work, ignore_errors=True)
    progress(f"built {out} in {time.monotonic() - started:.0f} s")
    return out


Docker = Callable[..., "subprocess.CompletedProcess[str]"]


def load(docker: Docker, work: Path) -> None:
    """Load the images into one dockerd (`docker(*args, check=True)` runs its CLI); skips
    images it already has from this recipe (their label says which). `work`: a scratch dir.

    The root filesystem is imported once under `base_tag()`; one never-started container of it
    gets the files (`docker cp`), and each image is a commit of that container with its own
    config, so all of them share the root's layer and one small layer of files."""
    want = images_hash()
    stale = [
        image
        for image in IMAGES
        if docker(
            "image", "inspect", "--format", f'{{{{index .Config.Labels "{LABEL}"}}}}', image.tag,
            check=False,
        ).stdout.strip()
        != want
    ]  # fmt: skip
    if not stale:
        return
    if docker("image", "inspect", base_tag(), check=False).returncode != 0:
        docker("import", str(rootfs_tar()), base_tag(), timeout=300)
    files = work / "files"
    shutil.rmtree(files, ignore_errors=True)
    for rel, (text, mode) in _files().items():
        target = files / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)
    holder = f"shoal-image-{want}"
    docker("rm", "-f", holder, check=False)
    docker("create", "--name", holder, "--network", "none", base_tag(), "true")
    try:
        docker("cp", f"{files}/.", f"{holder}:/")
        for image in stale:
            changes = [f"LABEL {LABEL}={want}", *image.changes]
            docker("commit", *[a for c in changes for a in ("--change", c)], holder, image.tag)
    finally:
        docker("rm", "-f", holder, check=False)
        shutil.rmtree(files, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shoal.lab.images")
    parser.add_argument("action", choices=("build", "path"))
    args = parser.parse_args(argv)
    try:
        print(build() if args.action == "build" else cache_dir())
    except LabError as exc:
        print(f"lab-images: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
