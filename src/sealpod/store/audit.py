"""The coordinator's hash-chained audit log, kept in the sealed store.

Entry ``n`` (``n = 0, 1, ...``) is the canonical JSON (sorted keys, no whitespace, UTF-8)
``{"event": ..., "hash": H_n, "prev": H_{n-1}, "seq": n, "time": "...Z"}`` stored as record
``("audit", "%020d" % n)``, where

    H_n = hex(SHA-256("sealpod-audit-v1\\0" ‖ canonical_json({"event", "prev", "seq", "time"})))

and ``H_{-1}`` is 64 zeros (:data:`GENESIS_HASH`). The head ``{"count": n + 1, "hash": H_n}``
is the record ``("audit-head", "head")``, written in the same transaction as the entry, so it
is part of the sealed state.

:func:`verify_audit_entries` (and :meth:`AuditLog.verify_chain`) detect:

* an edited entry (its hash no longer matches: ``audit_entry_hash_mismatch``), also when the
  editor recomputed that hash (the next ``prev`` or the head no longer matches:
  ``audit_chain_broken`` / ``audit_head_mismatch``), and a whole chain rewritten consistently
  (the sealed head no longer matches: ``audit_head_mismatch``);
* reordered, deleted or inserted entries (``audit_sequence_gap`` / ``audit_chain_broken``);
* truncation, i.e. the last entries removed (``audit_log_truncated``: fewer entries than the head
  counts), entries beyond the head (``audit_log_extended``), a missing head
  (``audit_head_missing``) and malformed entries (``audit_entry_malformed``).

Truncating the entries *and* rolling the head record back to its older ciphertext leaves a
consistent chain; that is a record rollback, caught by
:meth:`~sealpod.store.SealedStateStore.verify_integrity` (``state_digest_mismatch``), so an
audit check should run both.

Exported entries (``GET /api/v1/audit``) can be checked by anyone with
:func:`verify_audit_entries` given the head; against the store the head itself is sealed.
Events must not contain secrets: the log is meant to be shown to operators.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sealpod.errors import VerificationError
from sealpod.store.sealed import SealedStateStore, Transaction

_logger = logging.getLogger(__name__)

AUDIT_NAMESPACE = "audit"
AUDIT_HEAD_NAMESPACE = "audit-head"
_HEAD_KEY = "head"
GENESIS_HASH = "0" * 64
_DOMAIN = b"sealpod-audit-v1\x00"
_PAGE = 1000


def canonical_json(value: object) -> bytes:
    """Sorted keys, no whitespace, UTF-8, no NaN/Infinity.

    Raises:
        ValueError: when ``value`` is not JSON-serialisable.
    """
    try:
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode()
    except TypeError as exc:
        raise ValueError(f"not JSON-serialisable: {exc}") from exc


def entry_hash(*, seq: int, time: str, event: Mapping[str, Any], prev: str) -> str:
    """``H_n`` of the module docstring.

    Raises:
        ValueError: when ``event`` is not JSON-serialisable.
    """
    body = canonical_json({"event": event, "prev": prev, "seq": seq, "time": time})
    return hashlib.sha256(_DOMAIN + body).hexdigest()


@dataclass(frozen=True)
class AuditEntry:
    """One entry of the log."""

    seq: int
    time: str
    event: Mapping[str, Any]
    prev: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (also what the store holds)."""
        return {
            "event": self.event,
            "hash": self.hash,
            "prev": self.prev,
            "seq": self.seq,
            "time": self.time,
        }

    def to_bytes(self) -> bytes:
        """Canonical JSON of :meth:`to_dict`."""
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, document: object) -> AuditEntry:
        """Parse the JSON form (does not check the hash; see :func:`verify_audit_entries`).

        Raises:
            VerificationError: ``audit_entry_malformed`` for a document of the wrong shape.
        """
        if not isinstance(document, dict) or set(document) != {
            "event", "hash", "prev", "seq", "time",
        }:  # fmt: skip
            raise VerificationError("audit_entry_malformed", "bad audit entry fields")
        seq, time, event = document["seq"], document["time"], document["event"]
        prev, digest = document["prev"], document["hash"]
        if (
            not isinstance(seq, int)
            or isinstance(seq, bool)
            or seq < 0
            or not isinstance(time, str)
            or not isinstance(event, dict)
            or not isinstance(prev, str)
            or not isinstance(digest, str)
        ):
            raise VerificationError("audit_entry_malformed", "bad audit entry field types")
        return cls(seq=seq, time=time, event=event, prev=prev, hash=digest)

    @classmethod
    def from_bytes(cls, data: bytes) -> AuditEntry:
        """Inverse of :meth:`to_bytes`.

        Raises:
            VerificationError: ``audit_entry_malformed`` when ``data`` is not an entry.
        """
        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise VerificationError("audit_entry_malformed", "audit entry is not JSON") from exc
        return cls.from_dict(document)


@dataclass(frozen=True)
class AuditHead:
    """How many entries the log has and the hash of the last one."""

    count: int
    hash: str

    def to_bytes(self) -> bytes:
        """Canonical JSON ``{"count", "hash"}``."""
        return canonical_json({"count": self.count, "hash": self.hash})

    @classmethod
    def from_bytes(cls, data: bytes) -> AuditHead:
        """Inverse of :meth:`to_bytes`.

        Raises:
            VerificationError: ``audit_head_malformed``.
        """
        try:
            document = json.loads(data)
            count, digest = document["count"], document["hash"]
        except (ValueError, UnicodeDecodeError, KeyError, TypeError) as exc:
            raise VerificationError("audit_head_malformed", "bad audit head") from exc
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise VerificationError("audit_head_malformed", "bad audit head count")
        if not isinstance(digest, str):
            raise VerificationError("audit_head_malformed", "bad audit head hash")
        return cls(count=count, hash=digest)


