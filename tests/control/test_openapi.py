"""The published OpenAPI document, and a property-based fuzz of the whole API against a real
server: requests made from the document (valid, nearly valid and junk), with no credential, a
node's signature and the admin token. No response may be a 5xx, break the document's schema
or echo unbounded input, and the server must serve a real agent afterwards."""

from __future__ import annotations

import asyncio
import json
import string
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from yarl import URL

from shoal.control import openapi
from shoal.control.api import build_app
from shoal.control.app import RunningServer, start_server
from shoal.control.ca import CertAuthority
from shoal.control.config import load_config
from shoal.control.nodeauth import NodeVerifier
from shoal.controlclient.client import ControlClient
from shoal.controlclient.tls import ssl_context
from shoal.model.api import ErrorBody, RegisterRequest, TokenCreateRequest
from shoal.model.keys import PrivateKey
from shoal.model.nodeauth import shared_key, sign
from shoal.store.memory import MemoryStore

T = TypeVar("T")
CASES_PER_ROUTE = 70  # x 16 routes: over 1,000 cases in all
MAX_ERROR_BODY = 2048  # bytes: an error never echoes what it was sent


def test_the_document_is_valid_openapi_and_names_every_route() -> None:
    doc = openapi.document()
    validate(doc)
    served = {
        (r.method, r.resource.canonical)
        for r in _router_routes()
        if r.method != "HEAD" and r.resource is not None
    }
    documented = {(r.method, r.path) for r in openapi.ROUTES}
    assert served == documented


def _router_routes() -> list[Any]:
    service: Any = object()  # routing only: no handler runs
    ca = CertAuthority(b"", "", Path(), Path())
    verifier = NodeVerifier(PrivateKey.generate(), MemoryStore())
    return list(build_app(service, ca, verifier).router.routes())


# -- a strategy per JSON schema (the subset pydantic emits for shoal's models) --------------


def from_schema(schema: dict[str, Any], defs: dict[str, Any], depth: int = 0) -> Any:
    if "$ref" in schema:
        return from_schema(defs[schema["$ref"].rsplit("/", 1)[1]], defs, depth)
    if "anyOf" in schema:
        return st.one_of([from_schema(s, defs, depth) for s in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        required = set(schema.get("required", ()))
        fixed = {k: from_schema(v, defs, depth + 1) for k, v in props.items() if k in required}
        optional = {
            k: from_schema(v, defs, depth + 1) for k, v in props.items() if k not in required
        }
        return st.fixed_dictionaries(fixed, optional=optional)
    if kind == "array":
        return st.lists(
            from_schema(schema.get("items", {}), defs, depth + 1), max_size=3 if depth else 6
        )
    if kind == "string":
        return _string(schema)
    if kind == "integer":
        low = schema.get("minimum", schema.get("exclusiveMinimum", -(2**40)))
        return st.integers(min_value=low, max_value=schema.get("maximum", 2**40))
    if kind == "number":
        return st.floats(min_value=schema.get("minimum", -1e9), max_value=1e9)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return JUNK


def _string(schema: dict[str, Any]) -> Any:
    fmt = schema.get("format")
    if fmt == "ipv4":
        return st.ip_addresses(v=4).map(str)
    if fmt == "ipv4network":
        return st.builds(lambda a, p: f"{a}/{p}", st.ip_addresses(v=4), st.integers(0, 32))
    if fmt == "date-time":
        return st.datetimes().map(lambda d: d.isoformat() + "Z")
    if "pattern" in schema:
        return st.from_regex(schema["pattern"], fullmatch=True)
    if schema.get("title") == "Public Key":
        return st.just(str(PrivateKey.generate().public_key()))
    return st.text(string.printable, max_size=schema.get("maxLength", 80))


JUNK = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)


# -- a real server on a loop of its own (hypothesis drives it from the test's thread) --------


@dataclass
class Live:
    server: RunningServer
    loop: asyncio.AbstractEventLoop
    session: aiohttp.ClientSession
    node: PrivateKey
    mac_key: bytes
    token: str
    statuses: dict[int, int] = field(default_factory=dict)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def setup() -> Live:
        data = tmp_path_factory.mktemp("fuzz")
        # A short heartbeat caps long-polls at 0.5 s: a fuzzed `wait` cannot stall the run.
        # Every case comes from 127.0.0.1: the per-address limits (tests/control/test_bounds)
        # would answer most of them 429 instead of running the handlers.
        server = await start_server(
            load_config(
                listen="127.0.0.1:0",
                data_dir=data,
                heartbeat_timeout=1.5,
                no_limits_from="127.0.0.0/8",
            )
        )
        node = PrivateKey.generate()
        async with ControlClient(server.url, server.ca.ca_pem, server.admin_token) as admin:
            token = (
                await admin.create_token(TokenCreateRequest(reusable=True, expires_in_seconds=None))
            ).token
        await _register(server, node, token)
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl_context(server.ca.ca_pem))
        )
        server_pub = PrivateKey.parse((Path(data) / "node-auth.key").read_text()).public_key()
        mac_key = shared_key(node, server_pub, node.public_key(), server_pub)
        return Live(server, loop, session, node, mac_key, token)

    live = asyncio.run_coroutine_threadsafe(setup(), loop).result(timeout=60)
    try:
        yield live
    finally:
        live.run(live.session.close())
        live.run(live.server.close())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


