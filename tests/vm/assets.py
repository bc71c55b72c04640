"""The VM that tests shoal on kernel WireGuard: Debian's own kernel, a busybox initramfs and a
bookworm root filesystem with a Python venv, built from Debian's packages once per recipe.

Why a VM: this machine's kernel has no WireGuard module and cannot load one; Debian's kernel
ships `wireguard.ko` and boots under qemu (software emulation: see docs/kernel-wireguard-vm.md).

Layout of one build, `/var/cache/shoal-vm/<recipe hash>/`:
  vmlinux        the uncompressed kernel (its PVH entry boots ~5 s faster than vmlinuz under TCG)
  initramfs.gz   busybox-static + the modules needed to mount the root (virtio, 9p, overlay)
  rootfs/        debootstrap'ed bookworm, shared read-only over 9p; carries the kernel's whole
                 module tree, so the guest autoloads what docker, iptables and shoal ask for
  manifest.json  what was built from what, and how long it took
The hash covers every input of the recipe (package lists, kernel flavour, the stage-1 init, the
Python requirements pinned to this venv's versions): a machine rebuilds only when it changes.
`python -m tests.vm.assets build` builds (idempotent); `path` prints the directory.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import json
import lzma
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path("/var/cache/shoal-vm")
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
KERNEL_META = "linux-image-amd64"  # depends on the current linux-image-6.1.0-N-amd64
HOST_PACKAGES = ("qemu-system-x86", "debootstrap", "busybox-static", "kmod")
# debootstrap's own resolver handles these; docker.io and friends come after (see _rootfs).
BASE_PACKAGES = ("kmod", "iproute2", "python3", "python3-venv", "procps", "ca-certificates")
GUEST_PACKAGES = (
    "docker.io",
    "wireguard-tools",
    "iptables",
    "nftables",
    "busybox-static",
    "tcpdump",
    "iputils-ping",
)
# The root filesystem is mounted by the initramfs: these (and their dependencies) load there.
INITRAMFS_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
VENV = "/opt/shoal-venv"
GUEST_SRC = "/shoal/src"  # where the guest mounts the repository's src/ (see vm.py)
# Stage 1 (PID 1 of the initramfs): root = 9p read-only + tmpfs overlay, then the repository's
# stage 2 (tests/vm/guest/init.sh, read at boot: editing it needs no rebuild).
STAGE1 = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
die() { echo "shoal-vm: initramfs: $*"; echo o > /proc/sysrq-trigger; sleep 5; }
for m in /modules/*.ko; do insmod "$m" || die "insmod $m failed"; done
p9="trans=virtio,version=9p2000.L,msize=262144"
mkdir -p /ro /rw /newroot
mount -t 9p -o "$p9,ro" rootfs /ro || die "cannot mount the root filesystem (9p tag rootfs)"
mount -t tmpfs -o mode=0755 tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/ro,upperdir=/rw/upper,workdir=/rw/work /newroot \
  || die "overlay on the root filesystem failed"
mkdir -p /newroot/shoal /newroot/vmio
mount -t 9p -o "$p9,ro" shoal /newroot/shoal || die "cannot mount the repository (9p tag shoal)"
mount -t 9p -o "$p9" vmio /newroot/vmio || die "cannot mount the i/o folder (9p tag vmio)"
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /bin/sh /shoal/tests/vm/guest/init.sh
"""


class AssetError(Exception):
    """The VM assets cannot be built or are missing: the message says what to do."""


def progress(message: str) -> None:
    print(f"vm-assets: {message}", file=sys.stderr, flush=True)


