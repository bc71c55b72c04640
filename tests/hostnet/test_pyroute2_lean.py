"""pyroute2's package `__init__` stays out of the agent's start-up, and in reach of any other
importer. Each case runs in a fresh interpreter: what is imported is per process."""

from __future__ import annotations

import subprocess
import sys


def run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_agent_imports_only_the_pyroute2_modules_it_uses() -> None:
    out = run(
        "import sys, shoal.hostnet, shoal.dataplane.kernel; "
        "print(sorted(m for m in ('pyroute2.ndb', 'pyroute2.ipdb', 'pyroute2.conntrack',"
        " 'pyroute2.iproute.linux') if m in sys.modules))"
    )
    assert out == "['pyroute2.iproute.linux']"


def test_another_importer_still_gets_the_whole_package() -> None:
    out = run(
        "import shoal.hostnet; import pyroute2; from pyroute2 import NDB, IPRoute; "
        "from pyroute2 import config; "
        "print(NDB.__name__, IPRoute.__name__, pyroute2.__version__ != 'unknown', config.__name__)"
    )
    assert out == "NDB IPRoute True pyroute2.config"


def test_pyroute2_imported_first_is_left_as_it_is() -> None:
    out = run("import pyroute2, shoal.hostnet; print(pyroute2.NDB.__name__)")
    assert out == "NDB"
