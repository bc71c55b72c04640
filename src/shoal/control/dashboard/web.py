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
    GET  /dashboard/events       text/event-stream (SSE) of `update` events, each data a
                                 DashboardUpdate: the current one at once (unless the
                                 Last-Event-ID header names it), then one per change; a comment
                                 line every HEARTBEAT_SECONDS; an `ended` event and the end of
                                 the stream when the session or token no longer holds (checked
                                 every AUTH_RECHECK_SECONDS). At most MAX_STREAMS_PER_VIEWER
                                 per session or token and MAX_STREAMS per server (429 beyond).
                                 What the page's script follows.
    GET  /dashboard/app.js, /dashboard/app.css   the page's script and style (no data)

Sessions live in this process's memory (several replicas: log in on each, or pin the browser
to one) and hold the token they were opened with: every request checks it again, so a token
revoked or expired ends its sessions at once. The cookie is HttpOnly, Secure and
SameSite=Strict; nothing here writes to the mesh, so the dashboard needs no CSRF token.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from importlib import resources

from aiohttp import web
from pydantic import Field

from shoal.control.dashboard.reports import NodeReports
from shoal.control.dashboard.view import (
    Event,
    MeshView,
    events_between,
    look,
    render_live,
    render_login,
    render_page,
)
from shoal.control.errors import (
    AdminUnauthorized,
    BadRequest,
    PayloadTooLarge,
    RequestTimeout,
    TooManyRequests,
)
from shoal.control.liveness import utcnow
from shoal.control.relay import Relay
from shoal.control.service import ControlService
from shoal.model.netmap import Frozen
from shoal.store.errors import StoreError

log = logging.getLogger("shoal.control")

