"""Errors of the host agent, named for whose fault they are.

ShoalError
└── AgentError
    ├── NotRoot            the agent changes interfaces and firewall: run it as root
    ├── NotJoined          no identity in the state dir and no --server/--token given
    ├── AgentNotRunning    a local command needs the daemon (status, ping)
    ├── AgentAlreadyRunning  another agent holds this state dir (a second `shoal up`)
    ├── AgentStartFailed   `shoal up` started a daemon that exited; carries its last error
    ├── StateWriteFailed   a file in the state dir could not be written (disk full, read-only)
    ├── SupervisorError    systemd refused the agent's unit (writing, enabling or stopping it)
    └── RotationFailed     `shoal node rotate-key`: the server refused or could not be asked
"""

from shoal.model.errors import ShoalError


class AgentError(ShoalError):
    pass


class NotRoot(AgentError):
    def __init__(self) -> None:
        super().__init__("shoal must run as root (it configures interfaces, routes and firewall)")


class NotJoined(AgentError):
    pass


class AgentNotRunning(AgentError):
    pass


class AgentAlreadyRunning(AgentError):
    """Another process is the agent of this state dir: two would fight over the host."""


class NetcheckFailed(AgentError):
    """`shoal netcheck` could not measure: no server address or no answer from it."""


class AgentStartFailed(AgentError):
    pass


class StateWriteFailed(AgentError):
    """A state file could not be written; the agent keeps running on what it has in memory."""


class SupervisorError(AgentError):
    """The host's service manager (systemd) could not install, start or remove the unit."""


class RotationFailed(AgentError):
    """The key rotation was not announced (the server refused it, or could not be reached);
    the node keeps its current key."""
