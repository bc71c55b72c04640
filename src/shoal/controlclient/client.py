"""`ControlClient`: the typed HTTP client of the control server (agent and admin CLI).

The only module of the agent side importing aiohttp for the control API. Every aiohttp or
socket exception is caught here and re-raised as a `ControlError` subclass `from` it.
"""

from __future__ import annotations

import asyncio
import json
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
from pydantic import BaseModel, TypeAdapter, ValidationError

from shoal.controlclient.errors import (
    ControlProtocolError,
    ControlRejected,
    ControlUnreachable,
    CredentialRejected,
    FingerprintMismatch,
)
from shoal.controlclient.tls import ssl_context
from shoal.model.api import (
    ContainersReport,
    ErrorBody,
    NodeInfo,
    RegisterRequest,
    RegisterResponse,
    ServiceInfo,
    TokenCreated,
    TokenCreateRequest,
    TokenInfo,
)
from shoal.model.netmap import MapUpdate

M = TypeVar("M", bound=BaseModel)

REQUEST_TIMEOUT = 15.0  # seconds, every request but the long-poll
POLL_MARGIN = 10.0  # seconds a long-poll may take beyond its `wait`
CONNECT_TIMEOUT = 10.0
# Error codes meaning "this node's credential is no longer valid": the node must re-join.
CREDENTIAL_CODES = frozenset({"credential_invalid"})

_TOKENS = TypeAdapter(list[TokenInfo])
_NODES = TypeAdapter(list[NodeInfo])
_SERVICES = TypeAdapter(list[ServiceInfo])


class ControlClient:
    """An HTTPS session to one control server, trusting only its pinned CA.

    `credential` is the bearer secret: the node credential for agent calls (set automatically
    by `register`), or the admin token text for admin calls.
    """

    def __init__(self, server_url: str, ca_pem: bytes, credential: str | None = None) -> None:
        self.server_url = server_url.rstrip("/")
        self.credential = credential
        self._ssl = ssl_context(ca_pem)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ControlClient:
        connector = aiohttp.TCPConnector(ssl=self._ssl)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # Agent calls.

    async def register(self, request: RegisterRequest) -> RegisterResponse:
        """Join (or re-join with the same key); remembers the returned credential."""
        response = await self._call(
            "POST", "/v1/register", RegisterResponse, body=request, auth=False
        )
        self.credential = response.credential
        return response

    async def poll(self, since: int, wait: float) -> MapUpdate:
        """Long-poll the netmap: a full map, a delta from `since`, or "none" after `wait` s."""
        return await self._call(
            "GET",
            "/v1/netmap",
            MapUpdate,
            params={"since": str(since), "wait": f"{wait:g}"},
            timeout=wait + POLL_MARGIN,
        )

    async def report_containers(self, report: ContainersReport) -> None:
        """Tell the server the complete set of this host's containers on the `shoal` network;
        it diffs it against the last report and updates every node's netmap."""
        await self._call_json("POST", "/v1/containers", body=report)

    async def leave(self) -> None:
        """Remove this node from the mesh."""
        await self._call_json("POST", "/v1/leave")

    # Admin calls (credential = admin token).

    async def create_token(self, request: TokenCreateRequest) -> TokenCreated:
        return await self._call("POST", "/v1/admin/tokens", TokenCreated, body=request)

    async def list_tokens(self) -> list[TokenInfo]:
        return _TOKENS.validate_python(await self._call_json("GET", "/v1/admin/tokens"))

    async def revoke_token(self, token_id: str) -> None:
        await self._call_json("DELETE", f"/v1/admin/tokens/{quote(token_id, safe='')}")

    async def list_nodes(self) -> list[NodeInfo]:
        return _NODES.validate_python(await self._call_json("GET", "/v1/admin/nodes"))

    async def list_services(self) -> list[ServiceInfo]:
        """The service catalog: services, their instances, hosts and health."""
        return _SERVICES.validate_python(await self._call_json("GET", "/v1/admin/services"))

    async def remove_node(self, name: str) -> None:
        await self._call_json("DELETE", f"/v1/admin/nodes/{quote(name, safe='')}")

    # Plumbing.

    async def _call(
        self,
        method: str,
        path: str,
        model: type[M],
        *,
        body: BaseModel | None = None,
        params: dict[str, str] | None = None,
        auth: bool = True,
        timeout: float = REQUEST_TIMEOUT,
    ) -> M:
        data = await self._call_json(
            method, path, body=body, params=params, auth=auth, timeout=timeout
        )
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise ControlProtocolError(
                f"server at {self.server_url} sent an unexpected {path} reply: "
                f"{exc.errors()[0]['msg'] if exc.errors() else exc}"
            ) from exc

    async def _call_json(
        self,
        method: str,
        path: str,
        *,
        body: BaseModel | None = None,
        params: dict[str, str] | None = None,
        auth: bool = True,
        timeout: float = REQUEST_TIMEOUT,
    ) -> Any:
        if self._session is None:
            raise RuntimeError("ControlClient used outside `async with`")
        headers = {"Accept": "application/json"}
        if auth and self.credential is not None:
            headers["Authorization"] = f"Bearer {self.credential}"
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = body.model_dump_json().encode()
        url = self.server_url + path
        try:
            async with self._session.request(
                method,
                url,
                data=data,
                params=params,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=CONNECT_TIMEOUT),
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except aiohttp.ClientConnectorCertificateError as exc:
            raise FingerprintMismatch(
                f"server at {self.server_url} presented a certificate not signed by the pinned "
                f"CA: {exc.certificate_error}"
            ) from exc
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise ControlUnreachable(
                f"cannot reach server at {self.server_url}: {_describe(exc)}"
            ) from exc
        if status >= 500:
            raise ControlUnreachable(
                f"server at {self.server_url} failed: HTTP {status} {_error_text(raw)}"
            )
        if status >= 400:
            try:
                err = ErrorBody.model_validate_json(raw)
            except ValidationError:
                err = ErrorBody(code=f"http_{status}", message=f"HTTP {status} {_error_text(raw)}")
            if err.code in CREDENTIAL_CODES:
                raise CredentialRejected(err.code, err.message)
            raise ControlRejected(err.code, err.message)
        if status == 204 or not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise ControlProtocolError(
                f"server at {self.server_url} sent non-JSON for {path} (HTTP {status})"
            ) from exc


def _error_text(raw: bytes) -> str:
    text = raw[:200].decode(errors="replace").strip()
    return text.splitlines()[0] if text else ""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]