def _timestamp(now: datetime.datetime) -> str:
    if now.tzinfo is None:
        raise ValueError("audit times must be timezone-aware")
    return now.astimezone(datetime.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _key(seq: int) -> str:
    return f"{seq:020d}"


def verify_audit_entries(entries: Sequence[AuditEntry], head: AuditHead | None) -> AuditHead:
    """Check a whole log against its head; return the head.

    Raises:
        VerificationError: with the reasons listed in the module docstring.
    """
    if head is None:
        if entries:
            raise VerificationError("audit_head_missing", "entries exist but the head is missing")
        return AuditHead(count=0, hash=GENESIS_HASH)
    previous = GENESIS_HASH
    for index, entry in enumerate(entries):
        if entry.seq != index:
            raise VerificationError(
                "audit_sequence_gap", f"entry {index} carries sequence number {entry.seq}"
            )
        if not hmac.compare_digest(entry.prev, previous):
            raise VerificationError(
                "audit_chain_broken", f"entry {index} does not follow the previous entry"
            )
        try:
            expected = entry_hash(
                seq=entry.seq, time=entry.time, event=entry.event, prev=entry.prev
            )
        except ValueError as exc:
            raise VerificationError("audit_entry_malformed", f"entry {index}: {exc}") from exc
        if not hmac.compare_digest(entry.hash, expected):
            raise VerificationError(
                "audit_entry_hash_mismatch", f"entry {index} was modified after it was written"
            )
        previous = entry.hash
    if len(entries) < head.count:
        raise VerificationError(
            "audit_log_truncated", f"{len(entries)} entries, the head counts {head.count}"
        )
    if len(entries) > head.count:
        raise VerificationError(
            "audit_log_extended", f"{len(entries)} entries, the head counts {head.count}"
        )
    if not hmac.compare_digest(previous, head.hash):
        raise VerificationError(
            "audit_head_mismatch", "the last entry is not the one the sealed head names"
        )
    return head


class AuditLog:
    """The audit log of one sealed store."""

    def __init__(self, store: SealedStateStore) -> None:
        self._store = store

    #: The ``(namespace, key)`` of the sealed head record :meth:`append` reads: a transaction
    #: that appends can name it in :meth:`SealedStateStore.transact`'s ``prefetch``.
    HEAD_RECORD = (AUDIT_HEAD_NAMESPACE, _HEAD_KEY)

    @staticmethod
    def append(tx: Transaction, event: Mapping[str, Any], *, now: datetime.datetime) -> AuditEntry:
        """Append ``event`` within ``tx`` (it becomes visible when ``tx`` commits).

        Raises:
            ValueError: when ``event`` is not JSON-serialisable or ``now`` is naive.
            VerificationError: when the stored head is malformed or fails authentication.
        """
        raw_head = tx.get(AUDIT_HEAD_NAMESPACE, _HEAD_KEY)
        head = AuditHead.from_bytes(raw_head) if raw_head is not None else None
        seq = head.count if head else 0
        prev = head.hash if head else GENESIS_HASH
        time = _timestamp(now)
        # Round-trip through JSON so the stored event is exactly what was hashed.
        event_copy = json.loads(canonical_json(dict(event)))
        digest = entry_hash(seq=seq, time=time, event=event_copy, prev=prev)
        entry = AuditEntry(seq=seq, time=time, event=event_copy, prev=prev, hash=digest)
        tx.put(AUDIT_NAMESPACE, _key(seq), entry.to_bytes())
        tx.put(AUDIT_HEAD_NAMESPACE, _HEAD_KEY, AuditHead(count=seq + 1, hash=digest).to_bytes())
        return entry

    def head(self) -> AuditHead | None:
        """The sealed head, or ``None`` for an empty log.

        Raises:
            VerificationError: when the head is malformed or fails authentication.
        """
        raw = self._store.get(AUDIT_HEAD_NAMESPACE, _HEAD_KEY)
        return AuditHead.from_bytes(raw) if raw is not None else None

    def entries(self, *, start: int = 0, limit: int | None = None) -> list[AuditEntry]:
        """Entries from sequence number ``start`` on, in order.

        Raises:
            VerificationError: when an entry is malformed or fails authentication.
        """
        start_after = _key(start - 1) if start > 0 else None
        rows = self._store.items(AUDIT_NAMESPACE, start_after=start_after, limit=limit)
        return [AuditEntry.from_bytes(value) for _, value in rows]

    def verify_chain(self) -> AuditHead:
        """Check the whole stored log against the sealed head, in one consistent snapshot.

        Raises:
            VerificationError: with the reasons of :func:`verify_audit_entries`.
        """
        with self._store.snapshot() as view:
            raw = view.get(AUDIT_HEAD_NAMESPACE, _HEAD_KEY)
            head = AuditHead.from_bytes(raw) if raw is not None else None
            entries: list[AuditEntry] = []
            start_after: str | None = None
            while True:
                rows = view.items(AUDIT_NAMESPACE, start_after=start_after, limit=_PAGE)
                entries.extend(AuditEntry.from_bytes(value) for _, value in rows)
                if len(rows) < _PAGE:
                    break
                start_after = rows[-1][0]
        return verify_audit_entries(entries, head)
