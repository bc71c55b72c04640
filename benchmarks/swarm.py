"""Docker Swarm in the lab, as the reference users would pick instead of shoal.

Reused by the data-plane benchmark (the VXLAN overlay, and the encrypted overlay this kernel
cannot carry) and by the control-plane benchmark (join time, DNS convergence):

    info = swarm_up(lab)                      # h1 manager, every other host joined (timed)
    create_overlay(info, "benchnet")          # attachable overlay network
    token, seconds = swarm_init(h1)           # or step by step: init, then
    swarm_join_seconds(h2, h1, token)         # each join timed

The swarm goes with the lab (`Lab.destroy`); the control-plane benchmark makes its hosts leave
first, as it joins and leaves h3 repeatedly.

Everything goes through the docker CLI against each lab host's own dockerd.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from shoal.lab import Lab, LabHost

MANAGER_PORT = 2377


@dataclass
class SwarmInfo:
    """A running swarm in a lab: its manager, its workers and how long each join took (s)."""

    lab: Lab
    manager: LabHost
    workers: tuple[LabHost, ...]
    worker_token: str
    init_seconds: float
    join_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def hosts(self) -> tuple[LabHost, ...]:
        return (self.manager, *self.workers)

    def host(self, name: str) -> LabHost:
        return next(h for h in self.hosts if h.name == name)


def swarm_init(manager: LabHost) -> tuple[str, float]:
    """`docker swarm init` on `manager`; returns (worker join token, seconds the init took)."""
    started = time.monotonic()
    manager.docker(
        "swarm",
        "init",
        "--advertise-addr",
        str(manager.underlay_ip),
        "--listen-addr",
        f"{manager.underlay_ip}:{MANAGER_PORT}",
        timeout=60,
    )
    seconds = time.monotonic() - started
    token = manager.docker("swarm", "join-token", "-q", "worker").stdout.strip()
    return token, seconds


def swarm_join_seconds(worker: LabHost, manager: LabHost, token: str) -> float:
    """`docker swarm join` of `worker`; the wall-clock seconds until the command returned."""
    started = time.monotonic()
    worker.docker(
        "swarm",
        "join",
        "--token",
        token,
        "--advertise-addr",
        str(worker.underlay_ip),
        "--listen-addr",
        f"{worker.underlay_ip}:{MANAGER_PORT}",
        f"{manager.underlay_ip}:{MANAGER_PORT}",
        timeout=60,
    )
    return time.monotonic() - started


def swarm_up(lab: Lab, manager: str = "h1") -> SwarmInfo:
    """Init a swarm on `manager` and join every other lab host as a worker (each timed)."""
    boss = lab.host(manager)
    token, init_seconds = swarm_init(boss)
    workers = tuple(h for h in lab.hosts if h.name != manager)
    info = SwarmInfo(lab, boss, workers, token, init_seconds)
    for worker in workers:
        info.join_seconds[worker.name] = swarm_join_seconds(worker, boss, token)
    return info


def create_overlay(info: SwarmInfo, name: str, *, encrypted: bool = False) -> None:
    """An attachable overlay network (VXLAN; IPsec ESP between hosts when `encrypted`)."""
    opts = ["--opt", "encrypted"] if encrypted else []
    info.manager.docker("network", "create", "-d", "overlay", "--attachable", *opts, name)


def kernel_ipsec_support() -> dict[str, bool]:
    """What Swarm's encrypted overlay needs from the kernel: ESP (xfrm) and AES-GCM.

    Read from /proc/crypto (registered algorithms) and /proc/net/xfrm_stat (the XFRM core)."""
    try:
        crypto = Path("/proc/crypto").read_text()
    except OSError:
        crypto = ""
    return {
        "xfrm": Path("/proc/net/xfrm_stat").exists(),
        "gcm_aes": "gcm(aes)" in crypto,
        "rfc4106_gcm_aes": "rfc4106(gcm(aes))" in crypto,
        "esp4": Path("/sys/module/esp4").exists(),
    }
