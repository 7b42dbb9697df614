"""The hash-chained audit log: format, and one test per attack on it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sealpod.errors import VerificationError
from sealpod.store import (
    AuditEntry,
    AuditHead,
    AuditLog,
    SealedStateStore,
    open_store,
    verify_audit_entries,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
KEY = b"k" * 16


def _independent_hash(seq: int, time: str, event: dict[str, object], prev: str) -> str:
    # Straight from the module docstring: canonical JSON of the four fields, domain-separated.
    body = json.dumps(
        {"event": event, "prev": prev, "seq": seq, "time": time},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode("utf-8")
    return hashlib.sha256(b"sealpod-audit-v1\x00" + body).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SealedStateStore]:
    with open_store(f"sqlite://{tmp_path / 'state.db'}", KEY) as opened:
        yield opened


def _fill(store: SealedStateStore, count: int) -> list[AuditEntry]:
    entries = []
    for index in range(count):
        with store.transaction() as tx:
            entries.append(
                AuditLog.append(
                    tx, {"kind": "activation", "service": "web", "n": index, "ü": "ß"},
                    now=NOW + timedelta(seconds=index),
                )
            )  # fmt: skip
    return entries


def _rewrite(store: SealedStateStore, entries: list[AuditEntry]) -> None:
    """An insider with the data key rewrites the stored entries (bypassing AuditLog)."""
    with store.transaction() as tx:
        for key in tx.keys("audit"):
            tx.delete("audit", key)
        for index, entry in enumerate(entries):
            tx.put("audit", f"{index:020d}", entry.to_bytes())


def _rehash(entry: AuditEntry, **changes: object) -> AuditEntry:
    changed = dataclasses.replace(entry, **changes)  # type: ignore[arg-type]
    digest = _independent_hash(changed.seq, changed.time, dict(changed.event), changed.prev)
    return dataclasses.replace(changed, hash=digest)


def _reason(store: SealedStateStore) -> str:
    with pytest.raises(VerificationError) as info:
        AuditLog(store).verify_chain()
    return info.value.reason


# --- format --------------------------------------------------------------------------------


def test_entries_chain_with_the_documented_hash(store: SealedStateStore) -> None:
    entries = _fill(store, 3)
    previous = "0" * 64
    for index, entry in enumerate(entries):
        assert entry.seq == index
        assert entry.prev == previous
        assert entry.time == (NOW + timedelta(seconds=index)).strftime("%Y-%m-%dT%H:%M:%S.000000Z")
        assert entry.hash == _independent_hash(index, entry.time, dict(entry.event), previous)
        previous = entry.hash
    head = AuditLog(store).verify_chain()
    assert head == AuditHead(count=3, hash=previous)
    assert AuditLog(store).entries() == entries


def test_stored_entry_is_canonical_json(store: SealedStateStore) -> None:
    (entry,) = _fill(store, 1)
    stored = store.get("audit", "0" * 20)
    assert stored is not None
    document = json.loads(stored)
    assert (
        stored
        == json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    )
    assert document["hash"] == entry.hash


def test_empty_log_verifies(store: SealedStateStore) -> None:
    assert AuditLog(store).verify_chain() == AuditHead(count=0, hash="0" * 64)
    assert AuditLog(store).head() is None


def test_events_must_be_json(store: SealedStateStore) -> None:
    with pytest.raises(ValueError), store.transaction() as tx:
        AuditLog.append(tx, {"bad": object()}, now=NOW)
    with pytest.raises(ValueError), store.transaction() as tx:
        AuditLog.append(tx, {"nan": float("nan")}, now=NOW)
    with pytest.raises(ValueError), store.transaction() as tx:
        AuditLog.append(tx, {"ok": 1}, now=datetime(2026, 1, 1))
    assert AuditLog(store).head() is None


# --- attacks on the stored log -------------------------------------------------------------


def test_edited_audit_entry_is_detected(store: SealedStateStore) -> None:
    entries = _fill(store, 4)
    entries[1] = dataclasses.replace(entries[1], event={"kind": "nothing happened"})
    _rewrite(store, entries)
    assert _reason(store) == "audit_entry_hash_mismatch"


def test_edited_audit_entry_with_recomputed_hash_is_detected(store: SealedStateStore) -> None:
    entries = _fill(store, 4)
    entries[1] = _rehash(entries[1], event={"kind": "nothing happened"})
    _rewrite(store, entries)
    assert _reason(store) == "audit_chain_broken"


def test_edited_last_audit_entry_with_recomputed_hash_is_detected(
    store: SealedStateStore,
) -> None:
    entries = _fill(store, 4)
    entries[3] = _rehash(entries[3], event={"kind": "nothing happened"})
    _rewrite(store, entries)
    assert _reason(store) == "audit_head_mismatch"


def test_consistently_rewritten_audit_chain_is_detected(store: SealedStateStore) -> None:
    entries = _fill(store, 4)
    forged, previous = [], "0" * 64
    for entry in entries:
        forged.append(_rehash(entry, prev=previous, event={"kind": "forged"}))
        previous = forged[-1].hash
    _rewrite(store, forged)
    assert _reason(store) == "audit_head_mismatch"


def test_reordered_audit_entries_are_detected(store: SealedStateStore) -> None:
    entries = _fill(store, 4)
    entries[1], entries[2] = entries[2], entries[1]
    _rewrite(store, entries)
    assert _reason(store) == "audit_sequence_gap"


def test_reordered_and_renumbered_audit_entries_are_detected(store: SealedStateStore) -> None:
    entries = _fill(store, 4)
    swapped = [entries[0], _rehash(entries[2], seq=1), _rehash(entries[1], seq=2), entries[3]]
    _rewrite(store, swapped)
    assert _reason(store) == "audit_chain_broken"


def test_deleted_middle_audit_entry_is_detected(store: SealedStateStore) -> None:
    entries = _fill(store, 4)
    with store.transaction() as tx:
        tx.delete("audit", f"{1:020d}")
    assert entries[1].seq == 1
    assert _reason(store) == "audit_sequence_gap"


def test_truncated_audit_log_is_detected(store: SealedStateStore) -> None:
    _fill(store, 4)
    with store.transaction() as tx:
        tx.delete("audit", f"{3:020d}")
    assert _reason(store) == "audit_log_truncated"


def test_inserted_audit_entry_is_detected(store: SealedStateStore) -> None:
    entries = _fill(store, 3)
    intruder = _rehash(entries[1], event={"kind": "fabricated"}, prev=entries[0].hash)
    _rewrite(store, [entries[0], intruder, *entries[1:]])
    assert _reason(store) == "audit_sequence_gap"


def test_audit_entry_beyond_the_head_is_detected(store: SealedStateStore) -> None:
    entries = _fill(store, 2)
    extra = _rehash(entries[1], seq=2, prev=entries[1].hash, event={"kind": "fabricated"})
    with store.transaction() as tx:
        tx.put("audit", f"{2:020d}", extra.to_bytes())
    assert _reason(store) == "audit_log_extended"


def test_audit_log_without_its_head_is_detected(store: SealedStateStore) -> None:
    _fill(store, 2)
    with store.transaction() as tx:
        tx.delete("audit-head", "head")
    assert _reason(store) == "audit_head_missing"


def test_malformed_audit_entry_is_detected(store: SealedStateStore) -> None:
    _fill(store, 2)
    with store.transaction() as tx:
        tx.put("audit", f"{1:020d}", b'{"seq": 1}')
    assert _reason(store) == "audit_entry_malformed"


def test_truncation_with_rolled_back_head_is_caught_by_the_integrity_check(
    tmp_path: Path,
) -> None:
    import sqlite3

    path = tmp_path / "state.db"
    with open_store(f"sqlite://{path}", KEY) as store:
        _fill(store, 2)
        db = sqlite3.connect(path)
        old_head = db.execute(
            "SELECT version, blob FROM sealpod_records WHERE namespace = 'audit-head'"
        ).fetchone()
        _fill(store, 1)
        with db:
            db.execute("DELETE FROM sealpod_records WHERE namespace = 'audit' AND key = ?",
                       (f"{2:020d}",))  # fmt: skip
            db.execute(
                "UPDATE sealpod_records SET version = ?, blob = ? WHERE namespace = 'audit-head'",
                old_head,
            )
        db.close()
        assert AuditLog(store).verify_chain().count == 2  # the chain alone looks fine
        with pytest.raises(VerificationError) as info:
            store.verify_integrity()
        assert info.value.reason == "state_digest_mismatch"


# --- exported logs -------------------------------------------------------------------------


def test_exported_log_verifies_against_its_head(store: SealedStateStore) -> None:
    entries = _fill(store, 3)
    exported = [AuditEntry.from_bytes(e.to_bytes()) for e in entries]
    head = AuditLog(store).head()
    assert verify_audit_entries(exported, head) == head
    with pytest.raises(VerificationError) as info:
        verify_audit_entries(exported[:2], head)
    assert info.value.reason == "audit_log_truncated"
    with pytest.raises(VerificationError) as info:
        verify_audit_entries(exported, None)
    assert info.value.reason == "audit_head_missing"


@pytest.mark.parametrize(
    "data",
    [b"", b"[]", b'{"seq": 0}', b'{"event": {}, "hash": "", "prev": "", "seq": -1, "time": ""}'],
)
def test_malformed_exported_entries_are_refused(data: bytes) -> None:
    with pytest.raises(VerificationError) as info:
        AuditEntry.from_bytes(data)
    assert info.value.reason == "audit_entry_malformed"
