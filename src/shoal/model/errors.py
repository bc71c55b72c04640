"""The root of shoal's error tree.

Every package has its own `errors.py` whose classes derive from `ShoalError`; the CLI prints a
`ShoalError` as one line and exits non-zero. Anything else reaching the CLI is a bug.

    ShoalError
    ├── control.errors.ApiError      (server: mapped to an HTTP status in one table)
    ├── controlclient.errors.*       (ControlUnreachable: retry; ControlRejected: tell the user)
    ├── agent.errors.*               (NotRoot, NotJoined, StateWriteFailed, ...)
    ├── dataplane.errors.*, hostnet.errors.*, firewall.errors.*, dockerhost.errors.*
    └── lab.errors.LabError
"""


class ShoalError(Exception):
    """An error with a message fit for the operator: one line, says what to do."""
