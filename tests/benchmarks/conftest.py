"""The throwaway dockerd of the docker tests, for the watcher measurement."""

from tests.dockerhost.conftest import Dockerd, dockerd, netns

__all__ = ["Dockerd", "dockerd", "netns"]
