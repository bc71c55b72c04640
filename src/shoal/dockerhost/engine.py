"""A small async client of the Docker Engine API: JSON requests and the event stream, nothing
more (the only importer of aiohttp's client in this package).

It replaced the Docker SDK (docker + requests + urllib3), whose imports cost ~60 ms of CPU on
every agent start, and whose blocking calls ran in worker threads.

    unix:///var/run/docker.sock    over the socket (the default; DOCKER_HOST when not given)
    tcp://HOST:PORT, http://...    plain HTTP (TLS to a remote daemon is not supported)

The API version: the first request asks `/_ping` for the daemon's (its `API-Version` header)
and every request then names min(daemon's, API_VERSION) in its path, as the docker CLI does:
a daemon newer than shoal still serves the version shoal was checked against, an older one
serves its own. Failures are named for whose they are: DockerUnavailable when dockerd does not
answer (or hangs up), DockerError with the daemon's own message when it refuses a request.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

from shoal.dockerhost.errors import DockerError, DockerUnavailable

DEFAULT_URL = "unix:///var/run/docker.sock"
# The newest API version whose changes to the endpoints used here were reviewed (Docker 29.0;
# 1.52 dropped the events' old `status`/`id` fields, which `DockerEvent.parse` only falls
# back to). Docker 29 refuses versions below 1.44, so pinning the lab's 1.41 would not do.
API_VERSION = (1, 52)
TIMEOUT = aiohttp.ClientTimeout(total=30)
# The event stream stays open for ever: only connecting is bounded.
STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30)
STREAM_BUFFER = 1 << 20  # an event is one JSON line; labels can make it long

# What the socket and the HTTP layer raise when dockerd is away or hangs up.
TRANSPORT_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)

Query = Mapping[str, str]


def filters_arg(spec: Mapping[str, list[str]]) -> str:
    """Docker's `filters` query argument: a JSON object of lists."""
    return json.dumps(dict(spec), separators=(",", ":"))


def _parse_version(text: str) -> tuple[int, int] | None:
    major, _, minor = text.strip().partition(".")
    return (int(major), int(minor)) if major.isdigit() and minor.isdigit() else None


