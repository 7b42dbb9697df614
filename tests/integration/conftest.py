"""Fixtures for integration tests: a private PostgreSQL server (see postgres_fixture.py).

``postgres_server`` (session) starts one server for the whole run and skips with the reason
when it cannot; ``postgres_url`` (function) gives each test a fresh, empty schema on it (its URL sets
``search_path``); ``postgres_server.create_database()`` gives a whole database when needed.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from postgres_fixture import PostgresServer, running_postgres, unavailable_reason


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A private PostgreSQL server for the test session."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with running_postgres() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a fresh, empty schema on the private server."""
    return postgres_server.create_schema()
