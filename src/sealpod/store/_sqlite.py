"""SQLite backend: one file, WAL journal, ``synchronous=FULL``, one connection per thread.

Durability and atomicity come from SQLite itself: in WAL mode with ``synchronous=FULL`` a
transaction is durable once ``COMMIT`` returns, and a crash at any earlier moment leaves the
database as it was before ``BEGIN`` (the partial WAL frames are ignored on recovery). Writers
take the write lock with ``BEGIN IMMEDIATE`` so every read in a write transaction sees the
latest committed state. Threads of one process queue on an in-process lock before that, and
processes (coordinator workers, replicas on one host) on an advisory ``flock`` of the file
``<database>.writer-lock``: SQLite's own busy handler polls with sleeps of up to 100 ms, which
wastes most of the time under contention. SQLite's locking still decides; the lock file only
makes waiting cheap (a process that does not take it is merely slower, never unsafe).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from sealpod.store._backend import Backend, Session, StoreConflictError, StoreUnavailableError

_logger = logging.getLogger(__name__)

#: Records per batched query (SQLite allows 32766 parameters since 3.32; stay well below).
_BATCH = 100
_PUT_RECORDS_HEAD = "INSERT INTO sealpod_records (namespace, key, version, blob) VALUES "
_PUT_RECORDS_TAIL = (
    " ON CONFLICT (namespace, key) DO UPDATE SET version = excluded.version, blob = excluded.blob"
)
_GET_RECORDS = "SELECT namespace, key, version, blob FROM sealpod_records WHERE "

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS sealpod_meta (name TEXT PRIMARY KEY, value BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS sealpod_records ("
    " namespace TEXT NOT NULL, key TEXT NOT NULL, version INTEGER NOT NULL,"
    " blob BLOB NOT NULL, PRIMARY KEY (namespace, key)) WITHOUT ROWID",
)


class _SQLiteSession(Session):
    def __init__(self, connection: sqlite3.Connection) -> None:
        self._db = connection

    def get_meta(self, name: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM sealpod_meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else bytes(row[0])

    def list_meta(self, prefix: str) -> list[tuple[str, bytes]]:
        rows = self._db.execute(
            "SELECT name, value FROM sealpod_meta WHERE substr(name, 1, ?) = ? ORDER BY name",
            (len(prefix), prefix),
        ).fetchall()
        return [(str(name), bytes(value)) for name, value in rows]

    def put_meta(self, name: str, value: bytes) -> None:
        self._db.execute(
            "INSERT INTO sealpod_meta (name, value) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    def get_record(self, namespace: str, key: str) -> tuple[int, bytes] | None:
        row = self._db.execute(
            "SELECT version, blob FROM sealpod_records WHERE namespace = ? AND key = ?",
            (namespace, key),
        ).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def put_record(self, namespace: str, key: str, version: int, blob: bytes) -> None:
        self._db.execute(
            "INSERT INTO sealpod_records (namespace, key, version, blob) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (namespace, key) DO UPDATE"
            " SET version = excluded.version, blob = excluded.blob",
            (namespace, key, version, blob),
        )

    def get_records(self, names: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[int, bytes]]:
        found: dict[tuple[str, str], tuple[int, bytes]] = {}
        for start in range(0, len(names), _BATCH):
            chunk = names[start : start + _BATCH]
            # Only placeholders are formatted in; the names are bound parameters. An OR of
            # equalities is answered from the primary key (SQLite plans "(namespace, key) IN
            # (VALUES ...)" as a scan of the whole table).
            query = _GET_RECORDS + " OR ".join("(namespace = ? AND key = ?)" for _ in chunk)
            rows = self._db.execute(
                query,
                [part for name in chunk for part in name],
            ).fetchall()
            for namespace, key, version, blob in rows:
                found[(str(namespace), str(key))] = (int(version), bytes(blob))
        return found

    def put_records(self, rows: list[tuple[str, str, int, bytes]]) -> None:
        # One multi-row statement per chunk (executemany would step, and release and retake
        # the GIL, once per row while the writer lock is held).
        for start in range(0, len(rows), _BATCH):
            chunk = rows[start : start + _BATCH]
            # Only "(?, ?, ?, ?)" placeholders are formatted in; the values are bound.
            query = _PUT_RECORDS_HEAD + ",".join("(?, ?, ?, ?)" for _ in chunk) + _PUT_RECORDS_TAIL
            self._db.execute(query, [part for row in chunk for part in row])

    def delete_record(self, namespace: str, key: str) -> None:
        self._db.execute(
            "DELETE FROM sealpod_records WHERE namespace = ? AND key = ?", (namespace, key)
        )

    def list_records(
        self, namespace: str, *, start_after: str | None, limit: int | None
    ) -> list[tuple[str, int, bytes]]:
        rows = self._db.execute(
            "SELECT key, version, blob FROM sealpod_records WHERE namespace = ? AND key > ?"
            " ORDER BY key LIMIT ?",
            (
                namespace,
                start_after if start_after is not None else "",
                -1 if limit is None else limit,
            ),
        ).fetchall()
        return [(str(k), int(v), bytes(b)) for k, v, b in rows]

    def iter_records(self) -> Iterator[tuple[str, str, int, bytes]]:
        cursor = self._db.execute("SELECT namespace, key, version, blob FROM sealpod_records")
        for namespace, key, version, blob in cursor:
            yield str(namespace), str(key), int(version), bytes(blob)


class SQLiteBackend(Backend):
    """A sealed store in one SQLite file."""

    kind = "sqlite"

    def __init__(self, path: Path, *, busy_timeout: float = 30.0) -> None:
        """Open (creating if needed, mode 0600) the database file at ``path``.

        Raises:
            StoreUnavailableError: when the directory is missing or the file is not usable.
        """
        self._path = path
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._writer = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._closed = False
        self._lock_file: int | None = None
        if not path.parent.is_dir():
            raise StoreUnavailableError(f"directory {path.parent} does not exist")
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(descriptor)
            self._lock_file = os.open(
                path.with_name(path.name + ".writer-lock"), os.O_RDWR | os.O_CREAT, 0o600
            )
            connection = self._connection()
            for statement in _SCHEMA:
                connection.execute(statement)
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailableError(f"cannot open SQLite database {path}: {exc}") from exc

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is not None:
            return connection
        if self._closed:
            raise StoreUnavailableError("the store is closed")
        connection = sqlite3.connect(
            self._path,
            timeout=self._busy_timeout,
            isolation_level=None,  # we issue BEGIN/COMMIT ourselves
            check_same_thread=False,  # one connection per thread; close() may run elsewhere
        )
        connection.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
        mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()
        if mode is None or str(mode[0]).lower() != "wal":
            raise StoreUnavailableError("SQLite refused WAL journal mode")
        connection.execute("PRAGMA synchronous = FULL")
        self._local.connection = connection
        self._local.session = None
        with self._lock:
            self._connections.append(connection)
        return connection

    @contextlib.contextmanager
    def _transaction(self, begin: str) -> Iterator[Session]:
        try:
            connection = self._connection()
            connection.execute(begin)
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise StoreConflictError(f"SQLite database is busy: {exc}") from exc
            raise StoreUnavailableError(f"SQLite error: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"SQLite error: {exc}") from exc
        session = _SQLiteSession(connection)
        self._local.session = session
        try:
            yield session
        except BaseException:
            self._local.session = None
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
            raise
        self._local.session = None
        try:
            connection.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
            if "locked" in str(exc) or "busy" in str(exc):
                raise StoreConflictError(f"SQLite commit failed: {exc}") from exc
            raise StoreUnavailableError(f"SQLite commit failed: {exc}") from exc

    def write(self) -> contextlib.AbstractContextManager[Session]:
        if getattr(self._local, "session", None) is not None:
            raise RuntimeError("store transactions do not nest")
        return self._serialised(self._wrap_errors(self._transaction("BEGIN IMMEDIATE")))

    @contextlib.contextmanager
    def _serialised(self, inner: contextlib.AbstractContextManager[Session]) -> Iterator[Session]:
        deadline = time.monotonic() + self._busy_timeout
        if not self._writer.acquire(timeout=self._busy_timeout):
            raise StoreConflictError("timed out waiting for another writer thread")
        try:
            self._lock_processes(deadline)
            try:
                with inner as session:
                    yield session
            finally:
                self._unlock_processes()
        finally:
            self._writer.release()

    def _lock_processes(self, deadline: float) -> None:
        # Polled with short sleeps (a blocking flock could not time out); a writer holds the
        # lock for a millisecond or a few, so 0.5 ms naps keep the hand-over prompt.
        if self._lock_file is None:
            return
        while True:
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StoreConflictError(
                        "timed out waiting for another writer process"
                    ) from None
                time.sleep(0.0005)
            except OSError as exc:
                raise StoreUnavailableError(f"cannot lock {self._path}: {exc}") from exc

    def _unlock_processes(self) -> None:
        if self._lock_file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)

    def read(self) -> contextlib.AbstractContextManager[Session]:
        session: Session | None = getattr(self._local, "session", None)
        if session is not None:
            return contextlib.nullcontext(session)
        return self._wrap_errors(self._transaction("BEGIN DEFERRED"))

    @contextlib.contextmanager
    def _wrap_errors(self, inner: contextlib.AbstractContextManager[Session]) -> Iterator[Session]:
        with inner as session:
            try:
                yield session
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc) or "busy" in str(exc):
                    raise StoreConflictError(f"SQLite database is busy: {exc}") from exc
                raise StoreUnavailableError(f"SQLite error: {exc}") from exc
            except sqlite3.Error as exc:
                raise StoreUnavailableError(f"SQLite error: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for connection in connections:
            with contextlib.suppress(sqlite3.Error):
                connection.close()
        with self._lock:
            lock_file, self._lock_file = self._lock_file, None
        if lock_file is not None:
            with contextlib.suppress(OSError):
                os.close(lock_file)
