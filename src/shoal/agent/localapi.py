"""The agent's local API on a unix socket in its state dir: status, services, doctor,
down and rotate-key.

The CLI's client is `localclient` (stdlib only).

Only root can reach it (the socket is 0600 in a 0700 dir); it is how `shoal status` sees the
live WireGuard counters even when the agent runs in another mount namespace (the lab).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from pydantic import TypeAdapter

from shoal.agent.errors import RotationFailed
from shoal.model.api import ErrorBody, ServiceInfo
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
