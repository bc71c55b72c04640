"""Errors talking to the control server, named for what the caller should do.

ShoalError
└── ControlError
    ├── ControlUnreachable        refused, timed out, 5xx: retry later and keep using the
    │                             last netmap
    ├── ControlProtocolError      answered nonsense (not JSON, not the model): a bug on one
    │                             side or a proxy in the way; retry slowly and report it
    └── ControlRejected           4xx: the server said no; tell the user (`code`, `message`)
        ├── CredentialRejected    401 on the node credential: this node was removed; re-join
        ├── FingerprintMismatch   the server's CA is not the one the token pins
        └── ControlThrottled      429: too many requests from this client; the same request
                                  succeeds later (the server's rates refill every second)
"""

from __future__ import annotations

from shoal.model.errors import ShoalError


class ControlError(ShoalError):
    """Any failure talking to the control server."""


class ControlUnreachable(ControlError):
    """The server could not be reached or failed (5xx); transient."""


class ControlProtocolError(ControlError):
    """The server answered, but not in the protocol: a malformed or unexpected reply."""


class ControlRejected(ControlError):
    """The server refused the request (4xx); retrying the same request will not help."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class CredentialRejected(ControlRejected):
    """The server no longer accepts this node's credential (the node was removed)."""


class FingerprintMismatch(ControlRejected):
    def __init__(self, message: str) -> None:
        super().__init__("fingerprint_mismatch", message)


class ControlThrottled(ControlRejected):
    """The server refused the request for this client's rate (429): unlike its parent, the
    same request succeeds once the client waits (a second or more)."""
