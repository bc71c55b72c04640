"""A real PostgreSQL for tests: one database per test run, one schema per test.

The server to use comes from `SHOAL_TEST_POSTGRES` (a URL of a role that may create databases);
by default the role `scripts/install-deps.sh` creates on the local cluster. A test run creates
`shoal_test_<random>`, hands each test a URL whose `search_path` is a fresh schema (so tests
never see each other's rows and need no cleanup between them), and drops the database at the
end. An unreachable server is an error naming the URL and the fix, never a skip.
"""

from __future__ import annotations

import secrets
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg

ENV = "SHOAL_TEST_POSTGRES"
DEFAULT_URL = "postgresql://shoal_test:shoal_test@127.0.0.1:5432/postgres"


class PostgresUnavailable(Exception):
    """The test PostgreSQL cannot be reached or refuses the test role."""


class TestDatabase:
    """A database of its own on the test server; `schema_url()` gives each test a schema."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.name = f"shoal_test_{secrets.token_hex(4)}"
        try:
            with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f'CREATE DATABASE "{self.name}"'.encode())
        except psycopg.Error as exc:
            raise PostgresUnavailable(
                f"PostgreSQL for tests at {_redact(admin_url)} (${ENV}): {exc}".strip()
                + " — run scripts/install-deps.sh (it installs and starts the cluster)"
            ) from exc
        self.url = _with_path(admin_url, self.name)

    def schema_url(self) -> str:
        """A URL of this database whose tables live in a new, empty schema."""
        schema = f"t_{secrets.token_hex(6)}"
        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"CREATE SCHEMA {schema}".encode())
        sep = "&" if urlsplit(self.url).query else "?"
        # synchronous_commit off: a test's commits need not reach the disk (seconds saved).
        options = f"-csearch_path={schema} -csynchronous_commit=off"
        return f"{self.url}{sep}options={quote(options)}"

    def drop(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'.encode())


def _with_path(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{dbname}"))


def _redact(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}@{host}{port}"))
