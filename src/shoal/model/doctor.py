"""What `shoal doctor` answers: one verdict per check, with the cause and the fix of a failure.

The agent runs the checks (it has the netmap, the adapters and the state); the CLI only renders
a `DoctorReport`. `code` is stable (scripts and tests match on it); `subject` says what was
checked ("this host", a peer's name, the target).
"""

from __future__ import annotations

import enum

from shoal.model.errors import ShoalError
from shoal.model.netmap import Frozen


class UnknownTarget(ShoalError):
    """`shoal doctor TARGET` names no node, container, service or mesh address."""


class Verdict(enum.StrEnum):
    OK = "ok"
    WARN = "warn"  # works, but needs attention soon (a certificate expiring, a skewed clock)
    FAIL = "fail"  # broken: `cause` says why, `fix` what to do
    SKIP = "skip"  # not checked: something it depends on failed (named in `summary`)


class Check(Frozen):
    code: str  # "agent", "server", "certificate", "clock", "wireguard", "forwarding", "routes",
    #            "docker-network", "firewall-table", "firewall-docker", "dns-responder",
    #            "dns-upstream", "container-dns", "peer", "path-mtu", "policy", "target"
    subject: str
    verdict: Verdict
    summary: str  # one line: what was seen
    cause: str | None = None  # for WARN/FAIL: why, as far as the agent can tell
    fix: str | None = None  # for WARN/FAIL: what to do


class DoctorReport(Frozen):
    host: str
    target: str | None = None
    checks: tuple[Check, ...]

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.verdict is Verdict.FAIL)
