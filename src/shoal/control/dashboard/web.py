"""The dashboard's HTTP side: sessions, the routes, and the feed that keeps the view current.

    GET  /dashboard              the page (a session or an admin bearer token); without
                                 either, the login form, which holds no data of the mesh
    POST /dashboard/login        {"token": ...}: an admin token of scope read or wider →
                                 204 and a session cookie; a wrong token is a 401 that counts
                                 against the source's failed authentications like any other
    POST /dashboard/logout       → 204, the session ended
    GET  /dashboard/live?since=N&wait=S
                                 → DashboardUpdate: at once when the view is past version N,
                                 else when it changes or after `wait` s (capped like netmap
                                 long-polls): the page's script keeps itself current with it
    GET  /dashboard/app.js, /dashboard/app.css   the page's script and style (no data)

Sessions live in this process's memory (several replicas: log in on each, or pin the browser
to one) and hold the token they were opened with: every request checks it again, so a token
revoked or expired ends its sessions at once. The cookie is HttpOnly, Secure and
SameSite=Strict; nothing here writes to the mesh, so the dashboard needs no CSRF token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from importlib import resources

from aiohttp import web
from pydantic import Field

from shoal.control.dashboard.view import (
    Event,
    MeshView,
    events_between,
    look,
    render_live,
    render_login,
    render_page,
)
from shoal.control.errors import AdminUnauthorized, BadRequest, PayloadTooLarge, RequestTimeout
from shoal.control.liveness import utcnow
from shoal.control.relay import Relay
from shoal.control.service import ControlService
from shoal.model.netmap import Frozen

log = logging.getLogger("shoal.control")

COOKIE = "shoal_dashboard"
SESSION_SECONDS = 12 * 3600
MAX_SESSIONS = 256  # the oldest is dropped past this: a login flood cannot grow memory
MAX_LOGIN_BODY = 1024  # bytes: {"token": ...} with a token of ~100 characters
LOGIN_BODY_TIMEOUT = 10.0  # seconds to send it
TICK = 1.0  # seconds between looks: a host going offline shows within the timeout + 1 s
EVENTS_KEPT = 200
# No inline script or style anywhere: a name that slipped past escaping still cannot run.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_STATIC = {"app.js": "text/javascript", "app.css": "text/css"}


class DashboardLogin(Frozen):
    token: str = Field(max_length=200)


class DashboardUpdate(Frozen):
    version: int
    html: str  # the page's live part, every host-supplied text escaped


@dataclass(frozen=True, slots=True)
class _Session:
    token: str
    expires: float  # monotonic seconds


class Sessions:
    """Dashboard sessions of this process: an unguessable id → the admin token behind it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._open: OrderedDict[str, _Session] = OrderedDict()

    def open(self, token: str) -> str:
        while len(self._open) >= MAX_SESSIONS:
            self._open.popitem(last=False)
        sid = secrets.token_urlsafe(32)
        self._open[sid] = _Session(token, self._clock() + SESSION_SECONDS)
        return sid

    def token(self, sid: str | None) -> str | None:
        """The session's token; None when there is no such session or it expired."""
        session = self._open.get(sid or "")
        if session is None:
            return None
        if session.expires <= self._clock():
            self.close(sid)
            return None
        return session.token

    def close(self, sid: str | None) -> None:
        self._open.pop(sid or "", None)


