"""The only module talking to the Docker API: shoal's bridge network, subnets in use, and the
containers attached to it (listed, and watched through Docker's events)."""

from shoal.dockerhost.errors import DockerError, DockerUnavailable, NetworkInUse
from shoal.dockerhost.host import DockerHost, RemoveResult
from shoal.dockerhost.watch import ContainerWatcher

__all__ = [
    "ContainerWatcher",
    "DockerError",
    "DockerHost",
    "DockerUnavailable",
    "NetworkInUse",
    "RemoveResult",
]
