"""Real images for the lab, built from Debian's packages: Redis, PostgreSQL, a small app and
shoal's sidecar.

There is no image registry here (see LAB.md), so the images are made locally from two bookworm
root filesystems (debootstrap minbase + `apt-get install` in a chroot), each imported into a
host's dockerd once and committed once per image with its own config:

- the examples' root: redis-server, PostgreSQL 15 and Python 3 with the redis and psycopg2
  clients;
  shoal-lab/redis:7      redis-server (protected mode off: the mesh and policies guard it)
  shoal-lab/postgres:15  PostgreSQL, initialised on first start from POSTGRES_USER,
                         POSTGRES_PASSWORD and POSTGRES_DB like Docker's official image
  shoal-lab/app:1        a stdlib HTTP app on :8000 reading and writing REDIS_URL and
                         querying DATABASE_URL (see `shoal.lab.demo_app`)
- the sidecar's root: wireguard-go, wireguard-tools, nftables, iproute2 and Python 3 with a
  virtualenv in /opt/shoal holding shoal's dependencies (wheels for bookworm's Python, fetched
  by this machine's pip: the chroot knows no package index);
  shoal-lab/sidecar:1    `shoal sidecar` as its entrypoint (examples/sidecar), running the
                         shoal this process imports, copied in at load time

Each root filesystem is built once per recipe and kept as a tar in
`/var/cache/shoal-images/<recipe hash>/rootfs.tar` with a manifest (what, how long): the hash
covers the suite, the package lists and what is trimmed, so a machine rebuilds only when they
change. The files (entrypoint, app, shoal's own code) and image configs go in when an image is
loaded, labelled with `images_hash()`: changing the app or shoal costs a commit per host, not a
debootstrap. `python -m shoal.lab.images build` (`make lab-images`) builds both (idempotent;
measured on the 2-core machine: the examples' 63-121 s and 250 MB of tar, the sidecar's 51-91 s
and 205 MB; 0.4 s when cached); `Lab.load_images()` / `shoal lab images [IMAGE...]` loads them
into every host's dockerd (3 hosts in parallel: 21 s the first time, 0.1 s when loaded; the
sidecar alone 7 s, a 199 MB image of which 1.2 MB is shoal's code).
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
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path

import shoal
from shoal.lab.errors import LabError

CACHE = Path("/var/cache/shoal-images")
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# The wheels a root's Python takes: bookworm's glibc is 2.36, so every manylinux_2_N up to it.
GLIBC_MINOR = 36
# Trimmed from every root after installing: documentation, locale sources, apt's caches.
_TRIM_DEBIAN = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/i18n",
    "var/cache/apt",
    "var/lib/apt/lists",
)
_BASE_REPO = "shoal-lab/debian"
LABEL = "shoal-lab.images"  # the images_hash() an image was made from
VENV = "/opt/shoal"  # the sidecar's virtualenv; shoal's own code goes in its app/


@dataclass(frozen=True)
class Rootfs:
    """A root filesystem made from Debian's packages, the inputs its recipe hash covers.

    `python`: a virtualenv at VENV with shoal's own dependencies (`shoal_requirements()`)."""

    packages: tuple[str, ...]
    trim: tuple[str, ...] = _TRIM_DEBIAN
    trim_globs: tuple[str, ...] = ()
    python: bool = False

    def recipe(self) -> dict[str, object]:
        """Every input of the root; its hash names the cache directory and the base image."""
        recipe: dict[str, object] = {
            "version": 1,
            "suite": SUITE,
            "packages": self.packages,
            "trim": (self.trim, self.trim_globs),
        }
        if self.python:
            recipe["python"] = {"requires": shoal_requirements(), "glibc": GLIBC_MINOR}
        return recipe

    def recipe_hash(self) -> str:
        return _digest(self.recipe())

    def cache_dir(self) -> Path:
        return CACHE / self.recipe_hash()

    def base_tag(self) -> str:
        """The imported root's tag on a host: the recipe hash, so a stale base is never
        mistaken for the current one."""
        return f"{_BASE_REPO}:{self.recipe_hash()}"

    def tar(self) -> Path:
        """The built root's tar; LabError naming the command that builds it when missing."""
        tar = self.cache_dir() / "rootfs.tar"
        if not (self.cache_dir() / "manifest.json").is_file():
            raise LabError(
                f"the lab's images are not built ({tar} missing): run `make lab-images` "
                "or `python -m shoal.lab.images build`"
            )
        return tar