def requirements() -> tuple[str, ...]:
    """shoal's runtime dependencies plus the test runner, pinned to this venv's versions so the
    guest runs what the host suite runs."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = [_name(dep) for dep in project["dependencies"]] + ["pytest", "pytest-asyncio"]
    pinned = []
    for name in names:
        try:
            pinned.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError as exc:
            raise AssetError(
                f"{name} is not installed in {sys.prefix}: run `make install`"
            ) from exc
    return tuple(sorted(pinned))


def _name(requirement: str) -> str:
    for i, ch in enumerate(requirement):
        if not (ch.isalnum() or ch in "-_."):
            return requirement[:i]
    return requirement


def recipe() -> dict[str, object]:
    """Every input of a build; its hash names the cache directory."""
    return {
        "version": 1,
        "suite": SUITE,
        "kernel": KERNEL_META,
        "base": BASE_PACKAGES,
        "guest": GUEST_PACKAGES,
        "initramfs_modules": INITRAMFS_MODULES,
        "stage1": STAGE1,
        "venv": VENV,
        "src": GUEST_SRC,
        "requirements": requirements(),
    }


def asset_dir() -> Path:
    digest = hashlib.sha256(json.dumps(recipe(), sort_keys=True).encode()).hexdigest()
    return CACHE / digest[:16]


def ready(directory: Path) -> bool:
    return (directory / "manifest.json").is_file()


def run(argv: Sequence[str], *, env: dict[str, str] | None = None) -> str:
    """Run a build command; its output is kept for the error message only."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
        raise AssetError(f"{' '.join(argv)} exited with {proc.returncode}:\n{tail}")
    return proc.stdout


def _host_packages() -> None:
    missing = [
        p
        for p in HOST_PACKAGES
        if "ok installed"
        not in subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True
        ).stdout
    ]
    if missing:
        progress(f"apt-get install {' '.join(missing)}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run(["apt-get", "update", "-qq"], env=env)
        run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env)


def _kernel(work: Path) -> tuple[str, Path]:
    """Download and unpack Debian's current kernel package; (version, unpacked dir)."""
    depends = run(["apt-cache", "depends", KERNEL_META])
    package = next(
        (
            line.split(":", 1)[1].strip()
            for line in depends.splitlines()
            if line.strip().startswith("Depends: linux-image-")
        ),
        None,
    )
    if package is None:
        raise AssetError(f"apt-cache knows no {KERNEL_META}: run apt-get update")
    version = package.removeprefix("linux-image-")
    progress(f"apt-get download {package}")
    download = work / "deb"
    download.mkdir()
    proc = subprocess.run(
        ["apt-get", "download", package], cwd=download, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise AssetError(f"apt-get download {package} failed:\n{proc.stderr.strip()}")
    unpacked = work / "kernel"
    run(["dpkg-deb", "-x", str(next(download.glob("*.deb"))), str(unpacked)])
    return version, unpacked


def _vmlinux(vmlinuz: Path, out: Path) -> None:
    """The ELF kernel inside a bzImage: the xz stream that decompresses to an ELF image."""
    data = vmlinuz.read_bytes()
    start = 0
    while (at := data.find(b"\xfd7zXZ\x00", start)) >= 0:
        start = at + 1
        try:
            elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[at:])
        except lzma.LZMAError:
            continue
        if elf.startswith(b"\x7fELF"):
            out.write_bytes(elf)
            return
    raise AssetError(f"no xz-compressed ELF kernel found in {vmlinuz}")


def _module_files(kernel: Path, version: str, names: Sequence[str]) -> list[Path]:
    """The .ko files to insmod for `names`, dependencies first, each once."""
    files: list[Path] = []
    for name in names:
        out = run(["modprobe", "-d", str(kernel), "-S", version, "--show-depends", name])
        for line in out.splitlines():
            if line.startswith("insmod "):
                path = Path(line.split()[1])
                if path not in files:
                    files.append(path)
            elif not line.startswith("builtin "):
                raise AssetError(f"modprobe --show-depends {name}: unexpected {line!r}")
    return files


