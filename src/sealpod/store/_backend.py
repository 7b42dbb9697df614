"""The storage interface under the sealed store: opaque rows, transactions, nothing else.

A backend stores two tables and knows nothing about encryption:

* ``meta(name -> value)``: store identity, sealed data-key slots, recovery info, state head;
* ``records((namespace, key) -> (version, blob))``: encrypted records.

``write()`` gives a session that holds the store's single writer lock from its first statement
to commit (so everything read inside it is current and nobody else writes meanwhile) and
commits atomically; ``read()`` gives a consistent snapshot. Keys sort by code point
(byte-wise UTF-8) in every backend.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from contextlib import AbstractContextManager

from sealpod.errors import EnvironmentUnavailableError, SealpodError


class StoreUnavailableError(EnvironmentUnavailableError):
    """The database cannot be reached or used (missing directory, server down, disk error)."""


class StoreConflictError(SealpodError):
    """A transaction lost a race with another writer (serialization failure, deadlock, busy).

    Nothing was written; running the whole transaction again is safe.
    :meth:`~sealpod.store.SealedStateStore.transact` does so automatically.
    """


class Session(abc.ABC):
    """One database transaction."""

    @abc.abstractmethod
    def get_meta(self, name: str) -> bytes | None:
        """The value of meta row ``name``, if any."""

    @abc.abstractmethod
    def list_meta(self, prefix: str) -> list[tuple[str, bytes]]:
        """Meta rows whose name starts with ``prefix``, by name."""

    @abc.abstractmethod
    def put_meta(self, name: str, value: bytes) -> None:
        """Insert or replace meta row ``name``."""

    @abc.abstractmethod
    def get_record(self, namespace: str, key: str) -> tuple[int, bytes] | None:
        """``(version, blob)`` of a record, if any."""

    @abc.abstractmethod
    def put_record(self, namespace: str, key: str, version: int, blob: bytes) -> None:
        """Insert or replace a record."""

    @abc.abstractmethod
    def delete_record(self, namespace: str, key: str) -> None:
        """Delete a record (no error when absent)."""

    def get_records(self, names: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[int, bytes]]:
        """``(version, blob)`` of each record of ``names`` that exists (one query where the
        backend can)."""
        found = {}
        for namespace, key in names:
            row = self.get_record(namespace, key)
            if row is not None:
                found[(namespace, key)] = row
        return found

    def put_records(self, rows: list[tuple[str, str, int, bytes]]) -> None:
        """Insert or replace several records ``(namespace, key, version, blob)``."""
        for namespace, key, version, blob in rows:
            self.put_record(namespace, key, version, blob)

    @abc.abstractmethod
    def list_records(
        self, namespace: str, *, start_after: str | None, limit: int | None
    ) -> list[tuple[str, int, bytes]]:
        """``(key, version, blob)`` of a namespace's records in key order."""

    @abc.abstractmethod
    def iter_records(self) -> Iterator[tuple[str, str, int, bytes]]:
        """Every record as ``(namespace, key, version, blob)``, in no particular order."""


class Backend(abc.ABC):
    """A database holding one sealed store."""

    #: ``sqlite`` or ``postgresql``.
    kind: str

    @abc.abstractmethod
    def write(self) -> AbstractContextManager[Session]:
        """An exclusive, atomic write transaction (commits on normal exit, else rolls back).

        Raises:
            StoreConflictError: when the lock cannot be had or the commit lost a race.
            StoreUnavailableError: when the database fails.
        """

    @abc.abstractmethod
    def read(self) -> AbstractContextManager[Session]:
        """A consistent read-only snapshot (the thread's write session when one is open).

        Raises:
            StoreUnavailableError: when the database fails.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Close every connection."""
