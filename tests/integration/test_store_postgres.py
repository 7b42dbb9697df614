"""The sealed-store contract (tests/unit/test_store_contract.py) against a real PostgreSQL."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration


def _load_contract() -> Any:
    # The contract lives with the unit tests; load it under a private name so pytest does not
    # collect its SQLite subclass a second time.
    path = Path(__file__).resolve().parents[1] / "unit" / "test_store_contract.py"
    name = "_sealpod_store_contract"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_contract = _load_contract()
StoreContract = _contract.StoreContract
RawDB = _contract.RawDB
recovery_keys = _contract.recovery_keys  # the module-scoped fixture


def _postgres_raw(url: str) -> RawDB:
    import psycopg

    def execute(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with psycopg.connect(url, autocommit=True) as connection:
            cursor = connection.execute(sql.replace("?", "%s"), tuple(params))
            return cursor.fetchall() if cursor.description is not None else []

    return RawDB(execute)


class TestPostgresStore(StoreContract):  # type: ignore[misc, valid-type]
    @pytest.fixture
    def store_url(self, postgres_url: str) -> str:
        return postgres_url

    @pytest.fixture
    def raw(self, postgres_url: str) -> Iterator[RawDB]:
        yield _postgres_raw(postgres_url)


def test_writer_blocked_by_another_client_times_out_as_a_conflict(postgres_url: str) -> None:
    import threading

    import psycopg

    from sealpod.store import StoreConflictError, open_store
    from sealpod.store._postgres import PostgresBackend
    from sealpod.store.sealed import SealedStateStore

    key = b"p" * 16
    with open_store(postgres_url, key) as reference:
        blocker = psycopg.connect(postgres_url, autocommit=True)
        try:
            blocker.execute("BEGIN")
            blocker.execute("LOCK TABLE sealpod_meta IN SHARE ROW EXCLUSIVE MODE")
            backend = PostgresBackend(postgres_url, lock_timeout=0.2)
            store = SealedStateStore(backend, reference._crypto)
            with pytest.raises(StoreConflictError), store.transaction() as tx:
                tx.put("ns", "k", b"v")
            assert store.get("ns", "k") is None  # readers are not blocked
            released = threading.Timer(0.3, lambda: blocker.execute("ROLLBACK"))
            released.start()
            try:
                store.transact(lambda tx: tx.put("ns", "k", b"v"), attempts=20, backoff=0.05)
            finally:
                released.join()
            assert reference.get("ns", "k") == b"v"
            backend.close()
        finally:
            blocker.close()


def test_serialization_failures_and_deadlocks_are_retryable_conflicts() -> None:
    from psycopg import errors as pg_errors

    from sealpod.store import StoreConflictError, StoreUnavailableError
    from sealpod.store._postgres import PostgresBackend

    for error in (pg_errors.SerializationFailure, pg_errors.DeadlockDetected):
        assert isinstance(PostgresBackend._translate(error("x")), StoreConflictError)
    assert isinstance(
        PostgresBackend._translate(pg_errors.UndefinedTable("x")), StoreUnavailableError
    )


def test_unreachable_server_is_an_environment_error() -> None:
    import socket

    from sealpod.store import StoreUnavailableError, open_store

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connection refused
        with pytest.raises(StoreUnavailableError) as info:
            open_store(f"postgresql://nobody:hunter2@127.0.0.1:{port}/db", b"k" * 16)
    assert "hunter2" not in str(info.value)