EXAMPLES = Rootfs(
    packages=(
        "redis-server",
        "postgresql-15",
        "python3",
        "python3-redis",
        "python3-psycopg2",
        "netcat-openbsd",
        "iproute2",
    ),
    # LLVM with its Z3 (~130 MB) only serves PostgreSQL's JIT compilation (jit=off in the
    # entrypoint, so it never asks for it). Measured: 330 MB of tar before, 250 MB after.
    trim=(
        *_TRIM_DEBIAN,
        "usr/lib/postgresql/15/lib/llvmjit.so",
        "usr/lib/postgresql/15/lib/bitcode",
    ),
    trim_globs=("usr/lib/x86_64-linux-gnu/libLLVM-*.so*", "usr/lib/x86_64-linux-gnu/libz3.so*"),
)
# What `shoal sidecar` runs in a container (examples/sidecar/Dockerfile installs the same):
# wireguard-go where the host's kernel has no WireGuard, `wg` to look at it, `ip` and `nft` to
# look at the rest (no iptables: a host without Docker or subnet routes needs only nft);
# python3-venv for the virtualenv (not its ensurepip).
SIDECAR = Rootfs(
    packages=(
        "python3",
        "python3-venv",
        "wireguard-go",
        "wireguard-tools",
        "iproute2",
        "nftables",
    ),
    python=True,
)
ROOTS = (EXAMPLES, SIDECAR)

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
    """One image committed from a root filesystem: its tag and config (`docker commit -c`)."""

    tag: str
    changes: tuple[str, ...]
    rootfs: Rootfs = EXAMPLES


SIDECAR_IMAGE = "shoal-lab/sidecar:1"
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
    # No VOLUME for the state dir (the Dockerfile has one): an anonymous volume per lab run
    # would outlive `docker rm -f`; the examples mount a named one.
    ImageSpec(
        SIDECAR_IMAGE,
        (f'ENTRYPOINT ["{VENV}/bin/shoal", "sidecar"]', "CMD []", "EXPOSE 51820/udp"),
        SIDECAR,
    ),
)

# The sidecar image's command: shoal's console script, as pip would write it into VENV.
SHOAL_SCRIPT = f"""#!{VENV}/bin/python3
import sys
from shoal.cli.main import main
sys.exit(main())
"""

Files = dict[str, tuple[bytes, int]]  # path in the root -> (content, mode)


def shoal_requirements() -> tuple[str, ...]:
    """shoal's own dependencies (extras left out), as its installed metadata states them."""
    try:
        requires = metadata.requires("shoal") or []
    except metadata.PackageNotFoundError as exc:
        raise LabError("shoal's metadata is missing: install it (pip install -e .)") from exc
    return tuple(sorted(r for r in requires if "extra ==" not in r))


