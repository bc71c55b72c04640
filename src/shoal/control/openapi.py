"""The server's API described as OpenAPI 3.1, generated from the models that parse it.

`ROUTES` names every route with its auth, body and reply model; `document()` renders it, with
every model's JSON schema from pydantic (what the server validates is what it publishes). A
test keeps `ROUTES` and the aiohttp router equal, so the document cannot drift from the API.
Served at `GET /v1/openapi.json`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from shoal.control.dashboard.web import DashboardLogin, DashboardUpdate
from shoal.model.api import (
    API_VERSION,
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
)
from shoal.model.certs import ContainerCertRequest, IssuedCert, ServiceCertRequest
from shoal.model.netmap import MapUpdate
from shoal.model.routes import RouteInfo, RouteRef

# "dashboard": an admin bearer token, or the session cookie POST /dashboard/login sets.
Auth = Literal["none", "node", "admin", "dashboard"]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    summary: str
    auth: Auth
    body: type[BaseModel] | None = None
    reply: type[BaseModel] | None = None
    many: bool = False  # the reply is a list of `reply`
    status: int = 200
    query: tuple[tuple[str, dict[str, Any]], ...] = ()
    # The reply is a stream of `reply`: "text/event-stream", each event's data one; or
    # "application/x-ndjson", one per line.
    stream: Literal["", "text/event-stream", "application/x-ndjson"] = ""


ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/openapi.json", "This document", "none"),
    Route("GET", "/v1/ca", "The CA certificate (PEM) that join tokens pin", "none"),
    Route("GET", "/v1/trust", "The trust bundle (PEM): current, next and previous CA", "none"),
    Route("GET", "/v1/key", "The key node signatures are keyed with", "none", reply=ServerKey),
    Route(
        "POST",
        "/v1/register",
        "Join (a new key, with a join token) or join again (a known key)",
        "node",
        RegisterRequest,
        RegisterResponse,
    ),
    Route(
        "POST",
        "/v1/relay",
        "A relay port for this node's WireGuard traffic to a peer it has no direct path to",
        "node",
        RelayRequest,
        RelayGrant,
    ),
    Route("GET", "/v1/relays", "The TCP relays, in order of preference", "node", reply=RelayList),
    Route(
        "GET",
        "/v1/netmap",
        "Long-poll the network map: full, a delta from `since`, or none after `wait` s",
        "node",
        reply=MapUpdate,
        query=(
            ("since", {"type": "integer", "minimum": 0}),
            ("wait", {"type": "number", "minimum": 0}),
        ),
    ),
    Route(
        "GET",
        "/v1/netmap/stream",
        "Follow the network map on one response: the update from `since` (full, delta or "
        "none), then each change, and a none after `wait` s without one (the heartbeat)",
        "node",
        reply=MapUpdate,
        query=(
            ("since", {"type": "integer", "minimum": 0}),
            ("wait", {"type": "number", "minimum": 0}),
        ),
        stream="application/x-ndjson",
    ),
    Route(
        "POST",
        "/v1/containers",
        "Report this host's complete set of containers",
        "node",
        ContainersReport,
        status=204,
    ),
    Route("POST", "/v1/leave", "Remove this node from the mesh", "node", status=204),
    Route(
        "POST",
        "/v1/report",
        "Report this node's version and paths (handshake age, RTT) for the dashboard; at "
        "most every 10 s",
        "node",
        NodeReport,
        status=204,
    ),
    Route(
        "POST",
        "/v1/rotate",
        "Announce this node's next WireGuard key (signed with the current one, proven with "
        "the new one); every host switches at the reply's time",
        "node",
        RotateKeyRequest,
        RotateKeyReply,
    ),
    Route(
        "POST",
        "/v1/admin/tokens",
        "Create a join token",
        "admin",
        TokenCreateRequest,
        TokenCreated,
        status=201,
    ),
    Route("GET", "/v1/admin/tokens", "List join tokens", "admin", reply=TokenInfo, many=True),
    Route("DELETE", "/v1/admin/tokens/{id}", "Revoke a join token", "admin", status=204),
    Route("GET", "/v1/admin/nodes", "List nodes", "admin", reply=NodeInfo, many=True),
    Route(
        "GET", "/v1/admin/services", "The service catalog", "admin", reply=ServiceInfo, many=True
    ),
    Route(
        "DELETE",
        "/v1/admin/nodes/{name}",
        "Remove a node and revoke its key (unless allow_rejoin=1)",
        "admin",
        status=204,
        query=(("allow_rejoin", {"type": "string", "enum": ["0", "1", "true"]}),),
    ),
    Route(
        "GET",
        "/v1/admin/certs",
        "The CAs and the server certificate, with their expiry",
        "admin",
        reply=CertStatus,
        many=True,
    ),
    Route(
        "POST",
        "/v1/admin/admin-tokens",
        "Create a scoped admin token",
        "admin",
        AdminTokenCreateRequest,
        AdminTokenCreated,
        status=201,
    ),
    Route(
        "GET",
        "/v1/admin/admin-tokens",
        "List admin tokens",
        "admin",
        reply=AdminTokenInfo,
        many=True,
    ),
    Route("DELETE", "/v1/admin/admin-tokens/{id}", "Revoke an admin token", "admin", status=204),
    Route("GET", "/metrics", "Prometheus metrics, text format (scope read)", "admin"),
    Route(
        "PUT",
        "/v1/admin/policy",
        "Set the access-control policy (refused unless it parses and its inline tests pass)",
        "admin",
        PolicySetRequest,
        PolicyInfo,
    ),
    Route("GET", "/v1/admin/policy", "The policy in force", "admin", reply=PolicyInfo),
    Route(
        "DELETE",
        "/v1/admin/policy",
        "Remove the policy: shoal's defaults apply again",
        "admin",
        reply=PolicyCleared,
    ),
    Route(
        "POST",
        "/v1/certs",
        "A certificate for this node's container labelled shoal.tls=true (its mesh names and "
        "IP), signed by the mesh service CA",
        "node",
        ContainerCertRequest,
        IssuedCert,
    ),
    Route(
        "POST",
        "/v1/admin/certs",
        "A certificate for a service name (shoal cert issue), signed by the mesh service CA",
        "admin",
        ServiceCertRequest,
        IssuedCert,
        status=201,
    ),
    Route(
        "GET",
        "/v1/admin/routes",
        "Subnet routes nodes advertise, with the admin's decision on each",
        "admin",
        reply=RouteInfo,
        many=True,
    ),
    Route(
        "POST",
        "/v1/admin/routes/approve",
        "Approve a subnet route (by id or prefix): peers route it through its node",
        "admin",
        RouteRef,
        RouteInfo,
    ),
    Route(
        "POST",
        "/v1/admin/routes/reject",
        "Reject a subnet route (by id or prefix): it leaves every netmap",
        "admin",
        RouteRef,
        RouteInfo,
    ),
    Route(
        "GET",
        "/v1/admin/policy/test",
        "The verdict the destination's firewall gives a new flow, and the rule that decided",
        "admin",
        reply=PolicyVerdict,
        many=True,
        query=(
            ("src", {"type": "string"}),
            ("dst", {"type": "string"}),
            ("proto", {"type": "string", "enum": ["tcp", "udp", "icmp"]}),
            ("port", {"type": "integer", "minimum": 1, "maximum": 65535}),
        ),
    ),
    Route(
        "GET",
        "/dashboard",
        "The web dashboard (HTML); without a session or token, the login form",
        "dashboard",
    ),
    Route(
        "POST",
        "/dashboard/login",
        "Open a dashboard session (cookie) with an admin token of scope read or wider",
        "none",
        DashboardLogin,
        status=204,
    ),
    Route("POST", "/dashboard/logout", "End this dashboard session", "none", status=204),
    Route(
        "GET",
        "/dashboard/live",
        "Long-poll the dashboard's live part: at once when past `since`, else on a change "
        "or after `wait` s",
        "dashboard",
        reply=DashboardUpdate,
        query=(
            ("since", {"type": "integer"}),
            ("wait", {"type": "number", "minimum": 0}),
        ),
    ),
    Route(
        "GET",
        "/dashboard/events",
        "Server-sent events of the dashboard's live part: `update` events (data: the "
        "update) at once and on every change, heartbeat comments, `ended` when the session "
        "or token no longer holds",
        "dashboard",
        reply=DashboardUpdate,
        stream="text/event-stream",
    ),
    Route("GET", "/dashboard/app.js", "The dashboard's script", "none"),
    Route("GET", "/dashboard/app.css", "The dashboard's style sheet", "none"),
)

_SECURITY: dict[Auth, list[dict[str, list[str]]]] = {
    "none": [],
    "node": [{"nodeSignature": []}],
    "admin": [{"adminToken": []}],
    "dashboard": [{"adminToken": []}, {"dashboardSession": []}],
}
_REF = "#/components/schemas/{model}"


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of `ROUTES`."""
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [(ErrorBody, "serialization")]
    for route in ROUTES:
        if route.body is not None:
            wanted.append((route.body, "validation"))
        if route.reply is not None:
            wanted.append((route.reply, "serialization"))
    refs, defs = models_json_schema(list(dict.fromkeys(wanted)), ref_template=_REF)
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, refs)
    return {
        "openapi": "3.1.0",
        "info": {"title": "shoal control server", "version": str(API_VERSION)},
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {
                "nodeSignature": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "Shoal-Node <public key>.<unix time>.<nonce>.<mac>: see "
                    "shoal.model.nodeauth",
                },
                "adminToken": {"type": "http", "scheme": "bearer"},
                "dashboardSession": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "shoal_dashboard",
                    "description": "set by POST /dashboard/login",
                },
            },
        },
    }


