"""What is specific to the SQLite backend: URLs, file mode, durability settings, locking."""

from __future__ import annotations

import sqlite3
import stat
import threading
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealpod.errors import ConfigError
from sealpod.store import StoreConflictError, StoreUnavailableError, open_store
from sealpod.store._sqlite import SQLiteBackend
from sealpod.store.sealed import SealedStateStore, connect_backend

KEY = b"s" * 16


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///", "mysql://localhost/x", "state.db", "sqlite:///x.db?mode=ro"]
)
def test_unsupported_state_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigError):
        open_store(url, KEY)


def test_missing_directory_is_an_environment_error(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailableError):
        open_store(f"sqlite://{tmp_path / 'absent' / 'state.db'}", KEY)


def test_opening_without_create_needs_an_existing_store(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'state.db'}"
    with pytest.raises(ConfigError):
        open_store(url, KEY, create=False)
    open_store(url, KEY).close()
    open_store(url, KEY, create=False).close()


def test_new_store_needs_a_sealing_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        open_store(f"sqlite://{tmp_path / 'state.db'}", None)


def test_database_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    open_store(f"sqlite://{path}", KEY).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_database_uses_wal_and_full_synchronous_commits(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    backend = connect_backend(f"sqlite://{path}")
    assert isinstance(backend, SQLiteBackend)
    try:
        connection = backend._connection()
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert connection.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert connection.execute("PRAGMA busy_timeout").fetchone()[0] > 0
    finally:
        backend.close()


def test_writer_blocked_by_another_process_lock_times_out_as_a_conflict(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    open_store(f"sqlite://{path}", KEY).close()
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")  # another process holding the write lock
    try:
        backend = SQLiteBackend(path, busy_timeout=0.2)
        with open_store(f"sqlite://{path}", KEY) as reference:
            store = SealedStateStore(backend, reference._crypto)
            with pytest.raises(StoreConflictError), store.transaction() as tx:
                tx.put("ns", "k", b"v")
            # Readers are not blocked by the writer (WAL).
            assert store.get("ns", "k") is None
            released = threading.Timer(0.3, lambda: blocker.execute("ROLLBACK"))
            released.start()
            try:
                store.transact(lambda tx: tx.put("ns", "k", b"v"), attempts=20, backoff=0.05)
            finally:
                released.join()
            assert store.get("ns", "k") == b"v"
            backend.close()
    finally:
        blocker.close()


def test_closed_store_refuses_use(tmp_path: Path) -> None:
    store = open_store(f"sqlite://{tmp_path / 'state.db'}", KEY)
    store.close()
    with pytest.raises(StoreUnavailableError):
        store.get("ns", "k")


_OPS = st.lists(
    st.lists(
        st.tuples(
            st.sampled_from(["put", "delete"]),
            st.sampled_from(["ns", "other"]),
            st.sampled_from(["a", "b", "c", "é"]),
            st.binary(max_size=40),
        ),
        max_size=5,
    ).map(tuple)
    | st.just("abort"),
    max_size=8,
)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(transactions=_OPS)
def test_store_behaves_like_a_dictionary(tmp_path: Path, transactions: list[object]) -> None:
    """Model check: committed transactions apply all their writes, aborted ones none."""
    url = f"sqlite://{tmp_path / f'model-{uuid.uuid4().hex}.db'}"
    model: dict[tuple[str, str], bytes] = {}
    expected_version = 0
    with open_store(url, KEY) as store:
        pending: list[tuple[str, str, str, bytes]] = []
        for item in transactions:
            if item == "abort":
                with pytest.raises(KeyError), store.transaction() as tx:
                    for op, namespace, key, value in pending:
                        tx.put(namespace, key, value) if op == "put" else tx.delete(namespace, key)
                    raise KeyError("abort")
                continue
            pending = list(item)  # type: ignore[call-overload]
            with store.transaction() as tx:
                for op, namespace, key, value in pending:
                    if op == "put":
                        tx.put(namespace, key, value)
                        model[(namespace, key)] = value
                    else:
                        tx.delete(namespace, key)
                        model.pop((namespace, key), None)
            expected_version += 1 if pending else 0
        for namespace in ("ns", "other"):
            assert store.items(namespace) == sorted(
                (k, v) for (ns, k), v in model.items() if ns == namespace
            )
        assert store.version == expected_version
        assert store.verify_integrity() == expected_version


_INCREMENTER = r"""
import sys
from sealpod.store import open_store

def increment(tx):
    tx.put("c", "n", str(int(tx.get("c", "n")) + 1).encode())

store = open_store(sys.argv[1], bytes.fromhex(sys.argv[2]), verify=False)
for _ in range(int(sys.argv[3])):
    store.transact(increment)
store.close()
"""


def test_concurrent_increments_from_processes_are_not_lost(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    url = f"sqlite://{tmp_path / 'state.db'}"
    with open_store(url, KEY) as store, store.transaction() as tx:
        tx.put("c", "n", b"0")
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _INCREMENTER, url, KEY.hex(), "40"], env=environment
        )
        for _ in range(3)
    ]
    assert [child.wait(60) for child in children] == [0, 0, 0]
    with open_store(url, KEY) as store:
        assert store.get("c", "n") == b"120"
        assert store.version == 121
