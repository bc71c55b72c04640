"""The agent's state and named health warnings: what `shoal status` shows instead of log spam."""

from __future__ import annotations

from datetime import datetime

from shoal.model.status import AgentState


class Health:
    """Named warnings; the state is RUNNING when there are none once the host is configured."""

    def __init__(self) -> None:
        self._warnings: dict[str, str] = {}
        self.configured = False
        self.stopping = False

    def warn(self, name: str, message: str) -> None:
        self._warnings[name] = message

    def clear(self, name: str) -> None:
        self._warnings.pop(name, None)

    def warnings(self) -> tuple[str, ...]:
        return tuple(self._warnings[k] for k in sorted(self._warnings))

    def state(self) -> AgentState:
        if self.stopping:
            return AgentState.STOPPED
        if not self.configured:
            return AgentState.STARTING
        return AgentState.DEGRADED if self._warnings else AgentState.RUNNING


def control_unreachable(reason: str, revision: int, received_at: datetime) -> str:
    when = received_at.astimezone().strftime("%H:%M:%S")
    return f"control unreachable ({reason}); using netmap r{revision} from {when}"
