"""Errors of the control server. `ApiError`s reach the client as `ErrorBody` JSON.

ShoalError
├── ServerConfigError              bad flags or data dir; the server does not start
└── ApiError                       status from HTTP_STATUS below, `code` stable on the wire
    ├── BadRequest                 400 bad_request: malformed JSON, failed validation
    │   └── PolicyInvalid          policy_invalid: a policy that does not parse or breaks
    │                              its own inline tests (nothing changed)
    ├── Unauthorized               401
    │   ├── TokenMalformed         token_malformed: not SHOAL-1-…, or another server's
    │   ├── TokenUnknown           token_unknown
    │   ├── TokenExpired           token_expired
    │   ├── TokenRevoked           token_revoked
    │   ├── TokenUsed              token_used: single-use and already used
    │   ├── TokenRequired          token_required: an unknown key joins only with a token
    │   ├── CredentialInvalid      credential_invalid: no node has this key (removed?)
    │   ├── SignatureInvalid       signature_invalid: no proof of the node's key, a stale
    │   │                          or replayed request
    │   └── AdminUnauthorized      admin_unauthorized
    ├── Forbidden                  403
    │   ├── KeyRevoked             key_revoked: the key of a removed node, rejoin refused
    │   └── ScopeTooNarrow         admin_scope: a read-only admin token asked to change
    ├── NotFound                   404 not_found: route, token id or node name
    ├── MethodNotAllowed           405 method_not_allowed
    ├── Conflict                   409
    │   ├── NameTaken              name_taken: another key has this name
    │   ├── PoolConflict           pool_conflict: the host's routes overlap a pool
    │   ├── RouteConflict          route_conflict: an advertised subnet route overlaps a
    │   │                          pool or another node's route
    │   ├── PoolExhausted          pool_exhausted: no mesh IP or subnet left
    │   └── RelayUnavailable       relay_unavailable: the relay is full or cannot bind
    ├── RequestTimeout             408 request_timeout: the body came too slowly
    ├── PayloadTooLarge            413 payload_too_large
    ├── TooManyRequests            429 too_many_requests: this source is throttled; the reply
    │                              says when to retry (Retry-After)
    └── Internal                   500 internal: a bug or a store failure
"""

from __future__ import annotations

from shoal.model.errors import ShoalError


class ServerConfigError(ShoalError):
    """The server cannot start with this configuration or data dir."""


# Longest message an error carries: messages quote what the client sent (a name, a path, a
# route), and a reply or log line must never echo a megabyte of input back.
MAX_MESSAGE = 300


def clip(text: str, limit: int = MAX_MESSAGE) -> str:
    """`text` cut to at most `limit` characters, the cut marked with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ApiError(ShoalError):
    code = "error"

    def __init__(self, message: str) -> None:
        message = clip(message)
        super().__init__(message)
        self.message = message


class BadRequest(ApiError):
    code = "bad_request"


class PolicyInvalid(BadRequest):
    code = "policy_invalid"


class Unauthorized(ApiError):
    code = "unauthorized"


class TokenMalformed(Unauthorized):
    code = "token_malformed"


class TokenUnknown(Unauthorized):
    code = "token_unknown"


class TokenExpired(Unauthorized):
    code = "token_expired"


class TokenRevoked(Unauthorized):
    code = "token_revoked"


class TokenUsed(Unauthorized):
    code = "token_used"


class CredentialInvalid(Unauthorized):
    code = "credential_invalid"


class TokenRequired(Unauthorized):
    code = "token_required"


class SignatureInvalid(Unauthorized):
    code = "signature_invalid"


class AdminUnauthorized(Unauthorized):
    code = "admin_unauthorized"


class Forbidden(ApiError):
    code = "forbidden"


class KeyRevoked(Forbidden):
    code = "key_revoked"


class ScopeTooNarrow(Forbidden):
    code = "admin_scope"


class NotFound(ApiError):
    code = "not_found"


class MethodNotAllowed(ApiError):
    code = "method_not_allowed"


class Conflict(ApiError):
    code = "conflict"


class NameTaken(Conflict):
    code = "name_taken"


class PoolConflict(Conflict):
    code = "pool_conflict"


class RouteConflict(Conflict):
    code = "route_conflict"


class PoolExhausted(Conflict):
    code = "pool_exhausted"


class RelayUnavailable(Conflict):
    code = "relay_unavailable"


class RequestTimeout(ApiError):
    code = "request_timeout"


class PayloadTooLarge(ApiError):
    code = "payload_too_large"


class TooManyRequests(ApiError):
    code = "too_many_requests"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds until a retry can succeed


class Internal(ApiError):
    code = "internal"


# The one table from error to HTTP status; subclasses inherit their base's status.
HTTP_STATUS: dict[type[ApiError], int] = {
    BadRequest: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    MethodNotAllowed: 405,
    Conflict: 409,
    RequestTimeout: 408,
    PayloadTooLarge: 413,
    TooManyRequests: 429,
    Internal: 500,
}


def http_status(error: ApiError) -> int:
    for cls in type(error).__mro__:
        status = HTTP_STATUS.get(cls)
        if status is not None:
            return status
    return 500
