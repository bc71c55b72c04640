"""The HTTP API (aiohttp): authentication, parsing and JSON; the use cases live in service.py.

    GET    /v1/openapi.json             this list as OpenAPI 3.1, from the models (control.openapi)
    GET    /v1/ca                       the CA certificate (PEM); no auth, clients pin it
    GET    /v1/trust                    the trust bundle (PEM: current, next, previous CA)
    GET    /v1/key                      → ServerKey: what node signatures are keyed with
    POST   /v1/register                 RegisterRequest → RegisterResponse (signed by the key
                                        it registers; join token in body for a new node)
    GET    /v1/netmap?since=N&wait=S    → MapUpdate; long-poll (node signature)
    GET    /v1/netmap/stream?since=N&wait=S
                                        → MapUpdate frames, one JSON object per line, until
                                        the client goes: the update from `since`, each change,
                                        a "none" heartbeat after S s without one (node
                                        signature; see `netmap_stream`)
    POST   /v1/containers               ContainersReport → 204 (node signature; all of them)
    POST   /v1/leave                    → 204 (node signature)
    POST   /v1/report                   NodeReport → 204: version and paths, for the dashboard
                                        (node signature; at most every 10 s; dashboard.reports)
    POST   /v1/relay                    RelayRequest → RelayGrant: a relay port to a peer
                                        (node signature; control.relay)
    GET    /v1/relays                   → RelayList: the TCP relays (node signature;
                                        control.tcprelay)
    POST   /v1/admin/tokens             TokenCreateRequest → TokenCreated (admin token)
    GET    /v1/admin/tokens             → [TokenInfo]
    DELETE /v1/admin/tokens/{id}        → 204
    GET    /v1/admin/nodes              → [NodeInfo]
    PUT    /v1/admin/policy             PolicySetRequest → PolicyInfo (validated, inline tests)
    GET    /v1/admin/policy             → PolicyInfo (404: none set)
    DELETE /v1/admin/policy             → PolicyCleared: back to shoal's defaults
    GET    /v1/admin/policy/test?src=A&dst=B&proto=tcp&port=N → [PolicyVerdict]
    GET    /v1/admin/services           → [ServiceInfo] (the catalog)
    GET    /v1/admin/routes             → [RouteInfo]: advertised subnet routes, decisions
    POST   /v1/admin/routes/approve     RouteRef → RouteInfo (the route reaches the netmaps)
    POST   /v1/admin/routes/reject      RouteRef → RouteInfo (the route leaves them)
    POST   /v1/certs                    ContainerCertRequest → IssuedCert (node: its container's
                                        mesh names, for a container labelled shoal.tls=true)
    POST   /v1/admin/certs              ServiceCertRequest → IssuedCert (`shoal cert issue`)
    DELETE /v1/admin/nodes/{name}       → 204; its key is revoked unless ?allow_rejoin=1
    GET    /v1/admin/certs              → [CertStatus]: CAs and server certificate, expiry
    POST   /v1/admin/admin-tokens       AdminTokenCreateRequest → AdminTokenCreated
    GET    /v1/admin/admin-tokens       → [AdminTokenInfo]
    DELETE /v1/admin/admin-tokens/{id}  → 204
    GET    /metrics                     Prometheus text (admin token, scope read; control.metrics)
    GET    /dashboard ...               the web dashboard (control.dashboard)

Admin calls carry an admin token: the server host's own (admin.token, every scope) or a
scoped one; GETs need scope read, everything else scope admin.

Node calls carry `Authorization: Shoal-Node ...`, a signature made with the node's private
key (see shoal.model.nodeauth): nothing but that key authorises them. Every error is an
`ErrorBody` JSON with the status from control.errors.HTTP_STATUS, its message clipped, and
each refusal (4xx) is one short log line. Every signed request of a node counts as a
heartbeat of that node.

Bounds: each route reads at most its body limit (MAX_BODY, MAX_SMALL_BODY, MAX_REPORT,
MAX_POLICY_BODY) within BODY_TIMEOUT; a source gets 429 with Retry-After once out of
registrations or failed authentications (control.limits), a node once it reports its
containers too often; the listener bounds connections and their deadlines (control.listener).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

from aiohttp import HttpVersion11, web
from pydantic import BaseModel, TypeAdapter, ValidationError

from shoal.control import openapi
from shoal.control.ca import CertAuthority
from shoal.control.dashboard import web as dashboard
from shoal.control.encoding import MapEncoder
from shoal.control.errors import (
    AdminUnauthorized,
    ApiError,
    BadRequest,
    Internal,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RelayUnavailable,
    RequestTimeout,
    TooManyRequests,
    Unauthorized,
    clip,
    http_status,
)
from shoal.control.limits import RateLimits, SourceLimits
from shoal.control.listener import ConnectionLimits, Connections
from shoal.control.metrics import ServerMetrics
from shoal.control.nodeauth import NodeVerifier
from shoal.control.relay import Relay
from shoal.control.service import ControlService, Send
from shoal.control.servicecerts import ServiceCA
from shoal.model.api import (
    ROTATE_PROOF_TARGET,
    AdminTokenCreateRequest,
    AdminTokenInfo,
    CertStatus,
    ContainersReport,
    ErrorBody,
    NodeInfo,
    NodeReport,
    PolicySetRequest,
    PolicyVerdict,
    RegisterRequest,
    RelayGrant,
    RelayList,
    RelayRequest,
    RelayServer,
    RotateKeyRequest,
    ServerKey,
    ServiceInfo,
    TokenCreateRequest,
    TokenInfo,
    rotate_proof_body,
)
from shoal.model.certs import (
    ContainerCertRequest,
    ServiceCertRequest,
    container_names,
    service_names,
)
from shoal.model.keys import PublicKey
from shoal.model.netmap import MapUpdate
from shoal.model.policy import Proto
from shoal.model.prometheus import CONTENT_TYPE
from shoal.model.routes import RouteInfo, RouteRef
from shoal.store.errors import StoreError

log = logging.getLogger("shoal.control.api")

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Request body limits per route, in bytes. Each is a few times the largest valid body, so
# that nothing larger is ever read into memory or parsed.
MAX_BODY = 64 * 1024  # a registration: up to 1,024 host prefixes of ~25 bytes, 16 endpoints
MAX_SMALL_BODY = 4 * 1024  # a token request, an admin token request
# A container report: at most model.api.MAX_CONTAINERS containers, each ~1.6 KB at most
# (see the bounds there); a real host's report of 50 containers is ~15 KB.
MAX_REPORT = 1024 * 1024
# A node's report: at most MAX_REPORT_PEERS peers of ~130 bytes, and its counts.
MAX_NODE_REPORT = 16 * 1024
MAX_POLICY_BODY = 3 * 1024 * 1024  # a policy is at most 1 MiB of text, escaped in JSON
_PROTOS: dict[str, Proto] = {"tcp": "tcp", "udp": "udp", "icmp": "icmp"}
BODY_TIMEOUT = 10.0  # seconds a client may take to send a body once its headers are in
DEFAULT_WAIT = 25.0  # seconds a long-poll is held when the client does not say
# The most of a netmap stream's frame written to its connection at once. asyncio's TLS writes
# all it is given into an OpenSSL memory buffer of the connection's, which keeps its largest
# size for as long as the connection lives: a stream that began with a full map of 2,000 peers
# held 659 KiB instead of 134 KiB (a full map of 10,000 peers is ~4.5 MB). 16 KiB is one TLS
# record: a change's frame is one piece, a full map many.
FRAME_PIECE = 16 * 1024
# A netmap stream's connection holding this many bytes not yet sent takes no pushed change
# (see `_sender`): its own write waits for the backlog to drain instead.
PUSH_BACKLOG = 64 * 1024
STREAM_TYPE = "application/x-ndjson"  # GET /v1/netmap/stream: one MapUpdate per line


SERVICE = web.AppKey("service", ControlService)
CA = web.AppKey("ca", CertAuthority)
ENCODER = web.AppKey("encoder", MapEncoder)
VERIFIER = web.AppKey("verifier", NodeVerifier)
CONNECTIONS = web.AppKey("connections", Connections)
RATES = web.AppKey("rates", SourceLimits)
METRICS = web.AppKey("metrics", ServerMetrics)
RELAY = web.AppKey("relay", Relay)
SERVICE_CA = web.AppKey("service_ca", ServiceCA)
RELAYS = web.AppKey("relays", RelayList)

_TOKEN_LIST = TypeAdapter(list[TokenInfo])
_NODE_LIST = TypeAdapter(list[NodeInfo])
_SERVICE_LIST = TypeAdapter(list[ServiceInfo])
_ADMIN_TOKEN_LIST = TypeAdapter(list[AdminTokenInfo])
_CERT_LIST = TypeAdapter(list[CertStatus])
_VERDICT_LIST = TypeAdapter(list[PolicyVerdict])
_ROUTE_LIST = TypeAdapter(list[RouteInfo])


def build_app(
    service: ControlService,
    ca: CertAuthority,
    verifier: NodeVerifier,
    *,
    connections: Connections | None = None,
    rates: RateLimits | None = None,
    relay: Relay | None = None,
    relays: tuple[RelayServer, ...] = (),
) -> web.Application:
    """The API; `connections` is the guard of the listener serving it (None: no deadlines
    are tracked per connection, as when served by a test client)."""
    metrics = ServerMetrics()
    # Metrics outermost: they count every answer the client gets, throttled ones included.
    app = web.Application(
        middlewares=[metrics.middleware, _errors, _throttle], client_max_size=MAX_BODY
    )
    app[METRICS] = metrics
    app[SERVICE] = service
    app[CA] = ca
    # Beside the control CA in the data dir; made on the first certificate issued.
    app[SERVICE_CA] = ServiceCA(ca.cert_file.parent)
    app[ENCODER] = MapEncoder()
    app[VERIFIER] = verifier
    app[CONNECTIONS] = connections or Connections(ConnectionLimits())
    app[RATES] = SourceLimits(rates or RateLimits())
    app[RELAY] = relay or Relay("0.0.0.0")
    app[RELAYS] = RelayList(relays=relays)
    app.router.add_get("/v1/openapi.json", get_openapi)
    app.router.add_get("/v1/ca", get_ca)
    app.router.add_get("/v1/trust", get_trust)
    app.router.add_get("/v1/key", get_key)
    app.router.add_post("/v1/register", register)
    app.router.add_get("/v1/netmap", netmap)
    app.router.add_get("/v1/netmap/stream", netmap_stream)
    app.router.add_post("/v1/containers", containers)
    app.router.add_post("/v1/leave", leave)
    app.router.add_post("/v1/report", node_report)
    app.router.add_post("/v1/relay", relay_port)
    app.router.add_get("/v1/relays", list_relays)
    app.router.add_post("/v1/rotate", rotate)
    app.router.add_post("/v1/admin/tokens", create_token)
    app.router.add_get("/v1/admin/tokens", list_tokens)
    app.router.add_delete("/v1/admin/tokens/{id}", revoke_token)
    app.router.add_get("/v1/admin/nodes", list_nodes)
    app.router.add_get("/v1/admin/services", list_services)
    app.router.add_delete("/v1/admin/nodes/{name}", remove_node)
    app.router.add_get("/v1/admin/certs", list_certs)
    app.router.add_post("/v1/admin/admin-tokens", create_admin_token)
    app.router.add_get("/v1/admin/admin-tokens", list_admin_tokens)
    app.router.add_delete("/v1/admin/admin-tokens/{id}", revoke_admin_token)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_put("/v1/admin/policy", set_policy)
    app.router.add_get("/v1/admin/policy", get_policy)
    app.router.add_delete("/v1/admin/policy", clear_policy)
    app.router.add_get("/v1/admin/policy/test", test_policy)
    app.router.add_get("/v1/admin/routes", list_routes)
    app.router.add_post("/v1/admin/routes/approve", approve_route)
    app.router.add_post("/v1/admin/routes/reject", reject_route)
    app.router.add_post("/v1/certs", container_cert)
    app.router.add_post("/v1/admin/certs", service_cert)
    dashboard.install(app, service, app[RELAY])
    return app


def error_response(error: ApiError) -> web.Response:
    body = ErrorBody(code=error.code, message=error.message)
    headers = {}
    if isinstance(error, TooManyRequests):
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    return web.Response(
        status=http_status(error),
        body=body.model_dump_json(),
        content_type="application/json",
        headers=headers,
    )


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    # The request's headers are in: the connection's header deadline no longer applies, and
    # once the handler is done the connection idles until its next request.
    guard = request.app[CONNECTIONS].guard(request.transport)
    if guard is not None:
        guard.request_started()
    try:
        return await handler(request)
    except ApiError as exc:
        return _refused(request, exc)
    except web.HTTPRequestEntityTooLarge:
        return _refused(request, PayloadTooLarge(f"request body larger than {MAX_BODY} bytes"))
    except web.HTTPNotFound:
        return _refused(request, NotFound(f"no such API route: {request.method} {request.path}"))
    except web.HTTPMethodNotAllowed:
        return _refused(
            request, MethodNotAllowed(f"{request.method} is not allowed on {request.path}")
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        err = ErrorBody(code=f"http_{exc.status}", message=clip(exc.reason))
        return web.Response(
            status=exc.status, body=err.model_dump_json(), content_type="application/json"
        )
    except StoreError as exc:
        log.error("%s %s: store failure: %s", request.method, request.path, exc)
        return error_response(Internal(f"server store failure: {exc}"))
    except Exception:
        log.exception("%s %s failed", request.method, clip(request.path, 64))
        return error_response(Internal("internal server error (see the server log)"))
    finally:
        if guard is not None:
            guard.request_finished()


@web.middleware
async def _throttle(request: web.Request, handler: Handler) -> web.StreamResponse:
    """429 for a source out of failed authentications (checked before any work) or, on
    POST /v1/register, out of registrations; every 401 costs its source one token."""
    rates = request.app[RATES]
    source = request.remote or "unknown"
    if request.app[CONNECTIONS].exempt(request.remote):
        return await handler(request)
    wait = rates.failed_auth.retry_after(source)
    if wait > 0:
        raise TooManyRequests(
            f"too many failed authentications from {source}; retry in {math.ceil(wait)} s",
            retry_after=wait,
        )
    if request.method == "POST" and request.path == "/v1/register":
        wait = rates.register.charge(source)
        if wait > 0:
            raise TooManyRequests(
                f"too many registrations from {source}; retry in {math.ceil(wait)} s",
                retry_after=wait,
            )
    try:
        return await handler(request)
    except Unauthorized:
        rates.failed_auth.charge(source)
        raise


def _refused(request: web.Request, error: ApiError) -> web.Response:
    """The error reply, and for a client's fault (4xx) one short log line; the message is
    clipped (ApiError), the path too, so no input of any size is echoed in full. A throttled
    source is logged once a minute, not once a request."""
    status = http_status(error)
    throttled = isinstance(error, TooManyRequests)
    if status < 500 and (not throttled or request.app[RATES].should_log(request.remote)):
        log.info(
            "%s %s from %s: %d %s: %s",
            request.method,
            clip(request.path, 64),
            request.remote,
            status,
            error.code,
            error.message,
        )
    return error_response(error)


def _json(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=model.model_dump_json(), content_type="application/json"
    )


async def _parse(request: web.Request, model: type[M], limit: int = MAX_BODY) -> M:
    return _model(await _body(request, limit), model)


async def _body(request: web.Request, limit: int = MAX_BODY) -> bytes:
    """The body, up to `limit` bytes sent within BODY_TIMEOUT seconds, else 413 or 408."""
    return await _read(request, limit)


def _model(raw: bytes, model: type[M]) -> M:
    """`raw` parsed as `model`; a body that does not validate is a 400 naming the first
    problem (clipped: never an echo of the input)."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise BadRequest(_summarize(exc)) from exc


