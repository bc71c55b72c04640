"""shoal on kernel WireGuard, tested for real: the guest suite (tests/vm/guest) in a VM that
boots Debian's own kernel, whose wireguard module this machine's kernel lacks.

Needs the assets of `make vm-assets` (`make test` builds them first); without them, or without
qemu, the test fails and says so. About 5 minutes of software emulation: see
docs/kernel-wireguard-vm.md.
"""

from __future__ import annotations

import re

import pytest

from tests.vm import vm

pytestmark = pytest.mark.e2e

# The guest's short summary (-rA: one line per test), its closing line and the boot's result.
_RESULT = re.compile(r"^(PASSED|FAILED|ERROR) |^=+ .* in [0-9.]+s.* =+$|^shoal-vm: ")


@pytest.mark.timeout(2 * 1200 + 300)  # two boots at most (see vm.run_guest_suite)
def test_the_guest_suite_passes_on_kernel_wireguard() -> None:
    try:
        result = vm.run_guest_suite(timeout=1200)
    except vm.VmError as exc:
        pytest.fail(f"the kernel-WireGuard VM could not run: {exc}", pytrace=False)
    lines = result.output.splitlines()
    summary = [line for line in lines if _RESULT.search(line)]
    print("\n".join(["guest:", *summary, f"VM run: {result.seconds:.0f} s"]))
    assert result.returncode == 0, "\n".join(lines[-80:])
