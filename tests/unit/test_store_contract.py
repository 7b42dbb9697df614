"""The behaviour every sealed-store backend must have, run here against SQLite.

``StoreContract`` is reused by ``tests/integration/test_store_postgres.py`` for PostgreSQL: a
subclass supplies ``store_url`` (a fresh, empty store location) and ``raw`` (direct SQL access
to the same database, standing in for an attacker who controls the host's disk or database).
"""

from __future__ import annotations

import itertools
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from sealpod.errors import ConfigError, VerificationError
from sealpod.store import (
    AuditLog,
    StoreSealedError,
    decrypt_recovery_share,
    key_fingerprint,
    open_store,
    read_recovery_info,
    recover_store,
)

SEALING_KEY = bytes(range(16))  # an SGX sealing key is 128 bits
OTHER_SEALING_KEY = bytes(range(100, 132))


class RawDB:
    """Direct SQL on the store's database; ``?`` placeholders in every backend."""

    def __init__(self, execute: Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]) -> None:
        self._execute = execute

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        return self._execute(sql, params)

    def record(self, namespace: str, key: str) -> tuple[int, bytes]:
        rows = self.query(
            "SELECT version, blob FROM sealpod_records WHERE namespace = ? AND key = ?",
            namespace,
            key,
        )
        assert rows, f"no record {namespace}/{key}"
        return int(rows[0][0]), bytes(rows[0][1])

    def set_record(self, namespace: str, key: str, version: int, blob: bytes) -> None:
        self.query("DELETE FROM sealpod_records WHERE namespace = ? AND key = ?", namespace, key)
        self.query(
            "INSERT INTO sealpod_records (namespace, key, version, blob) VALUES (?, ?, ?, ?)",
            namespace,
            key,
            version,
            blob,
        )

    def meta(self, name: str) -> bytes:
        rows = self.query("SELECT value FROM sealpod_meta WHERE name = ?", name)
        assert rows, f"no meta {name}"
        return bytes(rows[0][0])

    def set_meta(self, name: str, value: bytes) -> None:
        self.query("UPDATE sealpod_meta SET value = ? WHERE name = ?", value, name)


def _flip(data: bytes, index: int) -> bytes:
    tampered = bytearray(data)
    tampered[index] ^= 0x01
    return bytes(tampered)


@pytest.fixture(scope="module")
def recovery_keys() -> list[rsa.RSAPrivateKey]:
    return [rsa.generate_private_key(65537, 2048) for _ in range(3)]


