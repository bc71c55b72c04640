"""The agent's local API on a unix socket in its state dir: status, services, doctor,
down and rotate-key; and the read-only catalog socket for tools (`serve_catalog`).

The CLI's client is `localclient` (stdlib only).

Only root can reach it (the socket is 0600 in a 0700 dir); it is how `shoal status` sees the
live WireGuard counters even when the agent runs in another mount namespace (the lab).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from pydantic import TypeAdapter

from shoal.agent.catalogfeed import CatalogFeed
from shoal.agent.errors import RotationFailed
from shoal.model.api import ErrorBody, ServiceInfo
from shoal.model.catalog import Catalog
from shoal.model.doctor import DoctorReport, UnknownTarget
from shoal.model.status import AgentStatus, DownReport, KeyRotation

StatusFn = Callable[[], Awaitable[AgentStatus]]
DownFn = Callable[[bool], Awaitable[DownReport]]
ServicesFn = Callable[[], Awaitable[list[ServiceInfo]]]
DoctorFn = Callable[[str | None], Awaitable[DoctorReport]]
RotateFn = Callable[[], Awaitable[KeyRotation]]
_SERVICES = TypeAdapter(list[ServiceInfo])


async def serve(
    socket_path: Path,
    status: StatusFn,
    down: DownFn,
    services: ServicesFn,
    doctor: DoctorFn | None = None,
    rotate: RotateFn | None = None,
) -> web.AppRunner:
    async def get_status(_: web.Request) -> web.Response:
        return web.json_response(text=(await status()).model_dump_json())

    async def get_services(_: web.Request) -> web.Response:
        return web.json_response(text=_SERVICES.dump_json(await services()).decode())

    async def post_down(request: web.Request) -> web.Response:
        leave = request.query.get("leave") == "1"
        return web.json_response(text=(await down(leave)).model_dump_json())

    async def get_doctor(request: web.Request) -> web.Response:
        assert doctor is not None
        try:
            report = await doctor(request.query.get("target") or None)
        except UnknownTarget as exc:
            return web.json_response({"error": str(exc)}, status=404)
        return web.json_response(text=report.model_dump_json())

    async def post_rotate_key(_: web.Request) -> web.Response:
        assert rotate is not None
        try:
            rotation = await rotate()
        except RotationFailed as exc:
            body = ErrorBody(code="rotation_failed", message=str(exc))
            return web.json_response(text=body.model_dump_json(), status=409)
        return web.json_response(text=rotation.model_dump_json())

    app = web.Application()
    if doctor is not None:
        app.router.add_get("/doctor", get_doctor)
    if rotate is not None:
        app.router.add_post("/rotate-key", post_rotate_key)
    app.router.add_get("/status", get_status)
    app.router.add_get("/services", get_services)
    app.router.add_post("/down", post_down)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    socket_path.unlink(missing_ok=True)
    site = web.UnixSite(runner, str(socket_path))
    await site.start()
    socket_path.chmod(0o600)
    return runner


INDEX_HEADER = "X-Shoal-Index"


class BadQuery(ValueError):
    """A catalog query parameter that is not a number in range: the caller's fault (400)."""


def _number(request: web.Request, name: str, *, integer: bool) -> float:
    text = request.query.get(name, "0")
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        raise BadQuery(f"{name}={text!r} is not a number") from None
    if not value >= 0:  # also refuses NaN
        raise BadQuery(f"{name}={text!r} must be 0 or more")
    return value


async def serve_catalog(socket_path: Path, feed: CatalogFeed) -> web.AppRunner:
    """The catalog, read-only, on its own unix socket (mode 0666: it reveals what every host's
    DNS already answers, and a container may mount it like docker.sock). GET only:

      /v1/catalog[?index=N&wait=S]   the Catalog; with `index`, blocks up to S seconds (at
                                     most 300) until the catalog's index exceeds N
      /v1/catalog/{name}             the entries named `name` (a list, usually of one); 404
    Every answer carries the catalog's index in the X-Shoal-Index header."""

    def reply(text: str, catalog: Catalog, status: int = 200) -> web.Response:
        return web.json_response(
            text=text, status=status, headers={INDEX_HEADER: str(catalog.index)}
        )

    def error(message: str, status: int) -> web.Response:
        body = ErrorBody(code="bad_request" if status == 400 else "not_found", message=message)
        return web.json_response(text=body.model_dump_json(), status=status)

    async def get_catalog(request: web.Request) -> web.Response:
        try:
            index = int(_number(request, "index", integer=True))
            wait = _number(request, "wait", integer=False)
        except BadQuery as exc:
            return error(str(exc), 400)
        catalog = await feed.wait(index, wait) if "index" in request.query else feed.catalog
        return reply(catalog.model_dump_json(), catalog)

    async def get_entry(request: web.Request) -> web.Response:
        catalog = feed.catalog
        name = request.match_info["name"]
        found = [s for s in catalog.services if s.name == name]
        if not found:
            return error(f"no service or container named {name!r} in the catalog", 404)
        return reply(_SERVICES.dump_json(found).decode(), catalog)

    app = web.Application()
    app.router.add_get("/v1/catalog", get_catalog)
    app.router.add_get("/v1/catalog/{name}", get_entry)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    socket_path.unlink(missing_ok=True)
    await web.UnixSite(runner, str(socket_path)).start()
    socket_path.chmod(0o666)
    return runner