async def _read(request: web.Request, limit: int) -> bytes:
    """The body, up to `limit` bytes, sent within BODY_TIMEOUT seconds."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            async for chunk in request.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"request body larger than {limit} bytes")
                chunks.append(chunk)
    except TimeoutError as exc:
        raise RequestTimeout(f"request body not sent within {BODY_TIMEOUT:g} s") from exc
    return b"".join(chunks)


def _summarize(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    if not errors:
        return "invalid request body"
    first = errors[0]
    # A location may hold a key the client sent (an extra field): clipped like the message.
    where = clip(".".join(str(p) for p in first["loc"]), 80)
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"invalid request body: {where + ': ' if where else ''}{first['msg']}{more}"


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


async def _signer(request: web.Request, body: bytes) -> PublicKey:
    """The key whose holder signed this request (see shoal.model.nodeauth)."""
    return await request.app[VERIFIER].verify(
        request.headers.get("Authorization"), request.method, request.raw_path, body
    )


async def _node_id(request: web.Request, body: bytes = b"") -> str:
    return (await request.app[SERVICE].authenticate_node(await _signer(request, body))).id


async def _admin(request: web.Request) -> ControlService:
    """The service, once the request's admin token is good for it (GETs read, else admin)."""
    token = _bearer(request)
    if token is None:
        raise AdminUnauthorized("missing admin token (Authorization: Bearer SHOAL-ADMIN-1-...)")
    service = request.app[SERVICE]
    await service.authenticate_admin(token, "read" if request.method == "GET" else "admin")
    return service