def _operation(route: Route, refs: dict[Any, Any]) -> dict[str, Any]:
    error = {"application/json": {"schema": refs[(ErrorBody, "serialization")]}}
    responses: dict[str, Any] = {"4XX": {"description": "refused", "content": error}}
    if route.reply is not None:
        schema = refs[(route.reply, "serialization")]
        if route.many:
            schema = {"type": "array", "items": schema}
        content = {"application/json": {"schema": schema}}
        if route.stream:
            # OpenAPI 3.1 cannot type the items of a stream: their schema goes in the
            # description.
            items = (
                "events whose data is a "
                if route.stream == "text/event-stream"
                else "one JSON object per line, each a "
            )
            content = {
                route.stream: {
                    "schema": {"type": "string", "description": items + route.reply.__name__}
                }
            }
        responses[str(route.status)] = {"description": "OK", "content": content}
    else:
        responses[str(route.status)] = {"description": "OK"}
    op: dict[str, Any] = {
        "summary": route.summary,
        "security": _SECURITY[route.auth],
        "responses": responses,
    }
    params = [
        {"name": name, "in": "query", "required": False, "schema": schema}
        for name, schema in route.query
    ]
    params += [
        {"name": part[1:-1], "in": "path", "required": True, "schema": {"type": "string"}}
        for part in route.path.split("/")
        if part.startswith("{")
    ]
    if params:
        op["parameters"] = params
    if route.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[(route.body, "validation")]}},
        }
    return op