def _initramfs(kernel: Path, version: str, out: Path) -> None:
    """busybox-static as /bin, the root-mounting modules under /modules in load order."""
    modules = _module_files(kernel, version, INITRAMFS_MODULES)
    buf = io.BytesIO()
    # A cpio "newc" archive written by hand: the host has no cpio binary.
    entries: list[tuple[str, int, bytes]] = [
        (d, 0o040755, b"") for d in ("bin", "dev", "proc", "sys", "modules")
    ]
    entries.append(("init", 0o100755, STAGE1.encode()))
    entries.append(("bin/busybox", 0o100755, Path("/bin/busybox").read_bytes()))
    for i, path in enumerate(modules):
        data = path.read_bytes()
        if path.suffix == ".xz":
            data = lzma.decompress(data)
        entries.append((f"modules/{i:02d}-{path.name.split('.')[0]}.ko", 0o100644, data))
    for ino, (name, mode, data) in enumerate(entries, start=1):
        _cpio_entry(buf, ino, name, mode, data)
    _cpio_entry(buf, 0, "TRAILER!!!", 0, b"")
    out.write_bytes(gzip.compress(buf.getvalue()))


def _cpio_entry(buf: io.BytesIO, ino: int, name: str, mode: int, data: bytes) -> None:
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
    buf.write(b"070701" + b"".join(f"{f:08x}".encode() for f in fields) + encoded)
    buf.write(b"\0" * (-(110 + len(encoded)) % 4))
    buf.write(data)
    buf.write(b"\0" * (-len(data) % 4))


@contextlib.contextmanager
def _chroot_mounts(root: Path, binds: Sequence[Path]) -> Iterator[None]:
    """/proc and `binds` (read-only) inside the chroot, for the duration."""
    mounted: list[Path] = []
    try:
        target = root / "proc"
        run(["mount", "-t", "proc", "proc", str(target)])
        mounted.append(target)
        for src in binds:
            target = root / src.relative_to("/")
            target.mkdir(parents=True, exist_ok=True)
            run(["mount", "--bind", "-o", "ro", str(src), str(target)])
            mounted.append(target)
        yield
    finally:
        for target in reversed(mounted):
            subprocess.run(["umount", "-l", str(target)], check=False)


def _pip_sources() -> list[Path]:
    """Local package folders the host's pip is configured with (find-links, file:// indexes)."""
    text = " ".join(
        [
            *(p.read_text() for p in _pip_configs() if p.is_file()),
            *(v for k, v in os.environ.items() if k.startswith("PIP_")),
        ]
    )
    found: list[Path] = []
    for word in text.replace("=", " ").split():
        path = Path(word.removeprefix("file://"))
        if path.is_absolute() and path.is_dir() and path.parts[1] not in ("etc", "usr", "dev"):
            top = Path("/", *path.parts[1:3])
            if top not in found:
                found.append(top)
    return found


def _pip_configs() -> list[Path]:
    return [Path("/etc/pip.conf"), *sorted(Path("/etc/xdg/pip").glob("*"))]