COOKIE = "shoal_dashboard"
SESSION_SECONDS = 12 * 3600
MAX_SESSIONS = 256  # the oldest is dropped past this: a login flood cannot grow memory
MAX_LOGIN_BODY = 1024  # bytes: {"token": ...} with a token of ~100 characters
LOGIN_BODY_TIMEOUT = 10.0  # seconds to send it
TICK = 1.0  # seconds between looks: a host going offline shows within the timeout + 1 s
# With nobody watching, a look this often keeps the event list (changes coalesce over it).
# Looking on every change instead cost each change O(nodes) with no viewer: 45 ms of a
# 290 ms change at 1,000 nodes (benchmarks.scale), ~0.5 s at 10,000.
UNWATCHED_LOOK_SECONDS = 30.0
REPORTS_LOOK_SECONDS = 10.0  # new path reports make a new look at most this often
EVENTS_KEPT = 200
# Event streams: each holds a connection and wakes on every change, so they are counted.
MAX_STREAMS = 64
MAX_STREAMS_PER_VIEWER = 4  # a few tabs of one browser
HEARTBEAT_SECONDS = 15.0  # below the usual 30-60 s idle timeouts of proxies
AUTH_RECHECK_SECONDS = 5.0  # a revoked token or a logout ends its streams within this
RETRY_MS = 2000  # the browser's reconnect delay after a stream broke
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
    """The view the dashboard shows, with the events between looks and a version that moves
    when (and only when) the view did. Refreshed by each viewer's request, every TICK while
    a viewer waits for a change, else every UNWATCHED_LOOK_SECONDS."""

    def __init__(
        self,
        service: ControlService,
        relay: Relay,
        clock: Callable[[], datetime] = utcnow,
        reports: NodeReports | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self._relay = relay
        self._clock = clock
        self.reports = reports if reports is not None else NodeReports()
        self._monotonic = monotonic
        self._reports_seen = -1  # the reports' version in the last look
        self._reports_at = -REPORTS_LOOK_SECONDS
        self.version = 0
        self.view: MeshView | None = None
        self.events: deque[Event] = deque(maxlen=EVENTS_KEPT)
        self._changed = asyncio.Event()
        self._seen: tuple[object, ...] | None = None
        self._watchers = 0  # viewers waiting in `after` (a page's live poll or stream)
        self._looked_at = -UNWATCHED_LOOK_SECONDS  # monotonic time of the last refresh

    def _fingerprint(self) -> tuple[object, ...]:
        """What moves whenever the view may have: every change of a node, container or the
        policy takes a revision; going offline (a timeout) and relays do not. A look at 1,000
        nodes and 5,000 containers took 65-95 ms here, this 1.5 ms: an idle mesh costs no
        looks (an in-memory registry on the 2-core dev machine)."""
        registry = self.service.registry
        online = tuple(n.id for n in registry.nodes() if registry.online(n.id))
        # Reports arrive all the time (one per node every 30 s) and their RTTs always differ:
        # they are looked at once every REPORTS_LOOK_SECONDS at most.
        now = self._monotonic()
        version = self.reports.version
        if version != self._reports_seen and now - self._reports_at >= REPORTS_LOOK_SECONDS:
            self._reports_seen, self._reports_at = version, now
        return (registry.revision, online, tuple(self._relay.pairs()), self._reports_seen)

    def refresh(self) -> bool:
        """Look again; True (and a new version, waiters woken) when something changed."""
        self._looked_at = self._monotonic()
        seen = self._fingerprint()
        if seen == self._seen:
            return False
        self._seen = seen
        registry = self.service.registry
        self.reports.prune({n.id for n in registry.nodes()})
        view = look(registry, self._relay, self.reports)
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
        self._watchers += 1
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await changed.wait()
        finally:
            self._watchers -= 1

    def due(self) -> bool:
        """Whether the next tick looks: every TICK while a viewer waits for a change, else
        every UNWATCHED_LOOK_SECONDS (each viewer's request looks for itself)."""
        return self._watchers > 0 or self._monotonic() - self._looked_at >= UNWATCHED_LOOK_SECONDS

    async def run(self) -> None:
        while True:
            if self.due():
                self.refresh()
            await asyncio.sleep(TICK)


class Streams:
    """The event streams open now, per viewer (a session id or a bearer token's hash)."""

    def __init__(self) -> None:
        self._open: dict[str, int] = {}
        self.total = 0

    @contextlib.contextmanager
    def hold(self, viewer: str) -> Iterator[None]:
        """One stream of `viewer` while the block runs; 429 beyond the caps."""
        if self.total >= MAX_STREAMS:
            raise TooManyRequests(
                f"the server already serves {MAX_STREAMS} dashboard streams; retry later",
                retry_after=HEARTBEAT_SECONDS,
            )
        if self._open.get(viewer, 0) >= MAX_STREAMS_PER_VIEWER:
            raise TooManyRequests(
                f"at most {MAX_STREAMS_PER_VIEWER} dashboard streams per session; close a tab",
                retry_after=HEARTBEAT_SECONDS,
            )
        self._open[viewer] = self._open.get(viewer, 0) + 1
        self.total += 1
        try:
            yield
        finally:
            self.total -= 1
            left = self._open[viewer] - 1
            if left:
                self._open[viewer] = left
            else:
                del self._open[viewer]


FEED = web.AppKey("dashboard_feed", Feed)
STREAMS = web.AppKey("dashboard_streams", Streams)
SESSIONS = web.AppKey("dashboard_sessions", Sessions)
REPORTS = web.AppKey("node_reports", NodeReports)


def install(app: web.Application, service: ControlService, relay: Relay) -> None:
    """Add the dashboard's routes to `app`, and its feed, which runs while the app does; the
    nodes' reports (`POST /v1/report`, an API route) go to `app[REPORTS]`."""
    app[REPORTS] = NodeReports()
    app[FEED] = Feed(service, relay, reports=app[REPORTS])
    app[SESSIONS] = Sessions()
    app[STREAMS] = Streams()
    app.cleanup_ctx.append(_feed_task)
    app.router.add_get("/dashboard", page)
    app.router.add_post("/dashboard/login", login)
    app.router.add_post("/dashboard/logout", logout)
    app.router.add_get("/dashboard/live", live)
    app.router.add_get("/dashboard/events", events)
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
    return await _viewer_id(request) is not None


async def _viewer_id(request: web.Request) -> str | None:
    """`_viewer`, naming who views: "session:<id>" or "bearer:<the token's hash>"."""
    service = request.app[FEED].service
    bearer = _bearer(request)
    if bearer is not None:
        await service.authenticate_admin(bearer, "read")
        return "bearer:" + hashlib.sha256(bearer.encode()).hexdigest()[:32]
    sessions = request.app[SESSIONS]
    sid = request.cookies.get(COOKIE)
    token = sessions.token(sid)
    if token is None:
        return None
    try:
        await service.authenticate_admin(token, "read")
    except AdminUnauthorized:
        sessions.close(sid)  # its token was revoked or expired since
        return None
    return f"session:{sid}"


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


async def events(request: web.Request) -> web.StreamResponse:
    viewer = await _viewer_id(request)
    if viewer is None:
        raise AdminUnauthorized("no dashboard session: log in at /dashboard")
    try:
        since = int(request.headers.get("Last-Event-ID", "-1"))
    except ValueError:
        since = -1  # not one of ours: send the current view
    with request.app[STREAMS].hold(viewer):
        response = web.StreamResponse(
            headers={
                **SECURITY_HEADERS,
                "Content-Type": "text/event-stream",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            await _stream(request, response, viewer, since)
        return response


async def _stream(
    request: web.Request, response: web.StreamResponse, viewer: str, since: int
) -> None:
    """Write updates to `response` until the viewer's credential no longer holds (then an
    `ended` event), the store cannot tell (the stream just ends: the browser reconnects and
    is answered then), or the client goes (a write raises ConnectionError)."""
    feed = request.app[FEED]
    await response.write(f"retry: {RETRY_MS}\n\n".encode())
    written = checked = time.monotonic()
    while True:
        feed.refresh()
        now = time.monotonic()
        if feed.version != since:
            since = feed.version
            update = DashboardUpdate(
                version=since, html=render_live(feed.current(), tuple(feed.events))
            )
            await response.write(
                f"id: {since}\nevent: update\ndata: {update.model_dump_json()}\n\n".encode()
            )
            written = now
        elif now - written >= HEARTBEAT_SECONDS:
            await response.write(b": heartbeat\n\n")
            written = now
        if now - checked >= AUTH_RECHECK_SECONDS:
            checked = now
            try:
                still = await _viewer_id(request) == viewer
            except AdminUnauthorized:
                still = False
            except StoreError as exc:
                log.warning("dashboard stream ended: store failure: %s", exc)
                return
            if not still:
                await response.write(
                    b'event: ended\ndata: {"reason": "session ended or token revoked"}\n\n'
                )
                return
        await feed.after(since, min(AUTH_RECHECK_SECONDS, HEARTBEAT_SECONDS))


async def static(request: web.Request) -> web.Response:
    name = request.path.rsplit("/", 1)[1]
    text = resources.files("shoal.control.dashboard").joinpath("static", name).read_text()
    return web.Response(
        text=text, content_type=_STATIC[name], headers={"X-Content-Type-Options": "nosniff"}
    )