async def get_ca(request: web.Request) -> web.Response:
    return web.Response(body=request.app[CA].ca_pem, content_type="application/x-pem-file")


async def get_trust(request: web.Request) -> web.Response:
    return web.Response(body=request.app[CA].trust_pem, content_type="application/x-pem-file")


async def list_certs(request: web.Request) -> web.Response:
    await _admin(request)
    certs = [
        CertStatus(kind=c.kind, fingerprint=c.fingerprint, not_after=c.not_after)
        for c in request.app[CA].certs
    ]
    return web.Response(body=_CERT_LIST.dump_json(certs), content_type="application/json")


async def get_openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi.document())


async def get_key(request: web.Request) -> web.Response:
    return _json(ServerKey(public_key=request.app[VERIFIER].public_key))


async def register(request: web.Request) -> web.Response:
    raw = await _body(request)
    signer = await _signer(request, raw)
    reply = await request.app[SERVICE].register(_model(raw, RegisterRequest), signer)
    return web.Response(
        body=request.app[ENCODER].register_response(reply), content_type="application/json"
    )


def _since_wait(request: web.Request) -> tuple[int, float]:
    """The `since` and `wait` of a netmap request (400 unless both are numbers >= 0)."""
    try:
        since = int(request.query.get("since", "0"))
        wait = float(request.query.get("wait", str(DEFAULT_WAIT)))
    except ValueError as exc:
        raise BadRequest("since must be an integer and wait a number of seconds") from exc
    if since < 0 or not wait >= 0:
        raise BadRequest("since and wait must not be negative")
    return since, wait