class Feed:
    """The view the dashboard shows, refreshed every TICK, with the events between looks and
    a version that moves when (and only when) the view did."""

    def __init__(
        self, service: ControlService, relay: Relay, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.service = service
        self._relay = relay
        self._clock = clock
        self.version = 0
        self.view: MeshView | None = None
        self.events: deque[Event] = deque(maxlen=EVENTS_KEPT)
        self._changed = asyncio.Event()
        self._seen: tuple[object, ...] | None = None

    def _fingerprint(self) -> tuple[object, ...]:
        """What moves whenever the view may have: every change of a node, container or the
        policy takes a revision; going offline (a timeout) and relays do not. A look at 1,000
        nodes and 5,000 containers took 65-95 ms here, this 1.5 ms: an idle mesh costs no
        looks (an in-memory registry on the 2-core dev machine)."""
        registry = self.service.registry
        online = tuple(n.id for n in registry.nodes() if registry.online(n.id))
        return (registry.revision, online, tuple(self._relay.pairs()))

    def refresh(self) -> bool:
        """Look again; True (and a new version, waiters woken) when something changed."""
        seen = self._fingerprint()
        if seen == self._seen:
            return False
        self._seen = seen
        view = look(self.service.registry, self._relay)
        if view == self.view:
            return False
        if self.view is not None:
            for event in events_between(self.view, view, self._clock()):
                log.debug("dashboard event: %s", event.text)
                self.events.append(event)
        self.view = view
        self.version += 1
        woken, self._changed = self._changed, asyncio.Event()
        woken.set()
        return True

    def current(self) -> MeshView:
        """The view as of now (a request never shows what the last tick saw)."""
        self.refresh()
        assert self.view is not None
        return self.view

    async def after(self, since: int, wait: float) -> None:
        """Return once the version is past `since`, or after `wait` seconds."""
        if since != self.version:
            return
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await changed.wait()

    async def run(self) -> None:
        while True:
            self.refresh()
            await asyncio.sleep(TICK)


FEED = web.AppKey("dashboard_feed", Feed)
SESSIONS = web.AppKey("dashboard_sessions", Sessions)


def install(app: web.Application, service: ControlService, relay: Relay) -> None:
    """Add the dashboard's routes to `app`, and its feed, which runs while the app does."""
    app[FEED] = Feed(service, relay)
    app[SESSIONS] = Sessions()
    app.cleanup_ctx.append(_feed_task)
    app.router.add_get("/dashboard", page)
    app.router.add_post("/dashboard/login", login)
    app.router.add_post("/dashboard/logout", logout)
    app.router.add_get("/dashboard/live", live)
    app.router.add_get("/dashboard/app.js", static)
    app.router.add_get("/dashboard/app.css", static)


async def _feed_task(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(app[FEED].run(), name="shoal-dashboard-feed")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _bearer(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


async def _viewer(request: web.Request) -> bool:
    """Whether the request may see the mesh: a live session, or an admin bearer token.
    A bearer token that is not accepted is a 401 (scripts get told); no credential at all
    is False (browsers get the login form)."""
    service = request.app[FEED].service
    bearer = _bearer(request)
    if bearer is not None:
        await service.authenticate_admin(bearer, "read")
        return True
    sessions = request.app[SESSIONS]
    sid = request.cookies.get(COOKIE)
    token = sessions.token(sid)
    if token is None:
        return False
    try:
        await service.authenticate_admin(token, "read")
    except AdminUnauthorized:
        sessions.close(sid)  # its token was revoked or expired since
        return False
    return True


def _html(text: str) -> web.Response:
    return web.Response(text=text, content_type="text/html", headers=SECURITY_HEADERS)


async def page(request: web.Request) -> web.Response:
    if not await _viewer(request):
        return _html(render_login())
    feed = request.app[FEED]
    view = feed.current()
    return _html(render_page(view, tuple(feed.events), feed.version))


async def login(request: web.Request) -> web.Response:
    if request.content_length is not None and request.content_length > MAX_LOGIN_BODY:
        raise PayloadTooLarge(f"request body larger than {MAX_LOGIN_BODY} bytes")
    try:
        async with asyncio.timeout(LOGIN_BODY_TIMEOUT):
            raw = await request.content.read(MAX_LOGIN_BODY + 1)
    except TimeoutError as exc:
        raise RequestTimeout(f"request body not sent within {LOGIN_BODY_TIMEOUT:g} s") from exc
    if len(raw) > MAX_LOGIN_BODY:
        raise PayloadTooLarge(f"request body larger than {MAX_LOGIN_BODY} bytes")
    try:
        token = DashboardLogin.model_validate_json(raw).token.strip()
    except ValueError as exc:
        raise BadRequest('expected {"token": "SHOAL-ADMIN-1-..."}') from exc
    await request.app[FEED].service.authenticate_admin(token, "read")
    response = web.Response(status=204, headers=SECURITY_HEADERS)
    response.set_cookie(
        COOKIE,
        request.app[SESSIONS].open(token),
        max_age=SESSION_SECONDS,
        path="/dashboard",
        secure=True,
        httponly=True,
        samesite="Strict",
    )
    log.info("dashboard: session opened from %s", request.remote)
    return response


async def logout(request: web.Request) -> web.Response:
    request.app[SESSIONS].close(request.cookies.get(COOKIE))
    response = web.Response(status=204, headers=SECURITY_HEADERS)
    response.del_cookie(COOKIE, path="/dashboard")
    return response


async def live(request: web.Request) -> web.Response:
    if not await _viewer(request):
        raise AdminUnauthorized("no dashboard session: log in at /dashboard")
    feed = request.app[FEED]
    try:
        since = int(request.query.get("since", "-1"))
        wait = float(request.query.get("wait", "0"))
    except ValueError as exc:
        raise BadRequest("since must be an integer and wait a number of seconds") from exc
    if not wait >= 0:
        raise BadRequest("wait must not be negative")
    feed.refresh()
    await feed.after(since, min(wait, feed.service.max_wait))
    view = feed.current()
    update = DashboardUpdate(version=feed.version, html=render_live(view, tuple(feed.events)))
    return web.Response(
        body=update.model_dump_json(), content_type="application/json", headers=SECURITY_HEADERS
    )


async def static(request: web.Request) -> web.Response:
    name = request.path.rsplit("/", 1)[1]
    text = resources.files("shoal.control.dashboard").joinpath("static", name).read_text()
    return web.Response(
        text=text, content_type=_STATIC[name], headers={"X-Content-Type-Options": "nosniff"}
    )
