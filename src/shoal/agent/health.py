"""The agent's state and its named health warnings: what `shoal status` shows instead of log
spam. Every warning has a stable code; the state follows from them."""

from __future__ import annotations

from datetime import datetime

from shoal.agent.clock import Clock
from shoal.model.status import AgentState, HealthWarning

# The server refused this node for good (credential revoked, node removed): nothing the agent
# retries can fix it, the operator has to join again. Its message carries the command.
NEEDS_JOIN = "needs-join"
CONTROL_UNREACHABLE = "control-unreachable"
CONTROL_PROTOCOL = "control-protocol"  # the server answered nonsense: a bug on one side
CONTAINERS_REJECTED = "containers-rejected"
NETMAP_CACHE = "netmap-cache-failed"  # the last netmap could not be written to disk
CA_EXPIRING = "ca-expiring"  # every CA this node trusts expires within 30 days
STATE_FILE_RESET = "state-file-reset"  # a corrupt state file was set aside and rebuilt
# The policy's publish claims refuse names this host's containers carry: not in DNS.
NAME_NOT_PUBLISHABLE = "name-not-publishable"


def subsystem_failed(subsystem: str) -> str:
    """The warning code of a subsystem whose last apply failed: "firewall-failed"."""
    return f"{subsystem}-failed"


class Health:
    """Named warnings with the time each started; RUNNING when none are left once configured."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._warnings: dict[str, HealthWarning] = {}
        self.configured = False
        self.stopping = False

    def warn(self, code: str, message: str) -> None:
        """Raise (or update the message of) warning `code`; `since` stays its first time."""
        old = self._warnings.get(code)
        since = old.since if old is not None else self._clock.now()
        self._warnings[code] = HealthWarning(code=code, message=message, since=since)

    def clear(self, code: str) -> None:
        self._warnings.pop(code, None)

    def warnings(self) -> tuple[HealthWarning, ...]:
        return tuple(self._warnings[k] for k in sorted(self._warnings))

    def has(self, code: str) -> bool:
        return code in self._warnings

    def state(self) -> AgentState:
        if self.stopping:
            return AgentState.STOPPED
        if NEEDS_JOIN in self._warnings:
            return AgentState.NEEDS_JOIN
        if not self.configured:
            return AgentState.STARTING
        return AgentState.DEGRADED if self._warnings else AgentState.RUNNING


def control_unreachable(reason: str, revision: int, received_at: datetime) -> str:
    when = received_at.astimezone().strftime("%H:%M:%S")
    return f"control unreachable ({reason}); using netmap r{revision} from {when}"