async def netmap(request: web.Request) -> web.Response:
    node_id = await _node_id(request)
    since, wait = _since_wait(request)
    update = await request.app[SERVICE].netmap(node_id, since, wait)
    return web.Response(body=request.app[ENCODER].update(update), content_type="application/json")


async def netmap_stream(request: web.Request) -> web.StreamResponse:
    """The node's netmap as one long response: each `MapUpdate` of `ControlService.watch`,
    encoded once per change for every node it is the same for (`MapEncoder.line`), one JSON
    object and a newline per frame. A long-poll costs a whole HTTP request and reply per node
    per change, ~80 % of the server's CPU in a fan-out; a frame on a held stream costs one
    write.

    The stream counts as the node's heartbeat (`watch`), so a dead peer must end it: the
    socket's TCP_USER_TIMEOUT closes it once a frame (a heartbeat at the latest) stays
    unacknowledged for `wait` seconds, and the node goes silent from its last frame. Errors
    before the first frame are answered as for every route; after it, the stream just ends
    (a node removed meanwhile is told so when it opens the next one)."""
    node_id = await _node_id(request)
    since, wait = _since_wait(request)
    service = request.app[SERVICE]
    encoder = request.app[ENCODER]
    # Pushed frames are HTTP/1.1 chunks: an HTTP/1.0 client (a proxy's default) gets a body
    # that is not chunked, every frame written by the stream itself.
    send = _sender(request, encoder) if request.version >= HttpVersion11 else None
    updates = service.watch(node_id, since, wait, send)
    first = await anext(updates)  # refusals (a store failure) still get their status
    _dead_peer_timeout(request, service.stream_wait(wait))
    # X-Accel-Buffering: an HTTP proxy in front (nginx) would hold frames back otherwise.
    response = web.StreamResponse(
        headers={
            "Content-Type": STREAM_TYPE,
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    try:
        await _write_frame(response, encoder.line(first))
        async for update in updates:
            await _write_frame(response, encoder.line(update))
    except ConnectionError:
        pass  # the client went away (or TCP_USER_TIMEOUT ended it): nobody to tell
    except (ApiError, StoreError) as exc:
        log.info("netmap stream of node %s ended: %s", node_id, exc)
    finally:
        await updates.aclose()
    return response


def _sender(request: web.Request, encoder: MapEncoder) -> Send:
    """The stream's `Send` (see there): the update's frame, chunked as `response.write` frames
    it, written straight to the connection, once the stream has written its first frame (and
    the response's headers) itself. A connection with a backlog of PUSH_BACKLOG bytes or more
    waits for the stream's own write, which waits for it to drain; a frame above FRAME_PIECE is
    written in pieces there. One chunk is framed per update for every stream."""
    transport = request.transport

    def send(update: MapUpdate) -> bool:
        if (
            transport is None
            or transport.is_closing()
            or transport.get_write_buffer_size() >= PUSH_BACKLOG
            or len(encoder.line(update)) > FRAME_PIECE
        ):
            return False
        transport.write(encoder.chunk(update))
        return True

    return send


async def _write_frame(response: web.StreamResponse, frame: bytes) -> None:
    """One frame of a netmap stream, in pieces of at most FRAME_PIECE bytes (see there)."""
    if len(frame) <= FRAME_PIECE:
        await response.write(frame)
        return
    view = memoryview(frame)
    for start in range(0, len(frame), FRAME_PIECE):
        await response.write(view[start : start + FRAME_PIECE])


def _dead_peer_timeout(request: web.Request, seconds: float) -> None:
    """Close this connection once data written to it stays unacknowledged for `seconds`
    (TCP_USER_TIMEOUT; Linux): a peer that vanished without a FIN ends its stream, and
    stops counting as heard, within about one heartbeat."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is not None and hasattr(socket, "TCP_USER_TIMEOUT"):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(seconds * 1000))


def _charge_write(request: web.Request, node_id: str) -> None:
    """429 when this node changed its containers too often (before the body is parsed: a
    throttled report costs no validation)."""
    wait = request.app[RATES].node_writes.charge(node_id)
    if wait > 0:
        raise TooManyRequests(
            f"too many updates from this node; retry in {math.ceil(wait)} s", retry_after=wait
        )


async def containers(request: web.Request) -> web.Response:
    raw = await _body(request, MAX_REPORT)
    node_id = await _node_id(request, raw)
    _charge_write(request, node_id)
    await request.app[SERVICE].report_containers(node_id, _model(raw, ContainersReport))
    return web.Response(status=204)


async def node_report(request: web.Request) -> web.Response:
    raw = await _body(request, MAX_NODE_REPORT)
    node_id = await _node_id(request, raw)
    reports = request.app[dashboard.REPORTS]
    reports.admit(node_id)
    registry = request.app[SERVICE].registry
    reports.take(node_id, _model(raw, NodeReport), lambda peer: registry.get(peer) is not None)
    return web.Response(status=204)


async def relay_port(request: web.Request) -> web.Response:
    """Both nodes of a pair ask; each gets the port it sends to (see control/relay.py)."""
    raw = await _body(request)
    node_id = await _node_id(request, raw)
    _charge_write(request, node_id)
    req = _model(raw, RelayRequest)
    registry = request.app[SERVICE].registry
    if req.peer == node_id or registry.get(req.peer) is None:
        raise NotFound(f"no peer node {req.peer!r} to relay to")
    allowed = {
        n: frozenset(e.host for e in registry.require(n).endpoints if e.kind != "lan")
        for n in (node_id, req.peer)
    }
    try:
        port, _pair = await request.app[RELAY].grant(node_id, req.peer, allowed)
    except OSError as exc:
        raise RelayUnavailable(f"the relay cannot take this pair: {exc}") from exc
    return _json(RelayGrant(peer=req.peer, port=port))


async def list_relays(request: web.Request) -> web.Response:
    await _node_id(request)
    return _json(request.app[RELAYS])


async def leave(request: web.Request) -> web.Response:
    node_id = await _node_id(request)
    await request.app[SERVICE].leave(node_id)
    return web.Response(status=204)


async def rotate(request: web.Request) -> web.Response:
    raw = await _body(request)
    signer = await _signer(request, raw)
    req = _model(raw, RotateKeyRequest)
    # The proof is a second signature, by the new key, over both keys (see RotateKeyRequest).
    proved_by = await request.app[VERIFIER].verify(
        req.proof, "POST", ROTATE_PROOF_TARGET, rotate_proof_body(signer, req.new_public_key)
    )
    reply = await request.app[SERVICE].rotate_key(signer, req.new_public_key, proved_by)
    return _json(reply)


async def create_token(request: web.Request) -> web.Response:
    service = await _admin(request)
    req = await _parse(request, TokenCreateRequest, limit=MAX_SMALL_BODY)
    return _json(await service.create_token(req), status=201)


async def list_tokens(request: web.Request) -> web.Response:
    service = await _admin(request)
    body = _TOKEN_LIST.dump_json(await service.list_tokens())
    return web.Response(body=body, content_type="application/json")


async def revoke_token(request: web.Request) -> web.Response:
    service = await _admin(request)
    await service.revoke_token(request.match_info["id"])
    return web.Response(status=204)


async def list_nodes(request: web.Request) -> web.Response:
    service = await _admin(request)
    body = _NODE_LIST.dump_json(service.list_nodes())
    return web.Response(body=body, content_type="application/json")


async def remove_node(request: web.Request) -> web.Response:
    service = await _admin(request)
    allow = request.query.get("allow_rejoin", "0") in ("1", "true")
    await service.remove_node(request.match_info["name"], allow_rejoin=allow)
    return web.Response(status=204)


async def list_services(request: web.Request) -> web.Response:
    service = await _admin(request)
    body = _SERVICE_LIST.dump_json(service.list_services())
    return web.Response(body=body, content_type="application/json")


async def create_admin_token(request: web.Request) -> web.Response:
    service = await _admin(request)
    req = await _parse(request, AdminTokenCreateRequest, limit=MAX_SMALL_BODY)
    return _json(await service.create_admin_token(req), status=201)


async def list_admin_tokens(request: web.Request) -> web.Response:
    service = await _admin(request)
    body = _ADMIN_TOKEN_LIST.dump_json(await service.list_admin_tokens())
    return web.Response(body=body, content_type="application/json")


async def revoke_admin_token(request: web.Request) -> web.Response:
    service = await _admin(request)
    await service.revoke_admin_token(request.match_info["id"])
    return web.Response(status=204)


async def get_metrics(request: web.Request) -> web.Response:
    service = await _admin(request)
    text = request.app[METRICS].render(service)
    return web.Response(text=text, headers={"Content-Type": CONTENT_TYPE})


async def set_policy(request: web.Request) -> web.Response:
    service = await _admin(request)
    req = _model(await _body(request, MAX_POLICY_BODY), PolicySetRequest)
    return _json(await service.set_policy(req))


async def get_policy(request: web.Request) -> web.Response:
    service = await _admin(request)
    return _json(service.get_policy())


async def clear_policy(request: web.Request) -> web.Response:
    service = await _admin(request)
    return _json(await service.clear_policy())


async def test_policy(request: web.Request) -> web.Response:
    service = await _admin(request)
    q = request.query
    src, dst, proto = q.get("src", ""), q.get("dst", ""), _PROTOS.get(q.get("proto", "tcp"))
    if not src or not dst:
        raise BadRequest("src and dst are required (node, container or service names)")
    if proto is None:
        raise BadRequest(f"proto must be tcp, udp or icmp, not {q.get('proto')!r}")
    port: int | None = None
    if proto != "icmp":
        text = q.get("port", "")
        if not text.isdigit() or not 1 <= int(text) <= 65535:
            raise BadRequest(f"a {proto} test needs port 1-65535, not {text!r}")
        port = int(text)
    verdicts = service.test_policy(src, dst, proto, port)
    return web.Response(body=_VERDICT_LIST.dump_json(verdicts), content_type="application/json")


async def list_routes(request: web.Request) -> web.Response:
    service = await _admin(request)
    return web.Response(
        body=_ROUTE_LIST.dump_json(service.list_routes()), content_type="application/json"
    )


async def approve_route(request: web.Request) -> web.Response:
    service = await _admin(request)
    req = await _parse(request, RouteRef, limit=MAX_SMALL_BODY)
    return _json(await service.decide_route(req.route, "approved"))


async def reject_route(request: web.Request) -> web.Response:
    service = await _admin(request)
    req = await _parse(request, RouteRef, limit=MAX_SMALL_BODY)
    return _json(await service.decide_route(req.route, "rejected"))


async def container_cert(request: web.Request) -> web.Response:
    raw = await _body(request, MAX_SMALL_BODY * 2)
    node_id = await _node_id(request, raw)
    _charge_write(request, node_id)
    req = _model(raw, ContainerCertRequest)
    container, node = request.app[SERVICE].container_for_cert(node_id, req.container_id)
    # The wall clock, not the service's: TLS peers check validity against theirs.
    issued = request.app[SERVICE_CA].issue(
        req.csr, container_names(container, node), [container.ip], datetime.now(UTC)
    )
    return _json(issued)


async def service_cert(request: web.Request) -> web.Response:
    await _admin(request)
    req = await _parse(request, ServiceCertRequest, limit=MAX_SMALL_BODY * 2)
    issued = request.app[SERVICE_CA].issue(
        req.csr, service_names(req.service), [], datetime.now(UTC)
    )
    return _json(issued, status=201)
