"""The VM runner's contract without a VM: a stand-in for qemu plays the guest's console."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.vm import assets, vm


@pytest.fixture
def fake_qemu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[list[str]]:
    """Assets that look built; `vm.run` starts the argv put in the returned list instead of
    qemu, with the i/o folder (holding the command) as its last argument."""
    monkeypatch.setattr(assets, "asset_dir", lambda: tmp_path)
    monkeypatch.setattr(assets, "ready", lambda directory: True)
    monkeypatch.setattr(vm, "CONSOLE_DIR", tmp_path / "console")
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    script: list[list[str]] = []
    monkeypatch.setattr(vm, "qemu_argv", lambda d, io, m, c: [*script[0], str(io)])
    return script


def test_missing_assets_fail_with_the_command_that_builds_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(assets, "asset_dir", lambda: tmp_path / "nothing")
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    with pytest.raises(vm.VmError, match="make vm-assets"):
        vm.run("true", timeout=5)


def test_missing_qemu_fails_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(vm.VmError, match="qemu-system-x86_64 not found"):
        vm.run("true", timeout=5)


def test_the_guest_commands_exit_status_and_console_come_back(
    fake_qemu: list[list[str]], tmp_path: Path
) -> None:
    fake_qemu.append(["sh", "-c", 'cat "$0/cmd"; echo "[ 1.0] noise"; echo "shoal-vm: exit 3"'])
    seen: list[str] = []
    result = vm.run("pytest -q", timeout=30, echo=seen.append)
    assert result.returncode == 3
    assert seen == ["pytest -q", "[ 1.0] noise", "shoal-vm: exit 3"]
    assert result.output.splitlines() == seen
    [console] = (tmp_path / "console").iterdir()
    assert console.read_text().splitlines() == seen


def test_a_vm_that_stops_without_a_result_fails_with_its_console(
    fake_qemu: list[list[str]],
) -> None:
    fake_qemu.append(["sh", "-c", "echo 'Kernel panic - not syncing'; exit 1"])
    with pytest.raises(vm.VmError, match=r"(?s)qemu exit 1.*without.*Kernel panic"):
        vm.run("true", timeout=30)


def test_a_vm_past_its_timeout_is_killed(fake_qemu: list[list[str]], tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    fake_qemu.append(["sh", "-c", f"echo $$ > {pid_file}; echo booting; exec sleep 60"])
    with pytest.raises(vm.VmError, match=r"(?s)did not finish within 0.5 s.*booting"):
        vm.run("true", timeout=0.5)
    assert not Path(f"/proc/{pid_file.read_text().strip()}").exists()


def test_a_guest_kernel_lockup_is_told_apart(fake_qemu: list[list[str]]) -> None:
    lockup = "[ 128.5] watchdog: BUG: soft lockup - CPU#0 stuck for 44s! [exe:678]"
    fake_qemu.append(["sh", "-c", f"echo '{lockup}'; echo 'Kernel panic'; exit 0"])
    with pytest.raises(vm.VmLockedUp, match="soft lockup"):
        vm.run("true", timeout=30)


def test_the_guest_suite_boots_again_after_a_lockup_only(
    fake_qemu: list[list[str]], tmp_path: Path
) -> None:
    boots = tmp_path / "boots"
    fake_qemu.append(
        [
            "sh",
            "-c",
            f"echo x >> {boots}; if [ $(wc -l < {boots}) = 1 ];"
            " then echo 'rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:'; exit 0; fi;"
            " echo 'shoal-vm: exit 0'",
        ]
    )
    assert vm.run_guest_suite(timeout=30).returncode == 0
    assert len(boots.read_text().splitlines()) == 2
    fake_qemu[0] = ["sh", "-c", "echo 'no result'"]
    with pytest.raises(vm.VmError, match="without reporting"):
        vm.run_guest_suite(timeout=30)
