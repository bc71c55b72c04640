"""shoal.cli.logs: one line per event, text or JSON, repeats counted and summarised."""

from __future__ import annotations

import io
import json
import logging
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from shoal.cli.logs import MAX_REMEMBERED, OneLineHandler, setup
from shoal.cli.main import build_parser


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _logger(handler: logging.Handler, name: str = "shoal.test") -> logging.Logger:
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger


def test_text_is_one_line_per_event_even_with_newlines_in_it() -> None:
    out = io.StringIO()
    log = _logger(OneLineHandler(out, "text", clock=Clock()))
    log.warning("container report failed (%s); retrying", "line one\nline two")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert (
        " WARNING shoal.test: container report failed (line one\\nline two); retrying" in (lines[0])
    )
    assert lines[0].endswith("retrying") and lines[0][:4].isdigit() and "Z " in lines[0]


def test_text_escapes_control_characters_from_the_network() -> None:
    # A refused `GET /%1b[2J%00` was written with its raw ESC and NUL: it cleared the terminal
    # tailing the log and made grep call server.log a binary file.
    out = io.StringIO()
    log = _logger(OneLineHandler(out, "text", clock=Clock()))
    log.info("GET %s from 192.0.2.11: 404 not_found", "/\x1b[2J\x00\x7f\x9b\ttab")
    (line,) = out.getvalue().splitlines()
    assert line.endswith("GET /\\x1b[2J\\x00\\x7f\\x9b\ttab from 192.0.2.11: 404 not_found")
    assert all(c == "\t" or c.isprintable() for c in line)


def test_json_lines_parse_and_carry_the_fields() -> None:
    out = io.StringIO()
    log = _logger(OneLineHandler(out, "json", clock=Clock()), "shoal.agent")
    log.info('peer "h2" <up>\nnext')
    (line,) = out.getvalue().splitlines()
    body = json.loads(line)
    assert body["level"] == "info"
    assert body["logger"] == "shoal.agent"
    assert body["msg"] == 'peer "h2" <up>\nnext'
    assert body["ts"].endswith("Z")
    assert set(body) == {"ts", "level", "logger", "msg"}


def test_a_bug_keeps_its_traceback_on_the_same_line() -> None:
    out = io.StringIO()
    log = _logger(OneLineHandler(out, "text", clock=Clock()))
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("reconcile: apply failed")
    (line,) = out.getvalue().splitlines()
    assert "apply failed | Traceback (most recent call last):\\n" in line
    assert "ValueError: boom" in line

    out = io.StringIO()
    log = _logger(OneLineHandler(out, "json", clock=Clock()))
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("reconcile: apply failed")
    (line,) = out.getvalue().splitlines()
    assert json.loads(line)["exc"].endswith("ValueError: boom")


def test_repeats_within_the_window_are_counted_and_summarised_once() -> None:
    clock = Clock()
    out = io.StringIO()
    log = _logger(OneLineHandler(out, "json", repeat_seconds=60, clock=clock))
    for _ in range(500):
        log.warning("control unreachable")
        clock.now += 0.1  # 50 s in all: one window
    log.info("something else")  # different: written at once
    assert [json.loads(x)["msg"] for x in out.getvalue().splitlines()] == [
        "control unreachable",
        "something else",
    ]
    clock.now += 11  # past the window of the first
    log.warning("control unreachable")
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert lines[2] == {**lines[2], "msg": "control unreachable", "repeated": 499}
    assert lines[2]["window_s"] == 60
    assert lines[3]["msg"] == "control unreachable" and "repeated" not in lines[3]
    assert len(lines) == 4


def test_a_summary_waits_for_no_repeat_and_is_written_at_exit() -> None:
    clock = Clock()
    out = io.StringIO()
    handler = OneLineHandler(out, "text", repeat_seconds=60, clock=clock)
    log = _logger(handler)
    log.error("store failure: disk full")
    log.error("store failure: disk full")
    log.error("store failure: disk full")
    clock.now += 5
    handler.flush()  # what logging.shutdown does at exit
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert "(repeated 2 more times in 5 s) store failure: disk full" in lines[1]
    handler.flush()
    assert len(out.getvalue().splitlines()) == 2


def test_messages_of_different_levels_or_loggers_are_not_repeats() -> None:
    out = io.StringIO()
    handler = OneLineHandler(out, "text", clock=Clock())
    _logger(handler, "shoal.a").warning("x")
    _logger(handler, "shoal.b").warning("x")
    _logger(handler, "shoal.a").error("x")
    assert len(out.getvalue().splitlines()) == 3


def test_many_distinct_messages_stay_bounded() -> None:
    clock = Clock()
    out = io.StringIO()
    handler = OneLineHandler(out, "text", clock=clock)
    log = _logger(handler)
    log.info("first")
    log.info("first")
    for i in range(MAX_REMEMBERED + 10):
        log.info("message %d", i)
    lines = out.getvalue().splitlines()
    # The oldest was forgotten to make room, its count written as it went.
    assert any("(repeated 1 more times in 0 s) first" in line for line in lines)
    assert len(lines) == 1 + 1 + MAX_REMEMBERED + 10


def test_setup_replaces_the_root_handlers_and_quiets_libraries() -> None:
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        out = io.StringIO()
        handler = setup("json", stream=out)
        assert root.handlers == [handler]
        logging.getLogger("shoal.control").info("hello")
        logging.getLogger("aiohttp.access").info("GET / 200")
        assert [json.loads(x)["msg"] for x in out.getvalue().splitlines()] == ["hello"]
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


@pytest.mark.parametrize("command", [["server"], ["up"]])
def test_server_and_agent_take_log_format(command: list[str]) -> None:
    parser = build_parser()
    assert parser.parse_args(command).log_format == "text"
    assert parser.parse_args([*command, "--log-format", "json"]).log_format == "json"


def test_a_bad_log_format_is_a_one_line_usage_error() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "shoal.cli.main", "server", "--log-format", "xml"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert "invalid choice: 'xml'" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_real_server_logs_json_lines_refusals_once_and_no_tracebacks(tmp_path: Path) -> None:
    """`shoal server --log-format json`: every line an object, a refusal repeated three times
    written once and counted at exit, nothing but one-line events (no traceback)."""
    flags = ["--listen", "127.0.0.1:0", "--data-dir", str(tmp_path), "--log-format", "json"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoal.cli.main", "server", *flags],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    try:
        lines = []
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line, f"the server exited: {lines}"
            lines.append(line)
            found = re.search(r"listening on (https://127\.0\.0\.1:\d+)", line)
            url = found.group(1) if found else None
        assert url is not None, lines
        context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        for _ in range(3):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"{url}/v1/admin/nodes", context=context, timeout=10)
            assert refused.value.code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=30)
    lines += rest.splitlines(keepends=True)
    events = [json.loads(line) for line in lines]  # every line is one JSON object
    refusals = [e for e in events if "GET /v1/admin/nodes" in e["msg"]]
    assert len(refusals) == 2, refusals
    assert "repeated" not in refusals[0] and refusals[1]["repeated"] == 2
    assert events[-1]["msg"] in {"server stopped", refusals[1]["msg"]}
    assert not any("Traceback" in line for line in lines)
