"""The pyroute2 classes shoal uses, imported without running the package's `__init__`.

    from shoal.hostnet.pyroute2_lean import AsyncIPRoute, NetlinkError, WireGuard

pyroute2's `__init__` imports every module it has (NDB, IPDB, conntrack, ethtool, IPVS,
nl80211, ...) to offer them all as `pyroute2.X`: ~50 ms of CPU in the agent's start-up, on
the way to a join's first packet, for three classes. Here the package module is registered
unexecuted, and only the modules of these classes load. Its `__init__` runs in full the first
time anything asks the package for a name it does not have yet (`from pyroute2 import NDB`
elsewhere in the process), so every other importer still sees the whole package.
"""

from __future__ import annotations

import importlib.util
import sys
from importlib.machinery import PathFinder
from typing import Any


def _register_unexecuted(name: str) -> None:
    """Put package `name` in sys.modules without running its `__init__` until a missing
    attribute is asked of it; nothing when it is imported already (or not installed: the
    imports below then fail as usual)."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return
    package = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def complete(attr: str) -> Any:
        # PEP 562: called only for names the module lacks. A submodule not imported yet
        # (`from pyroute2 import config`, within pyroute2) is not one: the import system
        # imports it when this says there is no such attribute.
        if PathFinder.find_spec(f"{name}.{attr}", package.__path__) is not None:
            raise AttributeError(attr)
        # Off first: the `__init__` imports its submodules, which must not come back here.
        del package.__dict__["__getattr__"]
        loader.exec_module(package)
        return getattr(package, attr)

    package.__dict__["__getattr__"] = complete
    sys.modules[name] = package


_register_unexecuted("pyroute2")

from pyroute2.iproute.linux import AsyncIPRoute  # noqa: E402
from pyroute2.netlink.exceptions import NetlinkError  # noqa: E402
from pyroute2.netlink.generic.wireguard import WireGuard  # noqa: E402

__all__ = ["AsyncIPRoute", "NetlinkError", "WireGuard"]
