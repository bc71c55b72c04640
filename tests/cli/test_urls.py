"""`--server` is checked where it enters: one line naming the flag, before anything connects."""

from __future__ import annotations

import pytest

from shoal.cli.urls import BadServerUrl, check_server_flag


def test_https_urls_pass_without_their_trailing_slash() -> None:
    assert check_server_flag("https://10.0.0.1:8443/") == "https://10.0.0.1:8443"
    assert check_server_flag("https://a:8443,https://b:8443") == "https://a:8443,https://b:8443"
    assert check_server_flag("https://shoal.example.com") == "https://shoal.example.com"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        # These once failed as "cannot reach server at notaurl: notaurl/v1/ca" and, for
        # http://, "cannot reach server ...: Server disconnected".
        ("notaurl", "--server 'notaurl': expected https://HOST[:PORT]"),
        ("http://10.0.0.1:8443", "the server speaks HTTPS only"),
        ("10.0.0.1:8443", "expected https://HOST[:PORT]"),
        ("https://", "expected https://HOST[:PORT]"),
        ("https://10.0.0.1:99999", "--server 'https://10.0.0.1:99999': Port out of range"),
        ("https://a:8443,ftp://b", "--server 'ftp://b'"),
        (" , ", "expected a URL"),
    ],
)
def test_anything_else_is_one_line_naming_the_flag(text: str, error: str) -> None:
    with pytest.raises(BadServerUrl, match=error.replace("[", r"\[").replace("]", r"\]")):
        check_server_flag(text)