class Engine:
    """The Docker Engine API at `url` (None: DOCKER_HOST, else the default socket).

    Holds no connection between calls: each `session()` is one connection pool, closed when
    its block is left, so a DockerHost needs no closing and survives event loops."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url or os.environ.get("DOCKER_HOST") or DEFAULT_URL
        parts = urlsplit(self.url)
        if parts.scheme == "unix" and parts.path:
            self._socket: str | None = parts.path
            self._base = "http://docker"
        elif parts.scheme in ("tcp", "http") and parts.netloc:
            self._socket, self._base = None, f"http://{parts.netloc}"
        else:
            raise DockerError(
                f"unsupported Docker URL {self.url!r}: use unix:///PATH or tcp://HOST:PORT"
            )
        self._prefix: str | None = None  # "/v1.41", once negotiated

    def _session(self, timeout: aiohttp.ClientTimeout, **kwargs: Any) -> aiohttp.ClientSession:
        connector = (
            aiohttp.UnixConnector(path=self._socket) if self._socket else aiohttp.TCPConnector()
        )
        return aiohttp.ClientSession(
            self._base, connector=connector, timeout=timeout, auto_decompress=False, **kwargs
        )

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Session]:
        """A connection to the daemon for a few requests (kept alive between them)."""
        async with self._session(TIMEOUT) as http:
            yield Session(self, http)

    async def ping(self, http: aiohttp.ClientSession) -> str:
        """Ask the daemon for its API version; return the path prefix to use with it."""
        try:
            async with http.get("/_ping") as resp:
                await resp.read()
                if resp.status != 200:
                    raise DockerUnavailable(self.url, f"/_ping answered HTTP {resp.status}")
                theirs = _parse_version(resp.headers.get("API-Version", ""))
        except TRANSPORT_ERRORS as exc:
            raise self.unavailable(exc) from exc
        if theirs is None:
            raise DockerError(f"dockerd at {self.url} names no API version: it is too old")
        major, minor = min(theirs, API_VERSION)
        self._prefix = f"/v{major}.{minor}"
        return self._prefix

    async def prefix(self, http: aiohttp.ClientSession) -> str:
        return self._prefix if self._prefix is not None else await self.ping(http)

    def unavailable(self, exc: BaseException) -> DockerUnavailable:
        detail = str(exc) or type(exc).__name__
        return DockerUnavailable(self.url, detail)

    @contextlib.asynccontextmanager
    async def stream(self, what: str, path: str, query: Query) -> AsyncIterator[Lines]:
        """A streamed response (`GET path`), one JSON message a line; entered once the daemon
        answered with its headers."""
        async with self._session(STREAM_TIMEOUT, read_bufsize=STREAM_BUFFER) as http:
            try:
                prefix = await self.prefix(http)
                resp = await http.get(prefix + path, params=query)
            except TRANSPORT_ERRORS as exc:
                raise self.unavailable(exc) from exc
            try:
                if resp.status >= 400:
                    raise await refused(what, resp)
                yield Lines(self, what, resp)
            finally:
                resp.close()


class Session:
    """Requests on one connection pool (`Engine.session`). Paths are below the version."""

    def __init__(self, engine: Engine, http: aiohttp.ClientSession) -> None:
        self._engine, self._http = engine, http

    async def ping(self) -> None:
        await self._engine.ping(self._http)

    async def get(self, what: str, path: str, query: Query | None = None) -> Any:
        """The JSON body of `GET path`; DockerError when refused (404 included)."""
        return await self._call(what, "GET", path, query, None, missing_ok=False)

    async def find(self, what: str, path: str, query: Query | None = None) -> Any | None:
        """The JSON body of `GET path`, None when the daemon says 404 (no such object)."""
        return await self._call(what, "GET", path, query, None, missing_ok=True)

    async def post(self, what: str, path: str, body: Mapping[str, Any]) -> Any:
        return await self._call(what, "POST", path, None, body, missing_ok=False)

    async def delete(self, what: str, path: str) -> None:
        await self._call(what, "DELETE", path, None, None, missing_ok=False)

    async def _call(
        self,
        what: str,
        method: str,
        path: str,
        query: Query | None,
        body: Mapping[str, Any] | None,
        *,
        missing_ok: bool,
    ) -> Any:
        try:
            prefix = await self._engine.prefix(self._http)
            async with self._http.request(method, prefix + path, params=query, json=body) as resp:
                if resp.status == 404 and missing_ok:
                    await resp.read()
                    return None
                if resp.status >= 400:
                    raise await refused(what, resp)
                raw = await resp.read()
        except TRANSPORT_ERRORS as exc:
            raise self._engine.unavailable(exc) from exc
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise DockerError(f"{what}: dockerd answered with malformed JSON") from exc


class Lines:
    """The messages of a streamed response, one parsed JSON value a line."""

    def __init__(self, engine: Engine, what: str, resp: aiohttp.ClientResponse) -> None:
        self._engine, self._what, self._resp = engine, what, resp

    async def next(self) -> Any | None:
        """The next message; None once the daemon ended the stream. DockerUnavailable when the
        connection broke, DockerError for a garbled message."""
        try:
            line = await self._resp.content.readline()
            while line == b"\n":  # keep-alive blank lines, if any
                line = await self._resp.content.readline()
        except TRANSPORT_ERRORS as exc:
            raise self._engine.unavailable(exc) from exc
        except ValueError as exc:  # a line longer than the buffer
            raise DockerError(f"{self._what}: {exc}") from exc
        if not line:
            return None
        try:
            return json.loads(line)
        except ValueError as exc:
            raise DockerError(f"{self._what}: dockerd sent malformed JSON") from exc


async def refused(what: str, resp: aiohttp.ClientResponse) -> DockerError:
    """The error for a response the daemon refused: its own `message` when it gave one."""
    raw = await resp.read()
    try:
        message = json.loads(raw).get("message")
    except (ValueError, AttributeError):
        message = None
    text = message if isinstance(message, str) and message else raw.decode(errors="replace")
    return DockerError(f"{what}: {text.strip() or f'HTTP {resp.status}'}")


def path_arg(value: str) -> str:
    """An id or name as one path segment."""
    return quote(value, safe="")
