"""Errors of the multi-host lab.

ShoalError
└── LabError                 the lab could not be made, used or removed (message says why)
    ├── LabCommandFailed     a command run on a lab host exited non-zero (check=True)
    └── LabNotFound          no lab of that name is recorded
"""

from __future__ import annotations

from shoal.model.errors import ShoalError


class LabError(ShoalError):
    """The lab could not be created, used or destroyed; the message says what to do."""


class LabCommandFailed(LabError):
    """A command run in the lab exited non-zero; carries its exit code and output."""

    def __init__(self, argv: list[str], returncode: int, stdout: str, stderr: str) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        tail = (stderr.strip() or stdout.strip())[-500:]
        super().__init__(f"{' '.join(argv)!r} exited {returncode}: {tail}")


class LabNotFound(LabError):
    """No lab of that name is recorded under the lab root."""
