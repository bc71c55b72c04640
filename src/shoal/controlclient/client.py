"""`ControlClient`: the typed HTTP client of the control server (agent and admin CLI).

The only module of the agent side importing aiohttp for the control API. Every aiohttp or
socket exception is caught here and re-raised as a `ControlError` subclass `from` it.

Several server replicas: the URL may be a comma-separated list (`shoal up --server A,B`). The
client stays with the replica that last answered; when it cannot be reached, the request goes
to the next one, in list order, and the client stays there. Only reachability moves it: an
answer, even an error, is final. A signed request is signed again for each replica it is sent
to (replicas share the server's keys, so any verifies it): each signature is good once on the
whole store, and a replica that died mid-request may have used up the first one.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import aiohttp
from pydantic import BaseModel, TypeAdapter, ValidationError
from yarl import URL

from shoal.controlclient.errors import (
    ControlProtocolError,
    ControlRejected,
    ControlThrottled,
    ControlUnreachable,
    CredentialRejected,
    FingerprintMismatch,
)
from shoal.controlclient.tls import ssl_context
from shoal.model.api import (
    ROTATE_PROOF_TARGET,
    AdminTokenCreated,
    AdminTokenCreateRequest,
    AdminTokenInfo,
    CertStatus,
    ContainersReport,
    ErrorBody,
    NodeInfo,
    NodeReport,
    PolicyCleared,
    PolicyInfo,
    PolicySetRequest,
    PolicyVerdict,
    RegisterRequest,
    RegisterResponse,
    RelayGrant,
    RelayList,
    RelayRequest,
    RotateKeyReply,
    RotateKeyRequest,
    ServerKey,
    ServiceInfo,
    TokenCreated,
    TokenCreateRequest,
    TokenInfo,
    rotate_proof_body,
)
from shoal.model.certs import ContainerCertRequest, IssuedCert, ServiceCertRequest
from shoal.model.keys import InvalidKey, PrivateKey, PublicKey
from shoal.model.netmap import MapUpdate
from shoal.model.nodeauth import shared_key, sign
from shoal.model.routes import RouteInfo, RouteRef

M = TypeVar("M", bound=BaseModel)

REQUEST_TIMEOUT = 15.0  # seconds, every request but the long-poll and the stream
STREAM_PATH = "/v1/netmap/stream"
STREAM_TYPE = "application/x-ndjson"
# The largest frame of a netmap stream (a full map: ~400 bytes a node, ~200 a container).
MAX_FRAME = 64 * 1024 * 1024
POLL_MARGIN = 10.0  # seconds a long-poll may take beyond its `wait`
CONNECT_TIMEOUT = 10.0
# Error codes meaning "the server no longer accepts this node": it must join anew.
CREDENTIAL_CODES = frozenset({"credential_invalid", "key_revoked"})
# The server's clock is taken over when ours is off by more than this (seconds): signatures
# carry a timestamp the server checks within a window.
CLOCK_SLACK = 5.0

_TOKENS = TypeAdapter(list[TokenInfo])
_NODES = TypeAdapter(list[NodeInfo])
_SERVICES = TypeAdapter(list[ServiceInfo])
_ADMIN_TOKENS = TypeAdapter(list[AdminTokenInfo])
_CERTS = TypeAdapter(list[CertStatus])
_VERDICTS = TypeAdapter(list[PolicyVerdict])
_ROUTES = TypeAdapter(list[RouteInfo])


def server_urls(text: str) -> tuple[str, ...]:
    """The URLs of a `--server URL[,URL...]` value, without trailing slashes or blanks."""
    return tuple(u.strip().rstrip("/") for u in text.split(",") if u.strip())


class ControlClient:
    """An HTTPS session to one control server, trusting only its pinned CA.

    Agent calls are signed with `node_key`, the node's WireGuard private key (see
    shoal.model.nodeauth); admin calls carry `credential`, the admin token text.
    """

    def __init__(
        self,
        server_url: str,
        ca_pem: bytes,
        credential: str | None = None,
        *,
        node_key: PrivateKey | None = None,
    ) -> None:
        self.server_urls = server_urls(server_url) or (server_url,)
        self.server_url = self.server_urls[0]  # the replica in use
        self.credential = credential
        self._node_key = node_key
        self._mac_key: bytes | None = None  # derived once the server's key is known
        self._server_key: PublicKey | None = None
        self._clock_offset = 0.0  # server time minus ours, when they differ by > CLOCK_SLACK
        self._ssl = ssl_context(ca_pem)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ControlClient:
        self._session = self._new_session()
        return self

    def _new_session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._ssl),
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
        )

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
        """Join (or join again with the same key, with or without a token)."""
        return await self._call("POST", "/v1/register", RegisterResponse, body=request)

    async def poll(self, since: int, wait: float) -> MapUpdate:
        """Long-poll the netmap: a full map, a delta from `since`, or "none" after `wait` s."""
        return await self._call(
            "GET",
            "/v1/netmap",
            MapUpdate,
            params={"since": str(since), "wait": f"{wait:g}"},
            timeout=wait + POLL_MARGIN,
        )

    async def watch(self, since: int, wait: float) -> AsyncGenerator[MapUpdate, None]:
        """Follow the netmap on one streamed response (`GET /v1/netmap/stream`): yields what a
        poll from `since` would get at once (a full map, a delta or "none"), then each change,
        and a "none" heartbeat whenever nothing changed for `wait` s (the server may shorten
        it). One connection for as long as it lasts, instead of one request per change.

        Opened on the replica in use, else on the next reachable one, as every call. Returns
        when the server ends the stream (it shuts down, or a newer stream of this node took
        over): open the next one from the newest revision at once. Raises ControlUnreachable
        when no replica can be reached, the stream breaks or stays silent for `wait` +
        POLL_MARGIN s; ControlRejected when refused (code "not_found": a server without
        streams, long-poll instead); ControlProtocolError for a frame that is no MapUpdate."""
        params = {"since": str(since), "wait": f"{wait:g}"}
        target = STREAM_PATH + "?" + urlencode(params)
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=CONNECT_TIMEOUT, sock_read=wait + POLL_MARGIN
        )
        offset = self._clock_offset
        resp = await self._open_stream(target, timeout)
        if resp.status == 401 and self._clock_offset != offset:
            # Our clock jumped since the last reply: the server's Date corrected it, sign again.
            resp.release()
            resp = await self._open_stream(target, timeout)
        async with resp:
            base = self.server_url
            try:
                if resp.status != 200:
                    self._reply(STREAM_PATH, resp.status, await resp.read())  # raises for 4xx/5xx
                    raise ControlProtocolError(
                        f"server at {base} answered {STREAM_PATH} with HTTP {resp.status}"
                    )
                async for frame in _frames(resp.content, base):
                    yield self._update(frame)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                raise ControlUnreachable(
                    f"netmap stream from {base} broke: {_describe(exc)}"
                ) from exc

    def _update(self, frame: bytes) -> MapUpdate:
        try:
            return MapUpdate.model_validate_json(frame)
        except ValidationError as exc:
            raise ControlProtocolError(
                f"server at {self.server_url} sent an unexpected {STREAM_PATH} frame: "
                f"{exc.errors()[0]['msg'] if exc.errors() else exc}"
            ) from exc

    async def _open_stream(
        self, target: str, timeout: aiohttp.ClientTimeout
    ) -> aiohttp.ClientResponse:
        """The response of a signed GET of `target` whose body is not read yet: from the
        replica in use, else the next reachable one (which stays in use)."""
        if self._session is None:
            raise RuntimeError("ControlClient used outside `async with`")
        start = self.server_urls.index(self.server_url)
        failures: list[ControlUnreachable] = []
        for base in self.server_urls[start:] + self.server_urls[:start]:
            headers = {
                "Accept": STREAM_TYPE,
                "Authorization": await self._signature("GET", target, b""),
            }
            try:
                resp = await self._session.get(
                    URL(base + target, encoded=True), headers=headers, timeout=timeout
                )
            except aiohttp.ClientConnectorCertificateError as exc:
                raise _unpinned(base, exc) from exc
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                failures.append(
                    ControlUnreachable(f"cannot reach server at {base}: {_describe(exc)}")
                )
                continue
            self.server_url = base
            self._follow_clock(resp.headers.get("Date"))
            return resp
        if len(failures) == 1:
            raise failures[0]
        raise ControlUnreachable("; ".join(str(f) for f in failures)) from failures[-1]

    async def report_containers(self, report: ContainersReport) -> None:
        """Tell the server the complete set of this host's containers on the `shoal` network;
        it diffs it against the last report and updates every node's netmap."""
        await self._call_json("POST", "/v1/containers", body=report)

    async def report(self, report: NodeReport) -> None:
        """Tell the server this node's version and paths (for its dashboard)."""
        await self._call_json("POST", "/v1/report", body=report)

    async def relay(self, peer_id: str) -> RelayGrant:
        """A port on the server relaying this node's WireGuard traffic to `peer_id`."""
        return await self._call("POST", "/v1/relay", RelayGrant, body=RelayRequest(peer=peer_id))

    async def relays(self) -> RelayList:
        """The mesh's TCP relays, in order of preference."""
        return await self._call("GET", "/v1/relays", RelayList)

    async def leave(self) -> None:
        """Remove this node from the mesh."""
        await self._call_json("POST", "/v1/leave")

    async def rotate(self, new_key: PrivateKey) -> RotateKeyReply:
        """Announce `new_key` as this node's next key (signed with the current key, proven
        with the new one); the reply says when every host switches. Keep signing with the
        current key until then (`use_key`)."""
        if self._node_key is None:
            raise RuntimeError("rotating without a node key")
        new = new_key.public_key()
        now = int(wall_clock() + self._clock_offset)
        body = rotate_proof_body(self._node_key.public_key(), new)
        proof = sign(await self._derive(new_key), new, "POST", ROTATE_PROOF_TARGET, body, now)
        request = RotateKeyRequest(new_public_key=new, proof=proof.header())
        return await self._call("POST", "/v1/rotate", RotateKeyReply, body=request)

    def use_key(self, key: PrivateKey) -> None:
        """Sign from now on with `key` (the node's key after a rotation's switch)."""
        if key != self._node_key:
            self._node_key = key
            self._mac_key = None

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

    async def trust_bundle(self) -> bytes:
        """The server's trust bundle (PEM), over this client's verified channel."""
        return await self._call_raw("/v1/trust")

    async def set_trust(self, ca_pem: bytes) -> None:
        """Trust `ca_pem` (a bundle) from now on; open connections are closed."""
        self._ssl = ssl_context(ca_pem)
        if self._session is not None:
            await self._session.close()
            self._session = self._new_session()

    async def list_certs(self) -> list[CertStatus]:
        return _CERTS.validate_python(await self._call_json("GET", "/v1/admin/certs"))

    async def create_admin_token(self, request: AdminTokenCreateRequest) -> AdminTokenCreated:
        return await self._call("POST", "/v1/admin/admin-tokens", AdminTokenCreated, body=request)

    async def list_admin_tokens(self) -> list[AdminTokenInfo]:
        return _ADMIN_TOKENS.validate_python(await self._call_json("GET", "/v1/admin/admin-tokens"))

    async def revoke_admin_token(self, token_id: str) -> None:
        await self._call_json("DELETE", f"/v1/admin/admin-tokens/{quote(token_id, safe='')}")

    async def remove_node(self, name: str, *, allow_rejoin: bool = False) -> None:
        await self._call_json(
            "DELETE",
            f"/v1/admin/nodes/{quote(name, safe='')}",
            params={"allow_rejoin": "1"} if allow_rejoin else None,
        )

    async def set_policy(self, request: PolicySetRequest) -> PolicyInfo:
        return await self._call("PUT", "/v1/admin/policy", PolicyInfo, body=request)

    async def get_policy(self) -> PolicyInfo:
        return await self._call("GET", "/v1/admin/policy", PolicyInfo)

    async def clear_policy(self) -> PolicyCleared:
        return await self._call("DELETE", "/v1/admin/policy", PolicyCleared)

    async def test_policy(
        self, src: str, dst: str, proto: str, port: int | None
    ) -> list[PolicyVerdict]:
        params = {"src": src, "dst": dst, "proto": proto}
        if port is not None:
            params["port"] = str(port)
        data = await self._call_json("GET", "/v1/admin/policy/test", params=params)
        return _VERDICTS.validate_python(data)

    async def list_routes(self) -> list[RouteInfo]:
        return _ROUTES.validate_python(await self._call_json("GET", "/v1/admin/routes"))

    async def decide_route(self, ref: str, *, approve: bool) -> RouteInfo:
        """Approve (or reject) the subnet route `ref` (its id or prefix)."""
        verb = "approve" if approve else "reject"
        return await self._call(
            "POST", f"/v1/admin/routes/{verb}", RouteInfo, body=RouteRef(route=ref)
        )

    async def container_cert(self, request: ContainerCertRequest) -> IssuedCert:
        """A certificate for one of this node's containers (signed by the node's key)."""
        return await self._call("POST", "/v1/certs", IssuedCert, body=request)

    async def service_cert(self, request: ServiceCertRequest) -> IssuedCert:
        return await self._call("POST", "/v1/admin/certs", IssuedCert, body=request)

    # Plumbing.

    async def _call(
        self,
        method: str,
        path: str,
        model: type[M],
        *,
        body: BaseModel | None = None,
        params: dict[str, str] | None = None,
        timeout: float = REQUEST_TIMEOUT,
    ) -> M:
        data = await self._call_json(method, path, body=body, params=params, timeout=timeout)
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
        timeout: float = REQUEST_TIMEOUT,
        signed: bool = True,
    ) -> Any:
        if self._session is None:
            raise RuntimeError("ControlClient used outside `async with`")
        headers = {"Accept": "application/json"}
        data = b""
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = body.model_dump_json().encode()
        # The query is part of what is signed: build it here, byte for byte as sent.
        target = path + ("?" + urlencode(params) if params else "")
        sign_it = self._node_key is not None and signed
        if not sign_it and self.credential is not None:
            headers["Authorization"] = f"Bearer {self.credential}"
        offset = self._clock_offset
        status, raw = await self._send(method, target, data, headers, timeout, sign=sign_it)
        if status == 401 and sign_it and self._clock_offset != offset:
            # Our clock jumped since the last reply: the server's Date corrected it, sign again.
            status, raw = await self._send(method, target, data, headers, timeout, sign=sign_it)
        return self._reply(path, status, raw)

    async def _call_raw(self, path: str) -> bytes:
        """GET a non-JSON document (a PEM bundle); errors as for every call."""
        status, raw = await self._send("GET", path, b"", {}, REQUEST_TIMEOUT, sign=False)
        if status != 200:
            self._reply(path, status, raw)  # raises for an error status
            raise ControlProtocolError(f"server at {self.server_url} answered {path}: {status}")
        return raw

    async def _send(
        self,
        method: str,
        target: str,
        data: bytes,
        headers: dict[str, str],
        timeout: float,
        *,
        sign: bool,
    ) -> tuple[int, bytes]:
        """Send to the replica in use, else to the next reachable one (which stays in use);
        with `sign`, each attempt carries a signature of its own."""
        start = self.server_urls.index(self.server_url)
        order = self.server_urls[start:] + self.server_urls[:start]
        failures: list[ControlUnreachable] = []
        for base in order:
            if sign:
                headers = {**headers, "Authorization": await self._signature(method, target, data)}
            try:
                answer = await self._send_to(base, method, target, data, headers, timeout)
            except ControlUnreachable as exc:
                failures.append(exc)
                continue
            self.server_url = base
            return answer
        if len(failures) == 1:
            raise failures[0]
        raise ControlUnreachable("; ".join(str(f) for f in failures)) from failures[-1]

    async def _send_to(
        self,
        base: str,
        method: str,
        target: str,
        data: bytes,
        headers: dict[str, str],
        timeout: float,
    ) -> tuple[int, bytes]:
        if self._session is None:
            raise RuntimeError("ControlClient used outside `async with`")
        url = URL(base + target, encoded=True)
        try:
            async with self._session.request(
                method,
                url,
                data=data or None,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=CONNECT_TIMEOUT),
            ) as resp:
                raw = await resp.read()
                status = resp.status
                self._follow_clock(resp.headers.get("Date"))
        except aiohttp.ClientConnectorCertificateError as exc:
            raise _unpinned(base, exc) from exc
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise ControlUnreachable(f"cannot reach server at {base}: {_describe(exc)}") from exc
        return status, raw

    def _reply(self, path: str, status: int, raw: bytes) -> Any:
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
            if status == 429:
                raise ControlThrottled(err.code, err.message)
            raise ControlRejected(err.code, err.message)
        if status == 204 or not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise ControlProtocolError(
                f"server at {self.server_url} sent non-JSON for {path} (HTTP {status})"
            ) from exc

    async def _signature(self, method: str, target: str, body: bytes) -> str:
        if self._node_key is None:
            raise RuntimeError("signing without a node key")
        key = await self.mac_key()
        now = int(wall_clock() + self._clock_offset)
        return sign(key, self._node_key.public_key(), method, target, body, now).header()

    async def mac_key(self) -> bytes:
        """The key this node shares with the server (`shoal.model.nodeauth.shared_key`); it
        also MACs the node's endpoint probes. Fetches the server's key on first use."""
        if self._node_key is None:
            raise RuntimeError("a MAC key without a node key")
        if self._mac_key is None:
            self._mac_key = await self._derive(self._node_key)
        return self._mac_key

    async def _derive(self, key: PrivateKey) -> bytes:
        """The MAC key of `key` with this server (whose key is asked for once)."""
        if self._server_key is None:
            reply = await self._call_json("GET", "/v1/key", signed=False)
            try:
                self._server_key = ServerKey.model_validate(reply).public_key
            except ValidationError as exc:
                raise ControlUnreachable(
                    f"server at {self.server_url} sent an unusable /v1/key reply: {exc}"
                ) from exc
        try:
            return shared_key(key, self._server_key, key.public_key(), self._server_key)
        except InvalidKey as exc:
            raise ControlUnreachable(
                f"server at {self.server_url} sent an unusable /v1/key reply: {exc}"
            ) from exc

    def _follow_clock(self, date: str | None) -> None:
        """Take the server's clock when ours is off: signatures are checked against it."""
        if date is None:
            return
        try:
            server = email.utils.parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            return
        offset = server - wall_clock()
        self._clock_offset = offset if abs(offset) > CLOCK_SLACK else 0.0


