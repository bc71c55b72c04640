"""The only module talking to the Docker API: shoal's bridge network, subnets in use."""

from shoal.docker.errors import DockerError, DockerUnavailable, NetworkInUse
from shoal.docker.host import DockerHost, RemoveResult

__all__ = ["DockerError", "DockerHost", "DockerUnavailable", "NetworkInUse", "RemoveResult"]
