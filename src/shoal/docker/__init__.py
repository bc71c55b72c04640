"""The only module talking to the Docker API: shoal's bridge network, subnets in use, and the
containers attached to it (listed, and watched through Docker's events)."""

from shoal.docker.errors import DockerError, DockerUnavailable, NetworkInUse
from shoal.docker.host import DockerHost, RemoveResult
from shoal.docker.watch import ContainerWatcher

__all__ = [
    "ContainerWatcher",
    "DockerError",
    "DockerHost",
    "DockerUnavailable",
    "NetworkInUse",
    "RemoveResult",
]
