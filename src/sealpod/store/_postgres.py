"""PostgreSQL backend (psycopg 3): several coordinator replicas may share one database.

Writers serialise on a table lock: a write transaction starts with
``LOCK TABLE sealpod_meta IN SHARE ROW EXCLUSIVE MODE`` (a mode that conflicts with itself but
not with plain reads), so everything it reads is current and no other writer commits until it
is done; ``READ COMMITTED`` is then enough. A writer waits at most ``lock_timeout`` for the
lock. Readers use ``REPEATABLE READ READ ONLY`` snapshots and never block writers. Serialization failures, deadlocks and lock timeouts become
:class:`~sealpod.store._backend.StoreConflictError` (retry the transaction); a lost connection is
replaced on the next use. Durability is PostgreSQL's: ``COMMIT`` returns after the WAL is
flushed (with the server's default ``synchronous_commit``).

Each thread that uses the store gets its own connection, kept until :meth:`close`; size the
server's ``max_connections`` for (replicas x worker threads).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

import psycopg
from psycopg import errors as pg_errors

from sealpod.store._backend import Backend, Session, StoreConflictError, StoreUnavailableError

_logger = logging.getLogger(__name__)

_SCHEMA_LOCK = 0x5EA1_0D00_57A7_E001  # pg_advisory_xact_lock key for schema creation
_SCHEMA = (
    'CREATE TABLE IF NOT EXISTS sealpod_meta (name TEXT COLLATE "C" PRIMARY KEY,'
    " value BYTEA NOT NULL)",
    "CREATE TABLE IF NOT EXISTS sealpod_records ("
    ' namespace TEXT COLLATE "C" NOT NULL, key TEXT COLLATE "C" NOT NULL,'
    " version BIGINT NOT NULL, blob BYTEA NOT NULL, PRIMARY KEY (namespace, key))",
)
_RETRYABLE = (
    pg_errors.SerializationFailure,
    pg_errors.DeadlockDetected,
    pg_errors.LockNotAvailable,
)


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "postgresql://…"
    info.pop("password", None)
    return " ".join(f"{k}={v}" for k, v in sorted(info.items()))


class _PostgresSession(Session):
    def __init__(self, connection: psycopg.Connection[tuple[object, ...]]) -> None:
        self._db = connection

    def get_meta(self, name: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM sealpod_meta WHERE name = %s", (name,)).fetchone()
        return None if row is None else bytes(row[0])  # type: ignore[call-overload]

    def list_meta(self, prefix: str) -> list[tuple[str, bytes]]:
        rows = self._db.execute(
            "SELECT name, value FROM sealpod_meta WHERE left(name, %s) = %s ORDER BY name",
            (len(prefix), prefix),
        ).fetchall()
        return [(str(name), bytes(value)) for name, value in rows]  # type: ignore[call-overload]

    def put_meta(self, name: str, value: bytes) -> None:
        self._db.execute(
            "INSERT INTO sealpod_meta (name, value) VALUES (%s, %s)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    def get_record(self, namespace: str, key: str) -> tuple[int, bytes] | None:
        row = self._db.execute(
            "SELECT version, blob FROM sealpod_records WHERE namespace = %s AND key = %s",
            (namespace, key),
        ).fetchone()
        if row is None:
            return None
        return int(row[0]), bytes(row[1])  # type: ignore[call-overload]

    def put_record(self, namespace: str, key: str, version: int, blob: bytes) -> None:
        self._db.execute(
            "INSERT INTO sealpod_records (namespace, key, version, blob)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT (namespace, key) DO UPDATE"
            " SET version = excluded.version, blob = excluded.blob",
            (namespace, key, version, blob),
        )

    def get_records(self, names: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[int, bytes]]:
        # One round trip for all of them (the names are bound as two arrays).
        if not names:
            return {}
        rows = self._db.execute(
            "SELECT r.namespace, r.key, r.version, r.blob FROM sealpod_records r"
            " JOIN unnest(%s::text[], %s::text[]) AS w(namespace, key)"
            ' ON r.namespace = w.namespace COLLATE "C" AND r.key = w.key COLLATE "C"',
            ([namespace for namespace, _ in names], [key for _, key in names]),
        ).fetchall()
        return {
            (str(namespace), str(key)): (int(version), bytes(blob))  # type: ignore[call-overload]
            for namespace, key, version, blob in rows
        }

    def put_records(self, rows: list[tuple[str, str, int, bytes]]) -> None:
        if not rows:
            return
        self._db.execute(
            "INSERT INTO sealpod_records (namespace, key, version, blob)"
            " SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bytea[])"
            " ON CONFLICT (namespace, key) DO UPDATE"
            " SET version = excluded.version, blob = excluded.blob",
            (
                [row[0] for row in rows],
                [row[1] for row in rows],
                [row[2] for row in rows],
                [row[3] for row in rows],
            ),
        )

    def delete_record(self, namespace: str, key: str) -> None:
        self._db.execute(
            "DELETE FROM sealpod_records WHERE namespace = %s AND key = %s", (namespace, key)
        )

    def list_records(
        self, namespace: str, *, start_after: str | None, limit: int | None
    ) -> list[tuple[str, int, bytes]]:
        rows = self._db.execute(
            "SELECT key, version, blob FROM sealpod_records WHERE namespace = %s AND key > %s"
            " ORDER BY key LIMIT %s",
            (namespace, start_after if start_after is not None else "", limit),
        ).fetchall()
        return [(str(k), int(v), bytes(b)) for k, v, b in rows]  # type: ignore[call-overload]

    def iter_records(self) -> Iterator[tuple[str, str, int, bytes]]:
        with self._db.cursor(name="sealpod_all_records") as cursor:
            cursor.itersize = 1000
            cursor.execute("SELECT namespace, key, version, blob FROM sealpod_records")
            for namespace, key, version, blob in cursor:
                yield str(namespace), str(key), int(version), bytes(blob)  # type: ignore[call-overload]


class PostgresBackend(Backend):
    """A sealed store in a PostgreSQL database."""

    kind = "postgresql"

    def __init__(
        self, url: str, *, connect_timeout: float = 10.0, lock_timeout: float = 30.0
    ) -> None:
        """Connect and create the tables if needed.

        A writer waits at most ``lock_timeout`` seconds for the writer lock, then the
        transaction fails with :class:`StoreConflictError`.

        Raises:
            StoreUnavailableError: when the server cannot be reached or refuses us.
        """
        self._url = url
        self._connect_timeout = connect_timeout
        self._lock_timeout_ms = max(1, int(lock_timeout * 1000))
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[psycopg.Connection[tuple[object, ...]]] = []
        self._closed = False
        try:
            connection = self._connection()
            with connection.transaction():
                connection.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                for statement in _SCHEMA:
                    connection.execute(statement)
        except psycopg.Error as exc:
            raise StoreUnavailableError(
                f"cannot use PostgreSQL database ({_redact(url)}): {type(exc).__name__}"
            ) from exc

    def _connection(self) -> psycopg.Connection[tuple[object, ...]]:
        connection: psycopg.Connection[tuple[object, ...]] | None = getattr(
            self._local, "connection", None
        )
        if connection is not None and not connection.closed and not connection.broken:
            return connection
        if self._closed:
            raise StoreUnavailableError("the store is closed")
        try:
            connection = psycopg.connect(
                self._url, autocommit=True, connect_timeout=max(1, int(self._connect_timeout))
            )
        except psycopg.Error as exc:
            raise StoreUnavailableError(
                f"cannot connect to PostgreSQL ({_redact(self._url)}): {type(exc).__name__}"
            ) from exc
        self._local.connection = connection
        self._local.session = None
        with self._lock:
            self._connections.append(connection)
        return connection

    @contextlib.contextmanager
    def _transaction(self, statements: tuple[str, ...]) -> Iterator[Session]:
        connection = self._connection()
        try:
            for statement in statements:
                connection.execute(statement)
        except psycopg.Error as exc:
            self._rollback(connection)
            raise self._translate(exc) from exc
        session = _PostgresSession(connection)
        self._local.session = session
        try:
            yield session
        except psycopg.Error as exc:
            self._local.session = None
            self._rollback(connection)
            raise self._translate(exc) from exc
        except BaseException:
            self._local.session = None
            self._rollback(connection)
            raise
        self._local.session = None
        try:
            connection.execute("COMMIT")
        except psycopg.Error as exc:
            self._rollback(connection)
            raise self._translate(exc) from exc

    @staticmethod
    def _rollback(connection: psycopg.Connection[tuple[object, ...]]) -> None:
        if connection.closed or connection.broken:
            return
        with contextlib.suppress(psycopg.Error):
            connection.execute("ROLLBACK")

    @staticmethod
    def _translate(exc: psycopg.Error) -> Exception:
        if isinstance(exc, _RETRYABLE):
            return StoreConflictError(f"PostgreSQL transaction conflict: {type(exc).__name__}")
        return StoreUnavailableError(f"PostgreSQL error: {type(exc).__name__}: {exc.sqlstate}")

    def write(self) -> contextlib.AbstractContextManager[Session]:
        if getattr(self._local, "session", None) is not None:
            raise RuntimeError("store transactions do not nest")
        return self._transaction(
            (
                "BEGIN ISOLATION LEVEL READ COMMITTED",
                f"SET LOCAL lock_timeout = {self._lock_timeout_ms}",
                "LOCK TABLE sealpod_meta IN SHARE ROW EXCLUSIVE MODE",
            )
        )

    def read(self) -> contextlib.AbstractContextManager[Session]:
        session: Session | None = getattr(self._local, "session", None)
        if session is not None:
            return contextlib.nullcontext(session)
        return self._transaction(("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for connection in connections:
            with contextlib.suppress(psycopg.Error):
                connection.close()
