"""Errors of the Docker adapter.

ShoalError
└── DockerError             the Docker API refused or failed a request
    ├── DockerUnavailable   dockerd does not answer at the configured URL: start it
    └── NetworkInUse        the `shoal` network must change but containers are attached
"""

from __future__ import annotations

from shoal.model.errors import ShoalError


class DockerError(ShoalError):
    """The Docker API refused or failed a request."""


class DockerUnavailable(DockerError):
    def __init__(self, url: str, detail: str) -> None:
        super().__init__(f"cannot reach dockerd at {url}: {detail}")
        self.url, self.detail = url, detail

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # pickles with its own arguments
        return (type(self), (self.url, self.detail))


class NetworkInUse(DockerError):
    def __init__(self, name: str, problem: str, containers: tuple[str, ...]) -> None:
        super().__init__(
            f"Docker network {name!r} {problem}, but containers are attached "
            f"({', '.join(containers)}): stop them or disconnect them, then retry"
        )
        self.name, self.problem, self.containers = name, problem, containers

    def __reduce__(self) -> tuple[type, tuple[str, str, tuple[str, ...]]]:
        return (type(self), (self.name, self.problem, self.containers))
