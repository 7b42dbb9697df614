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
