"""The server's Prometheus metrics, served at `GET /metrics` to an admin token of scope read
(a scraper gets its own: `shoal admin token create --scope read`).

    shoal_server_nodes{state}                                nodes online / offline now
    shoal_server_netmap_revision                             the mesh's current revision
    shoal_server_long_polls_open                             netmap long-polls and streams
                                                             held open now
    shoal_server_registrations_total{result}                 POST /v1/register: ok, or the
                                                             error code it was refused with
    shoal_server_requests_total{route,method,status}
    shoal_server_rejected_requests_total{route,code}         every 4xx, by its error code
    shoal_server_auth_failures_total{code}                   the 401s and 403s among them
    shoal_server_request_duration_seconds{route}             histogram; long-polls excluded
    shoal_server_fanout_seconds                              histogram: a change to its frame
                                                             on every stream pushed to
    shoal_server_netmap_pushes_total                         frames the change log pushed
    shoal_server_netmap_wakeups_total                        polls and streams it woke instead

`route` is the route's pattern (`/v1/admin/nodes/{name}`), or "unmatched": a scanner probing
paths must not grow a series per path. The middleware sits outside the error middleware, so
it sees every answer the client sees.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.payload import StringPayload

from shoal.control.service import ControlService
from shoal.model.prometheus import Family, Histogram, Sample, render

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

LONG_POLL = "/v1/netmap"
STREAM = "/v1/netmap/stream"  # counted with the long-polls: held open, timed by nobody
REGISTER = "/v1/register"
# Seconds; a signed API call takes ~1 ms on loopback, a registration a few ms plus the store.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _error_code(response: web.StreamResponse) -> str:
    """The `ErrorBody.code` of an error answer (bytes, or the str payload `error_response`
    builds), else http_<status>."""
    body = response.body if isinstance(response, web.Response) else None
    if isinstance(body, StringPayload):
        body = body.decode().encode()
    if isinstance(body, bytes):
        try:
            code = json.loads(body).get("code")
        except (ValueError, AttributeError):
            code = None
        if isinstance(code, str):
            return code
    return f"http_{response.status}"


class ServerMetrics:
    """Counters of one server process (since it started); `middleware` feeds them."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.requests: Counter[tuple[str, str, str]] = Counter()
        self.rejected: Counter[tuple[str, str]] = Counter()
        self.auth_failures: Counter[str] = Counter()
        self.registrations: Counter[str] = Counter()
        self.latency = Histogram(BUCKETS)
        self.long_polls_open = 0

    def observe(
        self, route: str, method: str, response: web.StreamResponse, seconds: float | None
    ) -> None:
        status = response.status
        self.requests[(route, method, str(status))] += 1
        if seconds is not None:
            self.latency.observe(seconds, route=route)
        code = _error_code(response) if 400 <= status < 500 else None
        if code is not None:
            self.rejected[(route, code)] += 1
            if status in (401, 403):
                self.auth_failures[code] += 1
        if route == REGISTER and method == "POST":
            self.registrations["ok" if status < 400 else _error_code(response)] += 1

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        route = _route(request)
        long_poll = route in (LONG_POLL, STREAM)
        start = self._clock()
        if long_poll:
            self.long_polls_open += 1
        try:
            response = await handler(request)
        finally:
            if long_poll:
                self.long_polls_open -= 1
        # A long-poll's time is how long nothing changed, not how fast the server is.
        self.observe(route, request.method, response, None if long_poll else self._clock() - start)
        return response

    def render(self, service: ControlService) -> str:
        nodes = service.list_nodes()
        online = sum(1 for n in nodes if n.online)
        log = service.registry.log
        return render(
            [
                Family(
                    "shoal_server_nodes",
                    "gauge",
                    "Nodes by state: online (heard from within the heartbeat timeout) or not.",
                    (
                        Sample(online, state="online"),
                        Sample(len(nodes) - online, state="offline"),
                    ),
                ),
                Family(
                    "shoal_server_netmap_revision",
                    "gauge",
                    "The mesh's current netmap revision.",
                    (Sample(service.registry.revision),),
                ),
                Family(
                    "shoal_server_long_polls_open",
                    "gauge",
                    "Netmap long-polls held open now.",
                    (Sample(self.long_polls_open),),
                ),
                Family(
                    "shoal_server_registrations_total",
                    "counter",
                    "Registrations by result: ok, or the error code they were refused with.",
                    tuple(Sample(n, result=r) for r, n in sorted(self.registrations.items())),
                ),
                Family(
                    "shoal_server_requests_total",
                    "counter",
                    "Requests answered, by route pattern, method and status.",
                    tuple(
                        Sample(n, route=r, method=m, status=s)
                        for (r, m, s), n in sorted(self.requests.items())
                    ),
                ),
                Family(
                    "shoal_server_rejected_requests_total",
                    "counter",
                    "Requests answered 4xx, by route pattern and error code.",
                    tuple(
                        Sample(n, route=r, code=c) for (r, c), n in sorted(self.rejected.items())
                    ),
                ),
                Family(
                    "shoal_server_auth_failures_total",
                    "counter",
                    "Requests refused 401 or 403, by error code.",
                    tuple(Sample(n, code=c) for c, n in sorted(self.auth_failures.items())),
                ),
                Family(
                    "shoal_server_request_duration_seconds",
                    "histogram",
                    "Time to answer a request (long-polls excluded), by route pattern.",
                    self.latency.samples(),
                ),
                Family(
                    "shoal_server_fanout_seconds",
                    "histogram",
                    "From a change (the first of a burst) to its frame written on every netmap "
                    "stream it was pushed to; the polls and streams it woke write theirs after.",
                    log.fanout.samples(),
                ),
                Family(
                    "shoal_server_netmap_pushes_total",
                    "counter",
                    "Netmap frames (changes and heartbeats) written to streams by pushes.",
                    (Sample(log.pushed),),
                ),
                Family(
                    "shoal_server_netmap_wakeups_total",
                    "counter",
                    "Netmap long-polls and streams a change woke to write their own update.",
                    (Sample(log.woken),),
                ),
            ]
        )
