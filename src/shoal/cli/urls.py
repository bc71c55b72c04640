"""The `--server URL[,URL...]` flag, checked where it enters: a value that is not an HTTPS URL
would otherwise fail later as a confusing "cannot reach server" (`notaurl/v1/ca`, or
"Server disconnected" for http://)."""

from __future__ import annotations

from urllib.parse import urlsplit

from shoal.model.errors import ShoalError

EXAMPLE = "https://10.0.0.1:8443"


class BadServerUrl(ShoalError):
    """--server is not one or more https://HOST[:PORT] URLs: the user's to fix."""


def check_server_flag(text: str) -> str:
    """`text` without a trailing slash, once every comma-separated URL in it is
    https://HOST[:PORT][/PATH] (the server speaks HTTPS only: its CA is pinned); else
    BadServerUrl naming the first that is not."""
    urls = [u.strip() for u in text.split(",") if u.strip()]
    if not urls:
        raise BadServerUrl(f"--server {text[:80]!r}: expected a URL such as {EXAMPLE}")
    for url in urls:
        shown = url[:80]
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 -- raises ValueError for a port out of range or not a number
        except ValueError as exc:
            raise BadServerUrl(f"--server {shown!r}: {exc}") from exc
        if parts.scheme == "http":
            raise BadServerUrl(f"--server {shown!r}: the server speaks HTTPS only ({EXAMPLE})")
        if parts.scheme != "https" or not parts.hostname:
            raise BadServerUrl(f"--server {shown!r}: expected https://HOST[:PORT], e.g. {EXAMPLE}")
    return text.strip().rstrip("/")