def _shoal_files() -> Files:
    """The shoal package this process imports, for VENV/app (the root's shoal-app.pth puts
    that on the virtualenv's path): the image runs the code under test, not a release."""
    package = Path(shoal.__file__).parent
    return {
        f"{VENV.lstrip('/')}/app/shoal/{path.relative_to(package)}": (path.read_bytes(), 0o644)
        for path in sorted(package.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def _files(rootfs: Rootfs) -> Files:
    """Files written into a root's images when they are loaded."""
    if rootfs == SIDECAR:
        return {f"{VENV.lstrip('/')}/bin/shoal": (SHOAL_SCRIPT.encode(), 0o755), **_shoal_files()}
    app = resources.files("shoal.lab").joinpath("demo_app.py").read_bytes()
    return {
        "usr/local/bin/postgres-entrypoint": (POSTGRES_ENTRYPOINT.encode(), 0o755),
        "usr/local/bin/shoal-demo-app": (app, 0o755),
    }


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def images_hash(rootfs: Rootfs = EXAMPLES) -> str:
    """What a root's committed images are made of: the root, the files and each image's
    config."""
    files = [
        (p, mode, hashlib.sha256(data).hexdigest()) for p, (data, mode) in _files(rootfs).items()
    ]
    configs = [(i.tag, i.changes) for i in IMAGES if i.rootfs == rootfs]
    return _digest([rootfs.recipe_hash(), sorted(files), configs])


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


_CHROOT_ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "DEBIAN_FRONTEND": "noninteractive",
}


def _install_python(root: Path) -> None:
    """VENV in the root with shoal's dependencies. The wheels come through this machine's
    pip (its index and constraints), for the root's Python and glibc, then are byte-compiled
    by the root's own Python."""
    _run(["chroot", str(root), "python3", "-m", "venv", "--without-pip", VENV], env=_CHROOT_ENV)
    (site,) = root.glob(f"{VENV.lstrip('/')}/lib/python3*/site-packages")
    version = site.parent.name.removeprefix("python")  # "3.11"
    platforms = [f"manylinux_2_{minor}_x86_64" for minor in range(17, GLIBC_MINOR + 1)]
    _run([
        sys.executable, "-m", "pip", "install", "--quiet", "--no-compile",
        "--only-binary=:all:", "--target", str(site), "--python-version", version,
        "--implementation", "cp", "--abi", f"cp{version.replace('.', '')}", "--abi", "abi3",
        "--abi", "none", *[a for p in platforms for a in ("--platform", p)],
        *shoal_requirements(),
    ])  # fmt: skip
    shutil.rmtree(site / "bin", ignore_errors=True)  # console scripts naming this machine's Python
    (site / "shoal-app.pth").write_text(f"{VENV}/app\n")
    venv_lib = str(site.relative_to(root).parent.parent)
    _run(["chroot", str(root), f"{VENV}/bin/python3", "-m", "compileall", "-q", f"/{venv_lib}"],
         env=_CHROOT_ENV)  # fmt: skip


def build(rootfs: Rootfs = EXAMPLES) -> Path:
    """Build a root filesystem's tar if its recipe's is not cached; returns the cache dir."""
    out = rootfs.cache_dir()
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
        if any(p.startswith("postgresql") for p in rootfs.packages):
            # The image's entrypoint makes the cluster where the container says (PGDATA); the
            # package's own "main" cluster would only weigh 40 MB.
            conf = root / "etc/postgresql-common/createcluster.conf"
            conf.parent.mkdir(parents=True)
            conf.write_text("create_main_cluster = false\n")
        progress(f"apt-get install {' '.join(rootfs.packages)}")
        with _proc_mounted(root):
            _run(["chroot", str(root), "apt-get", "install", "-y", "-qq",
                  "--no-install-recommends", *rootfs.packages], env=_CHROOT_ENV)  # fmt: skip
            _run(["chroot", str(root), "apt-get", "clean"], env=_CHROOT_ENV)
            if rootfs.python:
                progress(f"{VENV} with {' '.join(shoal_requirements())}")
                _install_python(root)
        for rel in rootfs.trim:
            target = root / rel
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        for pattern in rootfs.trim_globs:
            for target in root.glob(pattern):
                target.unlink()
        (root / "etc/resolv.conf").write_text("")
        policy.unlink()
        progress("tar of the root filesystem")
        _run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(work / "rootfs.tar"), "."])
        shutil.rmtree(root)
        manifest = {
            "recipe": rootfs.recipe(),
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


def select(tags: Collection[str] | None = None) -> tuple[ImageSpec, ...]:
    """The images named by `tags` (every image when None); LabError naming an unknown tag."""
    if tags is None:
        return IMAGES
    unknown = sorted(set(tags) - {i.tag for i in IMAGES})
    if unknown:
        known = ", ".join(i.tag for i in IMAGES)
        raise LabError(f"no lab image {', '.join(unknown)} (the lab's images: {known})")
    return tuple(i for i in IMAGES if i.tag in tags)


def build_for(tags: Collection[str] | None = None) -> None:
    """Build the roots the images named by `tags` (all when None) are committed from."""
    for rootfs in ROOTS:
        if any(i.rootfs == rootfs for i in select(tags)):
            build(rootfs)


def load(docker: Docker, work: Path, tags: Collection[str] | None = None) -> None:
    """Load the images named by `tags` (all when None) into one dockerd (`docker(*args,
    check=True)` runs its CLI); skips images it already has from this recipe (their label says
    which). `work`: a scratch dir.

    Each root filesystem is imported once under its `base_tag()`; one never-started container
    of it gets the files (`docker cp`), and each image is a commit of that container with its
    own config, so the images of a root share its layer and one small layer of files."""
    chosen = select(tags)
    for rootfs in ROOTS:
        group = [i for i in chosen if i.rootfs == rootfs]
        if group:
            _load_root(docker, work, rootfs, group)


def _load_root(docker: Docker, work: Path, rootfs: Rootfs, group: Sequence[ImageSpec]) -> None:
    want = images_hash(rootfs)
    stale = [
        image
        for image in group
        if docker(
            "image", "inspect", "--format", f'{{{{index .Config.Labels "{LABEL}"}}}}', image.tag,
            check=False,
        ).stdout.strip()
        != want
    ]  # fmt: skip
    if not stale:
        return
    base = rootfs.base_tag()
    if docker("image", "inspect", base, check=False).returncode != 0:
        docker("import", str(rootfs.tar()), base, timeout=300)
    files = work / f"files-{want}"
    shutil.rmtree(files, ignore_errors=True)
    for rel, (data, mode) in _files(rootfs).items():
        target = files / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        target.chmod(mode)
    holder = f"shoal-image-{want}"
    docker("rm", "-f", holder, check=False)
    docker("create", "--name", holder, "--network", "none", base, "true")
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
        for rootfs in ROOTS:
            print(build(rootfs) if args.action == "build" else rootfs.cache_dir())
    except LabError as exc:
        print(f"lab-images: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