class StoreContract:
    """Tests shared by all backends; subclasses provide ``store_url`` and ``raw``."""

    # --- records and transactions ------------------------------------------------------

    def test_put_get_delete_round_trip(self, store_url: str) -> None:
        with open_store(store_url, SEALING_KEY) as store:
            assert store.get("secrets", "db") is None
            with store.transaction() as tx:
                tx.put("secrets", "db", b"\x00hunter2\xff")
                tx.put("secrets", "api", b"")
                tx.put("instances", "web/1", b"x")
            assert store.get("secrets", "db") == b"\x00hunter2\xff"
            assert store.get("secrets", "api") == b""
            with store.transaction() as tx:
                tx.delete("secrets", "db")
                tx.delete("secrets", "never-existed")
            assert store.get("secrets", "db") is None
            assert store.keys("secrets") == ["api"]
            assert store.keys("instances") == ["web/1"]

    def test_items_are_ordered_by_code_point_and_paged(self, store_url: str) -> None:
        keys = ["b", "a", "B", "é", "a0", "zz", "\u4e2d"]
        with open_store(store_url, SEALING_KEY) as store:
            with store.transaction() as tx:
                for key in keys:
                    tx.put("ns", key, key.encode())
            expected = sorted(keys)  # Python orders str by code point
            assert store.keys("ns") == expected
            assert store.items("ns") == [(k, k.encode()) for k in expected]
            assert store.keys("ns", limit=2) == expected[:2]
            assert store.keys("ns", start_after=expected[1], limit=3) == expected[2:5]

    def test_reads_inside_a_transaction_see_its_own_writes(self, store_url: str) -> None:
        with open_store(store_url, SEALING_KEY) as store:
            with store.transaction() as tx:
                tx.put("ns", "a", b"1")
                tx.put("ns", "c", b"3")
            with store.transaction() as tx:
                tx.put("ns", "b", b"2")
                tx.delete("ns", "a")
                assert tx.get("ns", "b") == b"2"
                assert tx.get("ns", "a") is None
                assert tx.items("ns") == [("b", b"2"), ("c", b"3")]
                assert tx.keys("ns", start_after="b") == ["c"]
                assert tx.keys("ns", limit=1) == ["b"]
                # Outside the transaction nothing is visible yet.
                assert _other_thread(lambda: store.get("ns", "b")) is None

    def test_failed_transaction_writes_nothing(self, store_url: str) -> None:
        with open_store(store_url, SEALING_KEY) as store:
            with store.transaction() as tx:
                tx.put("ns", "kept", b"old")
            version = store.version

            class BoomError(Exception):
                pass

            with pytest.raises(BoomError), store.transaction() as tx:
                tx.put("ns", "kept", b"new")
                tx.put("ns", "other", b"x")
                raise BoomError
            assert store.get("ns", "kept") == b"old"
            assert store.get("ns", "other") is None
            assert store.version == version
            store.verify_integrity()

    def test_version_counts_changing_transactions(self, store_url: str) -> None:
        with open_store(store_url, SEALING_KEY) as store:
            assert store.version == 0
            for expected in (1, 2, 3):
                with store.transaction() as tx:
                    assert tx.version == expected
                    tx.put("ns", "k", str(expected).encode())
                assert store.version == expected
            with store.transaction():
                pass  # nothing written: the version stays
            assert store.version == 3

    def test_transaction_object_is_unusable_after_its_block(self, store_url: str) -> None:
        with open_store(store_url, SEALING_KEY) as store:
            with store.transaction() as tx:
                tx.put("ns", "k", b"v")
            with pytest.raises(RuntimeError):
                tx.put("ns", "k", b"late")
            with pytest.raises(RuntimeError), store.transaction(), store.transaction():
                pass

    @pytest.mark.parametrize(("namespace", "key"), [("", "k"), ("ns", ""), ("ns", "a\x00b")])
    def test_bad_names_are_refused(self, store_url: str, namespace: str, key: str) -> None:
        with open_store(store_url, SEALING_KEY) as store:
            with pytest.raises(ValueError), store.transaction() as tx:
                tx.put(namespace, key, b"v")
            assert store.version == 0

    def test_snapshot_is_consistent(self, store_url: str) -> None:
        with open_store(store_url, SEALING_KEY) as store:
            with store.transaction() as tx:
                tx.put("ns", "a", b"1")
            with store.snapshot() as view:
                assert view.version == 1
                _other_thread(lambda: _put(store, "ns", "a", b"2"))
                assert view.get("ns", "a") == b"1"
            assert store.get("ns", "a") == b"2"

    def test_values_are_not_stored_in_the_clear(self, store_url: str, raw: RawDB) -> None:
        marker = b"PLAINTEXT-MARKER-0123456789"
        with open_store(store_url, SEALING_KEY) as store:
            _put(store, "ns", "k", marker)
            _, blob = raw.record("ns", "k")
            assert marker not in blob
            everything = b"".join(
                bytes(value) for (value,) in raw.query("SELECT value FROM sealpod_meta")
            )
            assert marker not in everything
            data_key = store._crypto.data_key.value
            assert data_key not in everything and data_key not in blob
            assert data_key.hex() not in repr(store) and data_key.hex() not in repr(store._crypto)

    # --- concurrency -------------------------------------------------------------------

    def test_concurrent_increments_from_threads_are_not_lost(self, store_url: str) -> None:
        threads, rounds = 4, 15
        with open_store(store_url, SEALING_KEY) as store:
            _put(store, "c", "n", b"0")
            errors: list[BaseException] = []

            def work() -> None:
                try:
                    for _ in range(rounds):
                        store.transact(_increment)
                except BaseException as exc:  # pragma: no cover - reported below
                    errors.append(exc)

            workers = [threading.Thread(target=work) for _ in range(threads)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            assert errors == []
            assert store.get("c", "n") == str(threads * rounds).encode()
            assert store.version == 1 + threads * rounds
            store.verify_integrity()

    def test_two_store_handles_share_one_state(self, store_url: str) -> None:
        with open_store(store_url, SEALING_KEY) as first:
            _put(first, "c", "n", b"0")
            with open_store(store_url, SEALING_KEY) as second:
                assert second.store_id == first.store_id
                for _ in range(5):
                    first.transact(_increment)
                    second.transact(_increment)
                assert first.get("c", "n") == b"10"
                assert second.version == first.version == 11

    # --- sealing and recovery ----------------------------------------------------------

    def test_reopening_with_the_sealing_key_unseals_by_itself(self, store_url: str) -> None:
        with open_store(store_url, SEALING_KEY) as store:
            _put(store, "ns", "k", b"v")
            store_id = store.store_id
        with open_store(store_url, SEALING_KEY) as store:
            assert store.store_id == store_id
            assert store.get("ns", "k") == b"v"
            assert store.version == 1

    def test_changed_sealing_key_means_recovery(
        self, store_url: str, recovery_keys: list[rsa.RSAPrivateKey]
    ) -> None:
        with open_store(store_url, SEALING_KEY) as store:
            store.set_recovery_keys([k.public_key() for k in recovery_keys], 2)
        with pytest.raises(StoreSealedError) as info:
            open_store(store_url, OTHER_SEALING_KEY)
        assert info.value.threshold == 2
        assert info.value.recovery_keys == tuple(
            key_fingerprint(k.public_key()) for k in recovery_keys
        )

    def test_missing_sealing_key_means_recovery(self, store_url: str) -> None:
        open_store(store_url, SEALING_KEY).close()
        with pytest.raises(StoreSealedError) as info:
            open_store(store_url, None)
        assert info.value.threshold == 0  # no recovery keys were configured

    def test_short_sealing_key_is_refused(self, store_url: str) -> None:
        with pytest.raises(ConfigError):
            open_store(store_url, b"short")

    def test_recovery_from_every_k_subset_of_shares(
        self, store_url: str, recovery_keys: list[rsa.RSAPrivateKey]
    ) -> None:
        with open_store(store_url, SEALING_KEY) as store:
            _put(store, "secrets", "db", b"s3cret")
            shares = store.set_recovery_keys([k.public_key() for k in recovery_keys], 2)
        assert [s.key_fingerprint for s in shares] == [
            key_fingerprint(k.public_key()) for k in recovery_keys
        ]
        info = read_recovery_info(store_url)
        assert info is not None and info.threshold == 2
        decrypted = [
            decrypt_recovery_share(share.encrypted_share, key)
            for share, key in zip(shares, recovery_keys, strict=True)
        ]
        for index, subset in enumerate(itertools.combinations(decrypted, 2)):
            new_key = bytes([index + 1]) * 32
            with recover_store(store_url, new_key, list(subset)) as store:
                assert store.get("secrets", "db") == b"s3cret"
            # Re-sealed: the new sealing key now opens it without shares.
            with open_store(store_url, new_key) as store:
                assert store.get("secrets", "db") == b"s3cret"
        # The original sealing key still opens its own slot.
        open_store(store_url, SEALING_KEY).close()

    def test_recovery_with_fewer_than_k_shares_is_refused(
        self, store_url: str, recovery_keys: list[rsa.RSAPrivateKey]
    ) -> None:
        with open_store(store_url, SEALING_KEY) as store:
            shares = store.set_recovery_keys([k.public_key() for k in recovery_keys], 3)
        decrypted = [
            decrypt_recovery_share(s.encrypted_share, k)
            for s, k in zip(shares, recovery_keys, strict=True)
        ]
        for subset in itertools.combinations(decrypted, 2):
            with pytest.raises(VerificationError) as info:
                recover_store(store_url, OTHER_SEALING_KEY, list(subset))
            assert info.value.reason == "not_enough_recovery_shares"
        with pytest.raises(StoreSealedError):
            open_store(store_url, OTHER_SEALING_KEY)

    def test_tampered_recovery_share_is_refused(
        self, store_url: str, recovery_keys: list[rsa.RSAPrivateKey]
    ) -> None:
        with open_store(store_url, SEALING_KEY) as store:
            shares = store.set_recovery_keys([k.public_key() for k in recovery_keys], 2)
        first = decrypt_recovery_share(shares[0].encrypted_share, recovery_keys[0])
        second = decrypt_recovery_share(shares[1].encrypted_share, recovery_keys[1])
        with pytest.raises(VerificationError) as info:
            recover_store(store_url, OTHER_SEALING_KEY, [first, _flip(second, len(second) - 1)])
        assert info.value.reason == "recovery_shares_invalid"
        with pytest.raises(VerificationError) as info:
            recover_store(store_url, OTHER_SEALING_KEY, [first, first])
        assert info.value.reason == "recovery_shares_inconsistent"
        with pytest.raises(VerificationError) as info:
            recover_store(store_url, OTHER_SEALING_KEY, [first, b"garbage"])
        assert info.value.reason == "recovery_share_malformed"
        with pytest.raises(StoreSealedError):
            open_store(store_url, OTHER_SEALING_KEY)

    def test_shares_of_a_replaced_recovery_split_are_refused(
        self, store_url: str, recovery_keys: list[rsa.RSAPrivateKey]
    ) -> None:
        public = [k.public_key() for k in recovery_keys]
        with open_store(store_url, SEALING_KEY) as store:
            old = store.set_recovery_keys(public, 2)
            new = store.set_recovery_keys(public[1:], 2)
        old_plain = [
            decrypt_recovery_share(s.encrypted_share, k)
            for s, k in zip(old, recovery_keys, strict=True)
        ]
        new_plain = [
            decrypt_recovery_share(s.encrypted_share, k)
            for s, k in zip(new, recovery_keys[1:], strict=True)
        ]
        with pytest.raises(VerificationError) as info:
            recover_store(store_url, OTHER_SEALING_KEY, old_plain[:2])
        assert info.value.reason == "recovery_shares_invalid"
        recover_store(store_url, OTHER_SEALING_KEY, new_plain).close()

    def test_recovery_without_configured_keys_is_refused(
        self, store_url: str, recovery_keys: list[rsa.RSAPrivateKey]
    ) -> None:
        with open_store(f"{store_url}", SEALING_KEY) as store:
            store_id = store.store_id
        share = b"SPRS\x01" + bytes.fromhex(store_id) + bytes([1, 1]) + bytes(32)
        with pytest.raises(VerificationError) as info:
            recover_store(store_url, OTHER_SEALING_KEY, [share])
        assert info.value.reason == "recovery_not_configured"

    def test_share_encrypted_to_another_key_cannot_be_decrypted(
        self, store_url: str, recovery_keys: list[rsa.RSAPrivateKey]
    ) -> None:
        with open_store(store_url, SEALING_KEY) as store:
            shares = store.set_recovery_keys([k.public_key() for k in recovery_keys[:2]], 1)
        with pytest.raises(VerificationError) as info:
            decrypt_recovery_share(shares[0].encrypted_share, recovery_keys[1])
        assert info.value.reason == "recovery_share_undecryptable"

    def test_recovery_keys_are_validated(
        self, store_url: str, recovery_keys: list[rsa.RSAPrivateKey]
    ) -> None:
        public = [k.public_key() for k in recovery_keys]
        with open_store(store_url, SEALING_KEY) as store:
            for keys, threshold in ([], 1), (public, 0), (public, 4), ([public[0], public[0]], 1):
                with pytest.raises(ConfigError):
                    store.set_recovery_keys(keys, threshold)
            assert store.recovery_info() is None
            assert "encrypted_share" not in repr(store.set_recovery_keys(public, 1))

    # --- tampering (one test per attack) -----------------------------------------------

    def test_flipped_bit_in_record_is_refused(self, store_url: str, raw: RawDB) -> None:
        with open_store(store_url, SEALING_KEY) as store:
            _put(store, "secrets", "db", b"value")
            version, blob = raw.record("secrets", "db")
            raw.set_record("secrets", "db", version, _flip(blob, len(blob) // 2))
            _expect(store.get, "record_authentication_failed", "secrets", "db")
            _expect(store.verify_integrity, "record_authentication_failed")
        _expect(open_store, "record_authentication_failed", store_url, SEALING_KEY)

    def test_record_swapped_between_keys_is_refused(self, store_url: str, raw: RawDB) -> None:
        with open_store(store_url, SEALING_KEY) as store:
            with store.transaction() as tx:
                tx.put("secrets", "a", b"alice's")
                tx.put("secrets", "b", b"bob's")
            version_a, blob_a = raw.record("secrets", "a")
            version_b, blob_b = raw.record("secrets", "b")
            raw.set_record("secrets", "a", version_b, blob_b)
            raw.set_record("secrets", "b", version_a, blob_a)
            _expect(store.get, "record_authentication_failed", "secrets", "a")
            _expect(store.get, "record_authentication_failed", "secrets", "b")

    def test_record_moved_to_another_namespace_is_refused(self, store_url: str, raw: RawDB) -> None:
        with open_store(store_url, SEALING_KEY) as store:
            _put(store, "secrets", "k", b"secret value")
            version, blob = raw.record("secrets", "k")
            raw.set_record("public", "k", version, blob)
            _expect(store.get, "record_authentication_failed", "public", "k")
            _expect(store.items, "record_authentication_failed", "public")

    def test_record_with_renumbered_version_is_refused(self, store_url: str, raw: RawDB) -> None:
        with open_store(store_url, SEALING_KEY) as store:
            _put(store, "ns", "x", b"1")
            _put(store, "ns", "k", b"v")
            version, blob = raw.record("ns", "k")
            raw.set_record("ns", "k", version - 1, blob)
            _expect(store.get, "record_authentication_failed", "ns", "k")
            raw.set_record("ns", "k", version + 5, blob)
            _expect(store.get, "record_version_ahead_of_state", "ns", "k")

    def test_record_rolled_back_to_an_older_ciphertext_is_detected(
        self, store_url: str, raw: RawDB
    ) -> None:
        with open_store(store_url, SEALING_KEY) as store:
            _put(store, "secrets", "db", b"old password")
            old = raw.record("secrets", "db")
            _put(store, "secrets", "db", b"new password")
            raw.set_record("secrets", "db", *old)
            # A single read cannot tell (documented); the record-set digest does.
            assert store.get("secrets", "db") == b"old password"
            _expect(store.verify_integrity, "state_digest_mismatch")
        _expect(open_store, "state_digest_mismatch", store_url, SEALING_KEY)

    def test_deleted_record_is_detected(self, store_url: str, raw: RawDB) -> None:
        with open_store(store_url, SEALING_KEY) as store:
            _put(store, "instances", "web/1", b"x")
            _put(store, "instances", "web/2", b"y")
            raw.query("DELETE FROM sealpod_records WHERE key = ?", "web/1")
            _expect(store.verify_integrity, "state_digest_mismatch")

    def test_reinserted_deleted_record_is_detected(self, store_url: str, raw: RawDB) -> None:
        with open_store(store_url, SEALING_KEY) as store:
            _put(store, "nonces", "n1", b"unused")
            saved = raw.record("nonces", "n1")
            with store.transaction() as tx:
                tx.delete("nonces", "n1")
            raw.set_record("nonces", "n1", *saved)
            _expect(store.verify_integrity, "state_digest_mismatch")

    def test_record_copied_from_another_store_is_refused(
        self, store_url: str, raw: RawDB, tmp_path: Path
    ) -> None:
        other_url = f"sqlite://{tmp_path / 'other.db'}"
        with open_store(other_url, SEALING_KEY) as other:
            _put(other, "secrets", "db", b"other store")
            other_raw = _sqlite_raw(tmp_path / "other.db")
            foreign = other_raw.record("secrets", "db")
        with open_store(store_url, SEALING_KEY) as store:
            _put(store, "secrets", "db", b"this store")
            raw.set_record("secrets", "db", *foreign)
            _expect(store.get, "record_authentication_failed", "secrets", "db")

    def test_flipped_bit_in_state_head_is_refused(self, store_url: str, raw: RawDB) -> None:
        open_store(store_url, SEALING_KEY).close()
        head = raw.meta("head")
        raw.set_meta("head", _flip(head, len(head) - 20))
        _expect(open_store, "state_head_authentication_failed", store_url, SEALING_KEY)

    def test_state_head_rolled_back_is_detected(self, store_url: str, raw: RawDB) -> None:
        with open_store(store_url, SEALING_KEY) as store:
            _put(store, "ns", "a", b"1")
            old_head = raw.meta("head")
            _put(store, "ns", "b", b"2")
            raw.set_meta("head", old_head)
            _expect(store.get, "record_version_ahead_of_state", "ns", "b")
            _expect(store.verify_integrity, "record_version_ahead_of_state")

    def test_flipped_bit_in_sealed_data_key_is_refused(self, store_url: str, raw: RawDB) -> None:
        open_store(store_url, SEALING_KEY).close()
        ((name, value),) = raw.query(
            "SELECT name, value FROM sealpod_meta WHERE name LIKE ?", "seal:%"
        )
        raw.set_meta(str(name), _flip(bytes(value), 20))
        _expect(open_store, "sealed_key_authentication_failed", store_url, SEALING_KEY)

    # --- audit log ---------------------------------------------------------------------

    def test_audit_log_appends_in_transactions_and_verifies(self, store_url: str) -> None:
        from datetime import UTC, datetime

        now = datetime(2026, 3, 1, tzinfo=UTC)
        with open_store(store_url, SEALING_KEY) as store:
            log = AuditLog(store)
            for index in range(5):
                with store.transaction() as tx:
                    AuditLog.append(tx, {"event": "activation", "n": index}, now=now)
            with pytest.raises(RuntimeError), store.transaction() as tx:
                AuditLog.append(tx, {"event": "rolled back"}, now=now)
                raise RuntimeError
            head = log.verify_chain()
            assert head.count == 5
            assert [e.event["n"] for e in log.entries()] == [0, 1, 2, 3, 4]
            assert [e.seq for e in log.entries(start=3)] == [3, 4]

    def test_truncated_audit_log_in_the_database_is_detected(
        self, store_url: str, raw: RawDB
    ) -> None:
        from datetime import UTC, datetime

        now = datetime(2026, 3, 1, tzinfo=UTC)
        with open_store(store_url, SEALING_KEY) as store:
            for index in range(3):
                with store.transaction() as tx:
                    AuditLog.append(tx, {"n": index}, now=now)
            raw.query(
                "DELETE FROM sealpod_records WHERE namespace = ? AND key = ?",
                "audit",
                f"{2:020d}",
            )
            _expect(AuditLog(store).verify_chain, "audit_log_truncated")
            _expect(store.verify_integrity, "state_digest_mismatch")


def _expect(call: Callable[..., Any], reason: str, *args: Any) -> None:
    with pytest.raises(VerificationError) as info:
        result = call(*args)
        close = getattr(result, "close", None)
        if close is not None:
            close()
    assert info.value.reason == reason, str(info.value)


def _put(store: Any, namespace: str, key: str, value: bytes) -> None:
    with store.transaction() as tx:
        tx.put(namespace, key, value)


def _increment(tx: Any) -> None:
    value = tx.get("c", "n")
    tx.put("c", "n", str(int(value) + 1).encode())


def _other_thread(call: Callable[[], Any]) -> Any:
    result: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(call())
        except BaseException as exc:  # pragma: no cover - re-raised below
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    if errors:
        raise errors[0]
    return result[0] if result else None


def _sqlite_raw(path: Path) -> RawDB:
    def execute(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        connection = sqlite3.connect(path, timeout=30)
        try:
            with connection:
                return connection.execute(sql, tuple(params)).fetchall()
        finally:
            connection.close()

    return RawDB(execute)


class TestSQLiteStore(StoreContract):
    @pytest.fixture
    def store_url(self, tmp_path: Path) -> str:
        return f"sqlite://{tmp_path / 'state.db'}"

    @pytest.fixture
    def raw(self, tmp_path: Path) -> Iterator[RawDB]:
        yield _sqlite_raw(tmp_path / "state.db")
