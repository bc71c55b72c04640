"""A DNS probe inside a container: the time a name starts or stops resolving there, measured
by a resolver loop in the container's network namespace (no `docker exec` start-up timed)."""

from __future__ import annotations

import subprocess
import sys

from shoal.lab import LabError, LabHost

# Runs inside a container's network namespace: answers "present NAME" / "absent NAME" on stdin
# with the CLOCK_MONOTONIC time (system-wide) at which the condition first held.
_PROBE = r"""
import sys, time
import dns.message, dns.query, dns.rcode, dns.rdatatype
def present(name):
    q = dns.message.make_query(name, dns.rdatatype.A)
    try:
        r = dns.query.udp(q, "127.0.0.11", timeout=0.25)
    except Exception:
        return None
    return r.rcode() == dns.rcode.NOERROR and any(a.rdtype == dns.rdatatype.A for a in r.answer)
for line in sys.stdin:
    want, name = line.split()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        # Absent = no A answer, whatever the reason (NXDOMAIN, SERVFAIL, silence).
        if bool(present(name)) == (want == "present"):
            break
        time.sleep(0.003)
    print(f"{time.monotonic() if time.monotonic() < deadline else -1}", flush=True)
"""


class Prober:
    """The resolver loop in `container`'s network namespace on `host`."""

    def __init__(self, host: LabHost, container: str) -> None:
        pid = host.container_pid(container)
        self._proc = subprocess.Popen(
            ["nsenter", "-t", str(pid), "-n", sys.executable, "-c", _PROBE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def wait(self, want: str, name: str) -> float:
        """Block until `name` is `want` ("present" | "absent"); CLOCK_MONOTONIC seconds."""
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(f"{want} {name}\n")
        self._proc.stdin.flush()
        when = float(self._proc.stdout.readline())
        if when < 0:
            raise LabError(f"DNS probe: {name} not {want} after 30 s")
        return when

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        self._proc.wait(10)
