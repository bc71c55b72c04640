"""Errors of the host agent, named for whose fault they are.

ShoalError
└── AgentError
    ├── NotRoot            the agent changes interfaces and firewall: run it as root
    ├── NotJoined          no identity in the state dir and no --server/--token given
    ├── AgentNotRunning    a local command needs the daemon (status, ping)
    ├── AgentStartFailed   `shoal up` started a daemon that exited; carries its last error
    └── HostConflict       something on this host collides with the mesh (routes, networks)
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


class AgentStartFailed(AgentError):
    pass


class HostConflict(AgentError):
    pass