def wall_clock() -> float:
    """This host's clock, unix seconds (one place, so that tests can set it off)."""
    return time.time()


async def _frames(content: aiohttp.StreamReader, base: str) -> AsyncIterator[bytes]:
    """The newline-ended frames of a stream body, each at most MAX_FRAME bytes. (aiohttp's
    `readline` refuses lines above 128 KiB; a full map is megabytes.)"""
    parts: list[bytes] = []
    size = 0
    async for chunk in content.iter_any():
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            parts.append(chunk[start:end])
            yield b"".join(parts)
            parts, size, start = [], 0, end + 1
        if start < len(chunk):
            parts.append(chunk[start:])
            size += len(chunk) - start
            if size > MAX_FRAME:
                raise ControlProtocolError(
                    f"server at {base} sent a netmap frame over {MAX_FRAME} bytes"
                )
    if parts:
        raise ControlUnreachable(f"netmap stream from {base} ended mid-frame")


def _error_text(raw: bytes) -> str:
    text = raw[:200].decode(errors="replace").strip()
    return text.splitlines()[0] if text else ""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]


def _unpinned(base: str, exc: aiohttp.ClientConnectorCertificateError) -> FingerprintMismatch:
    return FingerprintMismatch(
        f"server at {base} presented a certificate not signed by the pinned CA: "
        f"{exc.certificate_error}"
    )
