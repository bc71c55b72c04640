"""The CLI's side of the agent's local API: plain HTTP over the unix socket, stdlib only.

`shoal status` runs often and in scripts: it must not pay for an async HTTP stack's imports.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.parse
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from shoal.agent.errors import AgentNotRunning, RotationFailed
from shoal.model.api import ErrorBody, ServiceInfo
from shoal.model.catalog import Catalog
from shoal.model.doctor import DoctorReport, UnknownTarget
from shoal.model.status import AgentStatus, DownReport, KeyRotation


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("agent", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self._path))
        self.sock = sock


def _call(socket_path: Path, method: str, path: str, timeout: float) -> Any:
    return _call_status(socket_path, method, path, timeout)[1]


def _call_status(socket_path: Path, method: str, path: str, timeout: float) -> tuple[int, Any]:
    if not socket_path.exists():
        raise AgentNotRunning(f"no agent running (no {socket_path}); start it with `shoal up`")
    conn = _UnixConnection(socket_path, timeout)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise AgentNotRunning(f"agent at {socket_path} does not answer: {exc}") from exc
    finally:
        conn.close()


def fetch_status(socket_path: Path, timeout: float = 5.0) -> AgentStatus:
    return AgentStatus.model_validate(_call(socket_path, "GET", "/status", timeout))


def fetch_services(socket_path: Path, timeout: float = 5.0) -> list[ServiceInfo]:
    adapter = TypeAdapter(list[ServiceInfo])
    return adapter.validate_python(_call(socket_path, "GET", "/services", timeout))


def fetch_catalog(catalog_socket: Path, index: int | None = None, wait: float = 60.0) -> Catalog:
    """The catalog from the agent's read-only socket; with `index`, a long-poll that returns
    once the catalog's index exceeds it, or after `wait` seconds with the same catalog."""
    query = "" if index is None else "?" + urllib.parse.urlencode({"index": index, "wait": wait})
    timeout = 5.0 if index is None else wait + 10.0
    return Catalog.model_validate(_call(catalog_socket, "GET", f"/v1/catalog{query}", timeout))


def request_down(socket_path: Path, leave: bool, timeout: float = 60.0) -> DownReport:
    return DownReport.model_validate(
        _call(socket_path, "POST", f"/down?leave={int(leave)}", timeout)
    )


def fetch_doctor(socket_path: Path, target: str | None, timeout: float = 90.0) -> DoctorReport:
    """Run the agent's checks (all peers, or the target's); UnknownTarget for a name the
    netmap does not know."""
    query = "?" + urllib.parse.urlencode({"target": target}) if target else ""
    body = _call(socket_path, "GET", f"/doctor{query}", timeout)
    if isinstance(body, dict) and set(body) == {"error"}:
        raise UnknownTarget(str(body["error"]))
    return DoctorReport.model_validate(body)


def request_rotate_key(socket_path: Path, timeout: float = 30.0) -> KeyRotation:
    """Ask the agent to rotate its key; `RotationFailed` when it was not announced."""
    status, body = _call_status(socket_path, "POST", "/rotate-key", timeout)
    if status != 200:
        raise RotationFailed(ErrorBody.model_validate(body).message)
    return KeyRotation.model_validate(body)