async def _register(server: RunningServer, key: PrivateKey, token: str) -> None:
    async with ControlClient(server.url, server.ca.ca_pem, node_key=key) as client:
        await client.register(
            RegisterRequest(token=token, name="fuzz", public_key=key.public_key())
        )


DOC = openapi.document()
DEFS = DOC["components"]["schemas"]


def request_for(route: openapi.Route) -> Any:
    """(path, query, body bytes, auth kind) for `route`: from its schema, or junk."""
    path_parts = st.text(string.ascii_letters + string.digits + "-_.%", min_size=1, max_size=20)
    path = st.just(route.path)
    for name in ("{id}", "{name}"):
        if name in route.path:
            path = path_parts.map(lambda v, n=name: route.path.replace(n, v))
    query = st.fixed_dictionaries(
        {},
        optional={
            name: st.one_of(from_schema(schema, DEFS), st.text(max_size=12))
            for name, schema in route.query
        },
    )
    if route.body is not None:
        schema = DEFS[route.body.__name__]
        valid = from_schema(schema, DEFS).map(lambda d: json.dumps(d).encode())
        body = st.one_of(
            valid, valid, JUNK.map(lambda d: json.dumps(d).encode()), st.binary(max_size=64)
        )
    else:
        body = st.one_of(st.just(b""), st.binary(max_size=32))
    return st.tuples(path, query, body, st.sampled_from(["none", "node", "admin"]))


STREAM_PREFIX = 64 * 1024  # bytes read of an event stream: its first event fits
STREAM_WAIT = 5.0  # seconds the first event may take


async def send(
    live: Live, method: str, path: str, query: dict[str, Any], body: bytes, auth: str
) -> tuple[int, bytes]:
    """The status and body; of an event stream, its beginning up to the first event, of a
    netmap stream its first line (the streams themselves never end: the connection is closed
    after it)."""
    target = path + ("?" + "&".join(f"{k}={_q(v)}" for k, v in query.items()) if query else "")
    headers = {"Content-Type": "application/json"}
    if auth == "node":
        headers["Authorization"] = sign(
            live.mac_key, live.node.public_key(), method, target, body, int(time.time())
        ).header()
    elif auth == "admin":
        headers["Authorization"] = f"Bearer {live.server.admin_token}"
    url = live.server.url + target
    async with live.session.request(
        method, yarl_url(url), data=body or None, headers=headers
    ) as resp:
        if resp.content_type == "application/x-ndjson":
            async with asyncio.timeout(STREAM_WAIT):
                first = b""
                while not first.endswith(b"\n"):
                    chunk = await resp.content.readany()
                    assert chunk, f"the stream ended before its first line: {first[:300]!r}"
                    first += chunk
            resp.close()
            return resp.status, first.split(b"\n", 1)[0]
        if resp.content_type != "text/event-stream":
            return resp.status, await resp.read()
        async with asyncio.timeout(STREAM_WAIT):
            head = b""
            while b"\nevent: update\n" not in head or not head.endswith(b"\n\n"):
                line = await resp.content.readline()
                assert line, f"the stream ended before its first event: {head[:300]!r}"
                head += line
                assert len(head) <= STREAM_PREFIX, f"first event over {STREAM_PREFIX} B"
        resp.close()
        return resp.status, head


def first_event_data(stream: bytes) -> bytes:
    """The data of the first `update` event of an event stream's beginning."""
    event = stream.split(b"\nevent: update\n", 1)[1]
    (data,) = [x for x in event.split(b"\n") if x.startswith(b"data: ")]
    return data.removeprefix(b"data: ")


def _q(value: Any) -> str:
    return quote(str(value).lower() if isinstance(value, bool) else str(value), safe="")


def yarl_url(url: str) -> URL:
    return URL(url, encoded=True)


@pytest.mark.parametrize("route", openapi.ROUTES, ids=lambda r: f"{r.method} {r.path}")
def test_fuzz_every_route(live: Live, route: openapi.Route) -> None:
    @settings(
        max_examples=CASES_PER_ROUTE,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(request_for(route))
    def one(case: tuple[str, dict[str, Any], bytes, str]) -> None:
        path, query, body, auth = case
        status, raw = live.run(send(live, route.method, path, query, body, auth))
        live.statuses[status] = live.statuses.get(status, 0) + 1
        assert status < 500, (route.method, path, query, body[:200], auth, raw[:300])
        if status >= 400:
            assert len(raw) <= MAX_ERROR_BODY
            ErrorBody.model_validate_json(raw)
        elif route.reply is not None and status == route.status:
            data = json.loads(first_event_data(raw) if route.stream == "text/event-stream" else raw)
            for item in data if route.many else [data]:
                route.reply.model_validate(item)
        if route.path == "/v1/leave" and status == 204:
            live.run(_register(live.server, live.node, live.token))  # keep a node to sign as

    one()


def test_the_server_serves_an_agent_after_the_fuzz(live: Live) -> None:
    assert sum(live.statuses.values()) >= len(openapi.ROUTES) * CASES_PER_ROUTE >= 1000
    print(f"fuzz: {sum(live.statuses.values())} requests, statuses {sorted(live.statuses.items())}")

    async def agent() -> str:
        key = PrivateKey.generate()
        async with ControlClient(live.server.url, live.server.ca.ca_pem, node_key=key) as c:
            await c.register(
                RegisterRequest(token=live.token, name="after", public_key=key.public_key())
            )
            return (await c.poll(since=0, wait=0)).kind

    assert live.run(agent()) == "full"
