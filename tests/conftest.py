"""Fixtures every package's tests may use: a real PostgreSQL (see shoal.testing.postgres)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from shoal.testing.postgres import TestDatabase


@pytest.fixture(scope="session")
def postgres_db() -> Iterator[TestDatabase]:
    """One database for the whole run, dropped at its end."""
    # Imported here: the kernel-WireGuard VM runs tests from this tree with no PostgreSQL
    # driver, and a conftest that imports one fails every test there.
    from shoal.testing.postgres import DEFAULT_URL, ENV, PostgresUnavailable, TestDatabase

    try:
        db = TestDatabase(os.environ.get(ENV) or DEFAULT_URL)
    except PostgresUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    yield db
    db.drop()


@pytest.fixture
def postgres_url(postgres_db: TestDatabase) -> str:
    """A URL of the run's database, with a fresh empty schema for this test."""
    return postgres_db.schema_url()
