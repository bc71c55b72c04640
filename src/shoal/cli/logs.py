"""Logging of the long-running processes (`shoal server`, `shoal up`'s agent): one line per
event, as text or JSON (`--log-format`), repeats counted instead of written.

    setup(fmt)        the root logger writes through one `OneLineHandler` to stderr
    OneLineHandler    formats each record on one line; the same message (same logger, level
                      and text) within REPEAT_SECONDS of its first writing is counted, and the
                      count written once as a summary when the window has passed (at the next
                      event of any kind, or at exit), like syslog's "last message repeated"

Text lines: `2026-11-30T17:20:01.123Z WARNING shoal.agent: message`. JSON lines: an object with
`ts` (UTC, ISO 8601), `level`, `logger`, `msg`, and for a summary `repeated` (how many more)
and `window_s`. A newline inside a message is written as `\\n` (other control characters as
`\\xNN`), so a log line is an event.

Expected failures are ShoalErrors, logged as their one-line message by the code that meets
them; only a bug (log.exception) carries its traceback, kept on the same line (`exc`).
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, TextIO

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
REPEAT_SECONDS = 60.0
# Distinct messages remembered for repeat counting: a flood of different lines cannot grow
# memory; the oldest is forgotten (and its count written) first.
MAX_REMEMBERED = 1024
# Loggers of libraries that say too much at INFO (aiohttp's access log is off already).
_QUIET = ("asyncio", "aiohttp", "docker", "urllib3", "pyroute2")


# Control characters are written escaped: a request path or name from the network (`GET /%1b[2J`
# in a refusal's line) must not drive the terminal that shows the log, nor split a line.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0)) if c != 0x09}
_ESCAPES |= {0x0A: "\\n", 0x0D: "\\r"}


@dataclass(slots=True)
class _Seen:
    first: float  # monotonic seconds it was last written
    record: logging.LogRecord
    count: int = 0  # repeats since, not written


class OneLineHandler(logging.Handler):
    """Writes each record as one line to `stream`; see the module docstring."""

    def __init__(
        self,
        stream: TextIO,
        fmt: LogFormat = "text",
        *,
        repeat_seconds: float = REPEAT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._stream = stream
        self._fmt = fmt
        self._window = repeat_seconds
        self._clock = clock
        self._seen: OrderedDict[tuple[str, int, str], _Seen] = OrderedDict()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            now = self._clock()
            self._expire(now)
            key = (record.name, record.levelno, record.getMessage())
            seen = self._seen.get(key)
            if seen is not None:
                seen.count += 1
                return
            self._seen[key] = _Seen(first=now, record=record)
            while len(self._seen) > MAX_REMEMBERED:
                self._summarise(self._seen.popitem(last=False)[1], now)
            self._write(record)
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        """Write the counts still pending (at exit), then flush the stream."""
        self.acquire()
        try:
            now = self._clock()
            while self._seen:
                self._summarise(self._seen.popitem(last=False)[1], now)
            self._stream.flush()
        finally:
            self.release()

    def _expire(self, now: float) -> None:
        # Oldest first: entries are kept in the order they were written.
        while self._seen:
            seen = next(iter(self._seen.values()))
            if now - seen.first < self._window:
                return
            self._seen.popitem(last=False)
            self._summarise(seen, now)

    def _summarise(self, seen: _Seen, now: float) -> None:
        if seen.count:
            span = max(now - seen.first, 0.0)
            self._write(seen.record, repeated=seen.count, window=min(span, self._window))

    def _write(self, record: logging.LogRecord, repeated: int = 0, window: float = 0.0) -> None:
        self._stream.write(self.render(record, repeated, window) + "\n")
        self._stream.flush()

    def render(self, record: logging.LogRecord, repeated: int = 0, window: float = 0.0) -> str:
        """The line for `record` (without the newline); `repeated`: a summary of that many."""
        stamp = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        stamp = stamp.replace("+00:00", "Z")
        message = record.getMessage()
        exc = _exception(record)
        if self._fmt == "json":
            body: dict[str, object] = {
                "ts": stamp,
                "level": record.levelname.lower(),
                "logger": record.name,
                "msg": message,
            }
            if repeated:
                body["repeated"] = repeated
                body["window_s"] = round(window)
            if exc and not repeated:
                body["exc"] = exc
            return json.dumps(body, ensure_ascii=False)
        if repeated:
            message = f"(repeated {repeated} more times in {window:.0f} s) {message}"
        if exc and not repeated:
            message = f"{message} | {exc}"
        text = f"{stamp} {record.levelname} {record.name}: {message}"
        return text.translate(_ESCAPES)


def _exception(record: logging.LogRecord) -> str | None:
    if record.exc_info is None or record.exc_info[0] is None:
        return None
    return "".join(traceback.format_exception(*record.exc_info)).strip()


def setup(
    fmt: LogFormat = "text", level: int = logging.INFO, stream: TextIO | None = None
) -> OneLineHandler:
    """Route every logger of this process through one `OneLineHandler` on `stream` (stderr),
    replacing the handlers set before; returns it (flushed by logging at exit)."""
    handler = OneLineHandler(stream if stream is not None else sys.stderr, fmt)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in _QUIET:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    return handler
