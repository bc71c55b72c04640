"""Boot the kernel-WireGuard VM, run one command in it, collect its output and exit status.

The VM (tests/vm/assets.py builds it) has no network card (`-nodefaults`): the guest talks
through its serial console, which this module reads line by line, and a writable 9p folder
(`/vmio`) holding the command. The repository is shared read-only at /shoal, so the guest runs
the very source under test. The guest powers itself off after the command (see
tests/vm/guest/init.sh); whatever happens, qemu is killed before `run` returns.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.vm import assets

QEMU = "qemu-system-x86_64"
CONSOLE_DIR = Path("/var/tmp/shoal-vm")  # every run's whole console, the 10 newest kept
_EXIT = re.compile(r"^shoal-vm: exit (\d+)\s*$")
# The guest runs ONE pytest process: importing shoal, pydantic and pyroute2 takes 15-20 s per
# process under emulation. `guest_*.py` keeps these files out of the host's collection.
GUEST_PYTEST = (
    f"{assets.VENV}/bin/python -m pytest"
    " -p no:cacheprovider --color=no -o python_files='guest_*.py' -v -s -rA --durations=0"
    " tests/vm/guest"
)


class VmError(Exception):
    """The VM could not run the command (missing qemu or assets, no boot, timeout)."""


class VmLockedUp(VmError):
    """The guest kernel locked up: both vCPUs stuck in the kernel, a rare hang of software
    emulation (seen about once in 15 runs, in `runc` and dockerd's re-exec'd `exe`), not a
    fault of the command. The guest panics on it (`softlockup_panic=1`), so it ends in seconds;
    a fresh boot does not inherit it."""


# What the guest kernel prints when it is stuck (the soft-lockup watchdog, the RCU stall check).
_LOCKUP = re.compile(r"soft lockup - CPU#\d+ stuck|rcu: INFO: \S+ detected stalls")


@dataclass(frozen=True, slots=True)
class VmRun:
    returncode: int  # the guest command's exit status
    output: str  # the serial console: kernel messages (quiet), then the command's output
    seconds: float  # from starting qemu to its exit


def qemu_argv(directory: Path, io_dir: Path, memory_mb: int, cpus: int) -> list[str]:
    """The qemu command line: software emulation (KVM here only boots specially built guests),
    the uncompressed kernel through its PVH entry, three 9p shares and a serial console."""
    p9 = "security_model=passthrough"
    return [
        QEMU,
        "-nodefaults",
        "-no-reboot",
        "-display",
        "none",
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "max",
        "-smp",
        str(cpus),
        "-m",
        str(memory_mb),
        "-serial",
        "stdio",
        "-kernel",
        str(directory / "vmlinux"),
        "-initrd",
        str(directory / "initramfs.gz"),
        "-append",
        "console=ttyS0 apparmor=0 panic=-1 softlockup_panic=1 quiet",
        "-virtfs",
        f"local,path={directory / 'rootfs'},mount_tag=rootfs,{p9},readonly=on",
        "-virtfs",
        f"local,path={assets.REPO},mount_tag=shoal,{p9},readonly=on",
        "-virtfs",
        f"local,path={io_dir},mount_tag=vmio,{p9}",
    ]


def run(
    command: str,
    *,
    timeout: float,
    memory_mb: int = 3072,
    cpus: int = 2,
    echo: Callable[[str], None] | None = None,
) -> VmRun:
    """Boot the VM, run the shell `command` in /shoal as root, power off; `echo` sees each
    console line as it arrives. VmError when the command's exit status cannot be had."""
    if shutil.which(QEMU) is None:
        raise VmError(f"{QEMU} not found: run `make vm-assets` (installs qemu-system-x86)")
    directory = assets.asset_dir()
    if not assets.ready(directory):
        raise VmError(
            f"VM assets for this recipe are not built ({directory}): run `make vm-assets`"
        )
    lines: list[str] = []
    console = _console_file()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="shoal-vmio-") as io_name:
        io_dir = Path(io_name)
        (io_dir / "cmd").write_text(command + "\n")
        proc = subprocess.Popen(
            qemu_argv(directory, io_dir, memory_mb, cpus),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        reader = threading.Thread(target=_read, args=(proc, lines, console, echo), daemon=True)
        reader.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            error = VmLockedUp if _locked_up(lines) else VmError
            raise error(
                f"the VM did not finish within {timeout:g} s (console: {console}):\n{_tail(lines)}"
            ) from None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            reader.join(10)
    seconds = time.monotonic() - started
    code = next((int(m[1]) for line in lines if (m := _EXIT.match(line))), None)
    if code is None:
        error = VmLockedUp if _locked_up(lines) else VmError
        raise error(
            f"the VM stopped (qemu exit {proc.returncode}) without reporting the command's exit"
            f" status (console: {console}):\n{_tail(lines)}"
        )
    return VmRun(code, "\n".join(lines), seconds)


def run_guest_suite(
    timeout: float = 600, echo: Callable[[str], None] | None = None, boots: int = 2
) -> VmRun:
    """The guest test suite (tests/vm/guest) in one pytest process inside the VM, booted again
    (up to `boots` times in all) when the guest kernel locks up; any other failure counts."""
    for _ in range(boots - 1):
        try:
            return run(GUEST_PYTEST, timeout=timeout, echo=echo)
        except VmLockedUp as exc:
            first_line = str(exc).splitlines()[0]
            print(f"vm: the guest kernel locked up ({first_line}); booting again", flush=True)
    return run(GUEST_PYTEST, timeout=timeout, echo=echo)


def _locked_up(lines: list[str]) -> bool:
    return any(_LOCKUP.search(line) for line in lines)


def _console_file() -> Path:
    CONSOLE_DIR.mkdir(parents=True, exist_ok=True)
    for old in sorted(CONSOLE_DIR.glob("console-*.log"), key=lambda p: p.stat().st_mtime)[:-9]:
        old.unlink(missing_ok=True)
    return CONSOLE_DIR / f"console-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log"


def _read(
    proc: subprocess.Popen[bytes],
    lines: list[str],
    console: Path,
    echo: Callable[[str], None] | None,
) -> None:
    assert proc.stdout is not None
    with console.open("w") as out:
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            lines.append(line)
            out.write(line + "\n")
            out.flush()
            if echo is not None:
                echo(line)


def _tail(lines: list[str], count: int = 40) -> str:
    return "\n".join(lines[-count:]) or "(no console output)"


def main() -> int:
    """`python -m tests.vm.vm [COMMAND]`: run COMMAND (default: the guest suite) in the VM."""
    command = " ".join(sys.argv[1:]) or GUEST_PYTEST
    try:
        result = run(command, timeout=900, echo=lambda line: print(f"vm| {line}", flush=True))
    except VmError as exc:
        print(f"vm: {exc}", file=sys.stderr)
        return 1
    print(f"vm: exit {result.returncode} after {result.seconds:.1f} s", file=sys.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