def _rootfs(root: Path, kernel: Path, version: str) -> None:
    started = time.monotonic()
    progress(f"debootstrap {SUITE} into {root} (about 90 s)")
    run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(BASE_PACKAGES)}",
            SUITE,
            str(root),
            MIRROR,
        ]
    )
    progress(f"debootstrap done in {time.monotonic() - started:.0f} s")
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    # No service starts inside the chroot.
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    for conf in _pip_configs():
        if conf.is_file():
            target = root / conf.relative_to("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(conf, target)
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "DEBIAN_FRONTEND": "noninteractive",
        **{k: v for k, v in os.environ.items() if k.startswith("PIP_")},
    }
    chroot = ["chroot", str(root)]
    with _chroot_mounts(root, [Path("/dev")]):
        progress(f"apt-get install {' '.join(GUEST_PACKAGES)} in the chroot")
        run([*chroot, "apt-get", "install", "-y", "-qq", "--no-install-recommends",
             *GUEST_PACKAGES], env=env)  # fmt: skip
        run([*chroot, "apt-get", "clean"], env=env)
    # pip sees the host's package sources and CA bundle (this machine may reach the index
    # through a proxy with a CA of its own).
    pip_binds = [Path("/dev"), Path("/etc/ssl/certs"), *_pip_sources()]
    with _chroot_mounts(root, pip_binds):
        progress(f"venv {VENV} with the guest's python3: {' '.join(requirements())}")
        run([*chroot, "/usr/bin/python3", "-m", "venv", VENV], env=env)
        run([*chroot, f"{VENV}/bin/pip", "install", "-q", *requirements()], env=env)
    for conf in _pip_configs():
        (root / conf.relative_to("/")).unlink(missing_ok=True)
    policy.unlink()
    site = next((root / VENV.lstrip("/")).glob("lib/python3*/site-packages"))
    (site / "shoal-src.pth").write_text(f"{GUEST_SRC}\n")
    script = root / VENV.lstrip("/") / "bin/shoal"
    script.write_text(
        f"#!{VENV}/bin/python\nimport sys\nfrom shoal.cli.main import main\nsys.exit(main())\n"
    )
    script.chmod(0o755)
    (root / "etc/resolv.conf").write_text("# the VM has no network; the lab binds its own\n")
    (root / "etc/hostname").write_text("shoal-vm\n")
    progress("kernel modules into the root filesystem")
    shutil.copytree(kernel / "lib/modules", root / "lib/modules", symlinks=True, dirs_exist_ok=True)
    run(["depmod", "-b", str(root), version])


def build(directory: Path) -> dict[str, object]:
    """Build the assets into `directory` unless they are there; return the manifest."""
    if ready(directory):
        manifest: dict[str, object] = json.loads((directory / "manifest.json").read_text())
        return manifest
    if os.geteuid() != 0:
        raise AssetError("building the VM assets needs root (apt-get, debootstrap, chroot)")
    started = time.monotonic()
    progress(f"building into {directory} (a few minutes, once per recipe)")
    _host_packages()
    progress("apt-get update")
    run(["apt-get", "update", "-qq"])
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(f"{directory}.tmp{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        version, kernel = _kernel(work)
        run(["depmod", "-b", str(kernel), version])
        _vmlinux(kernel / f"boot/vmlinuz-{version}", work / "vmlinux")
        _initramfs(kernel, version, work / "initramfs.gz")
        progress(f"kernel {version}: vmlinux and initramfs ready")
        _rootfs(work / "rootfs", kernel, version)
        shutil.rmtree(kernel)
        shutil.rmtree(work / "deb")
        manifest = {
            "kernel": version,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(time.monotonic() - started, 1),
            "recipe": recipe(),
        }
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        shutil.rmtree(directory, ignore_errors=True)
        work.rename(directory)
    except BaseException:
        _remove(work)
        raise
    progress(f"built in {manifest['build_seconds']} s: {directory}")
    _prune(keep=3)
    return manifest


def _prune(keep: int) -> None:
    """Remove all but the `keep` newest builds (~1 GB each; other worktrees may use the others,
    so not only the current one stays)."""
    builds = sorted(
        (d for d in CACHE.iterdir() if ready(d)), key=lambda d: d.stat().st_mtime, reverse=True
    )
    for old in builds[keep:]:
        progress(f"removing the old build {old}")
        shutil.rmtree(old, ignore_errors=True)


def _remove(work: Path) -> None:
    """Remove a failed build, never through a mount still bound into its chroot."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    inside = [m for m in mounts if m == str(work) or m.startswith(f"{work}/")]
    if inside:
        raise AssetError(f"not removing {work}: still mounted there: {', '.join(inside)}")
    shutil.rmtree(work, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.vm.assets", description=__doc__)
    parser.add_argument("command", choices=("build", "path"))
    args = parser.parse_args(argv)
    try:
        directory = asset_dir()
        if args.command == "path":
            print(directory)
            return 0 if ready(directory) else 1
        manifest = build(directory)
    except AssetError as exc:
        print(f"vm-assets: {exc}", file=sys.stderr)
        return 1
    print(f"vm-assets: {directory} (kernel {manifest['kernel']})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
