"""The sealed-state store: encrypted records, atomic transactions, sealing and recovery.

Layout
======

The database (SQLite or PostgreSQL, see the backends) holds two tables. ``sealpod_meta``:

============================ ===================================================================
``store``                    JSON ``{"format": "sealpod-sealed-store-v1", "store_id": HEX}``;
                             ``store_id`` is 16 random bytes bound into every AAD below.
``seal:<slot id>``           the data key sealed under one TEE sealing key:
                             ``nonce(12) ‖ AES-256-GCM(W, data_key, AAD_seal)`` with
                             ``W = HKDF-SHA256(sealing_key, salt=store_id, info="sealpod-store-v1
                             seal")`` and ``slot id = hex(HMAC-SHA256(W, "sealpod-store-v1 slot
                             id")[:16])``. One slot per sealing key (several replicas, or a
                             sealing key restored by recovery).
``recovery``                 JSON ``{"threshold": k, "keys": [SHA-256(SPKI) hex, ...]}``
                             (informational and unauthenticated: shares are handed out once,
                             never stored).
``recovery_wrap``            ``nonce ‖ AES-256-GCM(R, data_key, AAD_recovery)``: the data key
                             wrapped under the current *recovery key* ``R`` (random, 256 bits,
                             new for every split; it exists only as Shamir shares).
``head``                     ``nonce ‖ AES-256-GCM(data_key, "SPH1" ‖ version(8) ‖ digest(32),
                             AAD_head)``: the state version and the record-set digest.
============================ ===================================================================

``sealpod_records((namespace, key) -> (version, blob))``:
``blob = nonce(12) ‖ AES-256-GCM(data_key, value, AAD_record)`` where ``AAD_record`` encodes
the store id, the namespace, the key and ``version`` (the state version of the transaction that
wrote it), each length-prefixed. Nonces are random (96 bits); the data key is 256 bits from the
OS CSPRNG.

The *digest* is the XOR over all records of
``HMAC-SHA256(K_mac, store_id ‖ namespace ‖ key ‖ version ‖ SHA-256(blob))`` with
``K_mac = HKDF-SHA256(data_key, info="sealpod-store-v1 record-set mac")``: a keyed set hash
(an XOR-MAC) updated incrementally by every transaction, so a transaction costs O(records it
touches) while a full check (:meth:`SealedStateStore.verify_integrity`) costs O(all records).

Guarantees
==========

* **Atomicity** (crash safety): a transaction's records and the new head are written in one
  database transaction; after a crash the store is in the old state or the new one.
* **Isolation**: write transactions are serialised (single writer lock), reads inside them are
  current; reads outside see a consistent snapshot. :meth:`SealedStateStore.transact` commits
  the transactions that queue up while one is being written as one *group* (one database
  transaction, one ``fsync``): they still run one after the other, each sees the writes of those
  before it, one that fails writes nothing, and none returns before the group is durable.
* **Monotonic version**: every committed transaction that changes something adds exactly 1 to
  the state version kept in the head.
* **Detected on every read** (:class:`~sealpod.errors.VerificationError`):
  a flipped bit anywhere in a record or the head (``record_authentication_failed``,
  ``state_head_authentication_failed``); a record moved to another namespace/key or another
  store, or given another version number (same reasons: the AAD changes); a record claiming a
  version newer than the head (``record_version_ahead_of_state``).
* **Detected by** :meth:`SealedStateStore.verify_integrity` (run by :func:`open_store`, and on
  demand): a record rolled back to an older ciphertext of itself, a deleted record, a
  re-inserted deleted record, a copied-in record (``state_digest_mismatch``).
* **Not detected**: rolling back the *whole* database (head and all records together) to an
  earlier consistent copy. That needs a trusted monotonic counter outside the database, which
  neither SGX (no usable hardware counters) nor the simulation gives us; the coordinator's
  audit log and external monitoring of the state version are the mitigation.

Sealing and recovery
====================

:func:`open_store` derives ``W`` from the sealing key and opens the matching slot; when there is
none (the sealing key is missing or changed, e.g. another CPU or enclave) it raises
:class:`StoreSealedError`, which puts the coordinator into its ``recovery`` state.

For recovery the data key is wrapped under a fresh recovery key ``R`` which is split k-of-n with
Shamir's scheme (:mod:`sealpod.store.shamir`); share ``i`` is
``"SPRS" ‖ 0x01 ‖ store_id ‖ k ‖ x ‖ y(32)`` encrypted with RSA-OAEP(SHA-256, MGF1-SHA-256) to
recovery public key ``i`` (:meth:`Transaction.set_recovery_keys`). :func:`recover_store` takes k
decrypted shares, rebuilds ``R``, unwraps the data key, checks it against the authenticated head
and seals it under the current sealing key. The indirection through ``R`` means that replacing
the recovery keys (a manifest update) makes every earlier share useless against the current
database. It does not re-encrypt the records: someone holding k old shares *and* a copy of the
database from before the replacement can still read records, including later ones; revoking
that needs a data-key rotation, which this store does not implement.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import os
import secrets
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar, cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sealpod.errors import ConfigError, SealpodError, VerificationError
from sealpod.store import shamir
from sealpod.store._backend import Backend, Session, StoreConflictError

_logger = logging.getLogger(__name__)

T = TypeVar("T")

FORMAT = "sealpod-sealed-store-v1"
_LABEL = b"sealpod-store-v1"
_HEAD_MAGIC = b"SPH1"
_SHARE_MAGIC = b"SPRS\x01"
_NONCE = 12
_KEY_BYTES = 32
_STORE_ID_BYTES = 16
_MIN_SEALING_KEY = 16
_MAX_NAME = 255
_ZERO_DIGEST = bytes(32)
#: Most transaction bodies one group commit runs (bounds a group's latency).
_GROUP_MAX = 64
#: AES-GCM nonces drawn from the OS per refill of :class:`_NonceSource`.
_NONCE_BLOCK = 256


class StoreSealedError(SealpodError):
    """The sealed state exists but cannot be unsealed with this sealing key.

    The coordinator enters its ``recovery`` state. ``threshold`` and ``recovery_keys`` (SHA-256
    SPKI fingerprints, hex) say which shares :func:`recover_store` needs; both are empty when no
    recovery keys were ever configured (then the state is lost).
    """

    def __init__(
        self, message: str, *, threshold: int = 0, recovery_keys: tuple[str, ...] = ()
    ) -> None:
        self.threshold = threshold
        self.recovery_keys = recovery_keys
        super().__init__(message)


@dataclasses.dataclass(frozen=True)
class RecoveryShare:
    """One recovery share, RSA-OAEP encrypted to the recovery key with ``key_fingerprint``."""

    key_fingerprint: str
    encrypted_share: bytes = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class RecoveryInfo:
    """Which recovery keys hold shares of the data key and how many are needed."""

    threshold: int
    key_fingerprints: tuple[str, ...]


class _Key:
    """A secret key; never shown by ``repr``."""

    __slots__ = ("value",)

    def __init__(self, value: bytes) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<secret>"


class _NonceSource:
    """Random 96-bit AES-GCM nonces, drawn from the OS CSPRNG ``_NONCE_BLOCK`` at a time.

    ``os.urandom`` releases the GIL, and taking it back can wait for another thread's time
    slice (milliseconds): per record sealed that happened while the group-commit leader held
    the writer locks. Drawn in blocks, each nonce is still fresh OS randomness, handed out
    once (under a lock); a forked child starts with an empty block.
    """

    __slots__ = ("_block", "_lock", "_offset")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._block = b""
        self._offset = 0

    def take(self) -> bytes:
        with self._lock:
            start = self._offset
            if start + _NONCE > len(self._block):
                self._block = os.urandom(_NONCE * _NONCE_BLOCK)
                start = 0
            self._offset = start + _NONCE
            return self._block[start : start + _NONCE]

    def reset(self) -> None:
        self._lock = threading.Lock()  # another thread may have held it at the fork
        self._block = b""
        self._offset = 0


_nonces = _NonceSource()
os.register_at_fork(after_in_child=_nonces.reset)


def _enc(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">I", len(raw)) + raw


def _check_name(kind: str, value: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{kind} must be a non-empty string")
    if len(value.encode()) > _MAX_NAME or "\x00" in value:
        raise ValueError(f"{kind} must be at most {_MAX_NAME} bytes without NUL")


def _hkdf(key: bytes, *, salt: bytes | None, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(key)


def key_fingerprint(public_key: rsa.RSAPublicKey) -> str:
    """SHA-256 of the key's DER SubjectPublicKeyInfo, hex: how recovery keys are named."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


_OAEP = padding.OAEP(
    mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
)


def decrypt_recovery_share(encrypted_share: bytes, private_key: rsa.RSAPrivateKey) -> bytes:
    """What a recovery-key holder does: decrypt their share to submit it to the coordinator.

    Raises:
        VerificationError: ``recovery_share_undecryptable`` when this key cannot decrypt it.
    """
    try:
        return private_key.decrypt(encrypted_share, _OAEP)
    except ValueError as exc:
        raise VerificationError(
            "recovery_share_undecryptable", "the share is not encrypted to this key"
        ) from exc


class _Crypto:
    """The data key and everything derived from it for one store."""

    def __init__(self, store_id: bytes, data_key: bytes) -> None:
        self.store_id = store_id
        self.data_key = _Key(data_key)
        self._aead = AESGCM(data_key)
        self._mac_key = _Key(_hkdf(data_key, salt=store_id, info=_LABEL + b" record-set mac"))

    def _record_aad(self, namespace: str, key: str, version: int) -> bytes:
        return (
            _LABEL + b"/record\x00" + self.store_id + _enc(namespace) + _enc(key)
            + struct.pack(">Q", version)
        )  # fmt: skip

    def seal_record(self, namespace: str, key: str, version: int, value: bytes) -> bytes:
        nonce = _nonces.take()
        return nonce + self._aead.encrypt(nonce, value, self._record_aad(namespace, key, version))

    def open_record(self, namespace: str, key: str, version: int, blob: bytes) -> bytes:
        try:
            return self._aead.decrypt(
                blob[:_NONCE], blob[_NONCE:], self._record_aad(namespace, key, version)
            )
        except (InvalidTag, ValueError) as exc:
            raise VerificationError(
                "record_authentication_failed",
                f"record {namespace!r}/{key!r} failed authentication (tampered or moved)",
            ) from exc

    def record_tag(self, namespace: str, key: str, version: int, blob: bytes) -> bytes:
        message = (
            self.store_id + _enc(namespace) + _enc(key) + struct.pack(">Q", version)
            + hashlib.sha256(blob).digest()
        )  # fmt: skip
        return hmac.digest(self._mac_key.value, message, "sha256")

    def seal_head(self, version: int, digest: bytes) -> bytes:
        nonce = _nonces.take()
        plaintext = _HEAD_MAGIC + struct.pack(">Q", version) + digest
        return nonce + self._aead.encrypt(nonce, plaintext, _LABEL + b"/head\x00" + self.store_id)

    def open_head(self, blob: bytes | None) -> tuple[int, bytes]:
        if blob is None:
            raise VerificationError("state_head_missing", "the state head record is missing")
        try:
            plaintext = self._aead.decrypt(
                blob[:_NONCE], blob[_NONCE:], _LABEL + b"/head\x00" + self.store_id
            )
        except (InvalidTag, ValueError) as exc:
            raise VerificationError(
                "state_head_authentication_failed", "the state head failed authentication"
            ) from exc
        if len(plaintext) != 44 or not plaintext.startswith(_HEAD_MAGIC):
            raise VerificationError("state_head_authentication_failed", "malformed state head")
        (version,) = struct.unpack(">Q", plaintext[4:12])
        return int(version), plaintext[12:]


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a) ^ int.from_bytes(b)).to_bytes(len(a))


def _wrap_key(sealing_key: bytes, store_id: bytes) -> tuple[bytes, str]:
    wrap = _hkdf(sealing_key, salt=store_id, info=_LABEL + b" seal")
    slot = hmac.digest(wrap, _LABEL + b" slot id", "sha256")[:16].hex()
    return wrap, slot


def _seal_data_key(sealing_key: bytes, store_id: bytes, data_key: bytes) -> tuple[str, bytes]:
    wrap, slot = _wrap_key(sealing_key, store_id)
    nonce = os.urandom(_NONCE)
    sealed = nonce + AESGCM(wrap).encrypt(nonce, data_key, _LABEL + b"/seal\x00" + store_id)
    return slot, sealed


def _wrap_for_recovery(recovery_key: bytes, store_id: bytes, data_key: bytes) -> bytes:
    nonce = os.urandom(_NONCE)
    aad = _LABEL + b"/recovery\x00" + store_id
    return nonce + AESGCM(recovery_key).encrypt(nonce, data_key, aad)


def _check_sealing_key(sealing_key: bytes) -> None:
    if not isinstance(sealing_key, bytes | bytearray) or len(sealing_key) < _MIN_SEALING_KEY:
        raise ConfigError(f"the sealing key must be at least {_MIN_SEALING_KEY} bytes")


class Transaction:
    """Buffered writes of one atomic transaction; reads see the transaction's own writes.

    Obtained from :meth:`SealedStateStore.transaction`; valid only inside its ``with`` block.
    """

    def __init__(
        self,
        store: SealedStateStore,
        session: Session,
        version: int,
        *,
        inherited: _GroupWrites | None = None,
        read_cache: dict[tuple[str, str], bytes | None] | None = None,
    ) -> None:
        self._store = store
        self._session = session
        #: The state version before this transaction.
        self.base_version = version
        self._writes: dict[tuple[str, str], bytes | None] = {}
        # The writes of the transactions before this one in the same group commit (not yet
        # in the database): reads see them as if they were committed.
        self._inherited: _GroupWrites = inherited if inherited is not None else {}
        # Records read from the database by this group so far: nothing writes to the database
        # while the group holds the writer lock, so a second read would return the same.
        self._read_cache = read_cache
        self._recovery: tuple[RecoveryInfo, bytes] | None = None
        self._active = True

    @property
    def version(self) -> int:
        """The state version this transaction will commit (``base_version + 1``)."""
        return self.base_version + 1

    def _check(self) -> None:
        if not self._active:
            raise RuntimeError("the transaction is over")

    def get(self, namespace: str, key: str) -> bytes | None:
        """The record's value as of this transaction, or ``None``.

        Raises:
            VerificationError: when the stored record fails authentication.
        """
        self._check()
        _check_name("namespace", namespace)
        _check_name("key", key)
        if (namespace, key) in self._writes:
            return self._writes[(namespace, key)]
        inherited = self._inherited.get((namespace, key))
        if inherited is not None:
            return inherited[1]
        cache = self._read_cache
        if cache is not None and (namespace, key) in cache:
            return cache[(namespace, key)]
        value = self._store._read_record(self._session, namespace, key, self.base_version)
        if cache is not None:
            cache[(namespace, key)] = value
        return value

    def put(self, namespace: str, key: str, value: bytes) -> None:
        """Write a record (replacing any previous value) when the transaction commits.

        Raises:
            ValueError: for an empty or overlong namespace/key, or a non-bytes value.
        """
        self._check()
        _check_name("namespace", namespace)
        _check_name("key", key)
        if not isinstance(value, bytes | bytearray | memoryview):
            raise ValueError("record values are bytes")
        self._writes[(namespace, key)] = bytes(value)

    def delete(self, namespace: str, key: str) -> None:
        """Delete a record (if present) when the transaction commits.

        Raises:
            ValueError: for an empty or overlong namespace/key.
        """
        self._check()
        _check_name("namespace", namespace)
        _check_name("key", key)
        self._writes[(namespace, key)] = None

    def items(
        self, namespace: str, *, start_after: str | None = None, limit: int | None = None
    ) -> list[tuple[str, bytes]]:
        """``(key, value)`` of a namespace in key order, including this transaction's writes.

        Raises:
            VerificationError: when a stored record fails authentication.
        """
        self._check()
        _check_name("namespace", namespace)
        pending = {k: v for (ns, k), (_, v) in self._inherited.items() if ns == namespace}
        pending.update({k: v for (ns, k), v in self._writes.items() if ns == namespace})
        stored = self._store._read_items(
            self._session,
            namespace,
            start_after=start_after,
            # Each pending deletion hides at most one stored row, so this many stored rows
            # always hold the first ``limit`` of the merged view (never read the whole
            # namespace: it may be large, e.g. used nonces).
            limit=None if limit is None else limit + len(pending),
            head_version=self.base_version,
        )
        merged = dict(stored)
        for key, value in pending.items():
            if value is None:
                merged.pop(key, None)
            elif start_after is None or key > start_after:
                merged[key] = value
        result = sorted(merged.items())
        return result if limit is None else result[:limit]

    def keys(
        self, namespace: str, *, start_after: str | None = None, limit: int | None = None
    ) -> list[str]:
        """The keys of :meth:`items`.

        Raises:
            VerificationError: when a stored record fails authentication.
        """
        return [k for k, _ in self.items(namespace, start_after=start_after, limit=limit)]

    def set_recovery_keys(
        self, public_keys: Sequence[rsa.RSAPublicKey], threshold: int
    ) -> list[RecoveryShare]:
        """Split the data key k-of-n to these RSA keys (replacing any earlier split).

        The shares are returned here, once; the store keeps only their fingerprints and the
        threshold. They take effect when the transaction commits.

        Raises:
            ConfigError: for no keys, duplicate keys, keys that are not RSA >= 2048 bits, or a
                threshold outside 1..len(public_keys).
        """
        self._check()
        if not public_keys:
            raise ConfigError("at least one recovery key is needed")
        if len(public_keys) > 255:
            raise ConfigError("at most 255 recovery keys")
        if not 1 <= threshold <= len(public_keys):
            raise ConfigError("the recovery threshold must be between 1 and the number of keys")
        for public_key in public_keys:
            if not isinstance(public_key, rsa.RSAPublicKey) or public_key.key_size < 2048:
                raise ConfigError("recovery keys must be RSA keys of at least 2048 bits")
        fingerprints = tuple(key_fingerprint(k) for k in public_keys)
        if len(set(fingerprints)) != len(fingerprints):
            raise ConfigError("recovery keys must be distinct")
        crypto = self._store._crypto
        # A fresh recovery key per split: replacing the split makes earlier shares useless.
        recovery_key = secrets.token_bytes(_KEY_BYTES)
        wrapped = _wrap_for_recovery(recovery_key, crypto.store_id, crypto.data_key.value)
        parts = shamir.split_secret(recovery_key, threshold=threshold, count=len(public_keys))
        shares = []
        for public_key, fingerprint, part in zip(public_keys, fingerprints, parts, strict=True):
            plaintext = _SHARE_MAGIC + crypto.store_id + bytes([threshold, part.x]) + part.y
            shares.append(
                RecoveryShare(
                    key_fingerprint=fingerprint,
                    encrypted_share=public_key.encrypt(plaintext, _OAEP),
                )
            )
        self._recovery = (RecoveryInfo(threshold=threshold, key_fingerprints=fingerprints), wrapped)
        return shares

    def _commit(self) -> int:
        self._active = False
        if not self._writes and self._recovery is None:
            return self.base_version
        version = self.base_version + 1
        writes = {name: (version, value) for name, value in self._writes.items()}
        _write_changes(self._store._crypto, self._session, version, writes, self._recovery)
        return version


#: ``(namespace, key) -> (state version of the write, value or None for a deletion)``.
_GroupWrites = dict[tuple[str, str], tuple[int, bytes | None]]


def _write_changes(
    crypto: _Crypto,
    session: Session,
    version: int,
    writes: _GroupWrites,
    recovery: tuple[RecoveryInfo, bytes] | None,
) -> None:
    """Write ``writes`` (each sealed under the state version that wrote it) and the head at
    ``version``, updating the record-set digest incrementally."""
    _, digest = crypto.open_head(session.get_meta("head"))
    names = sorted(writes)
    olds = session.get_records(names)
    rows: list[tuple[str, str, int, bytes]] = []
    for namespace, key in names:
        record_version, value = writes[(namespace, key)]
        old = olds.get((namespace, key))
        if old is not None:
            digest = _xor(digest, crypto.record_tag(namespace, key, old[0], old[1]))
        if value is None:
            if old is not None:
                session.delete_record(namespace, key)
            continue
        blob = crypto.seal_record(namespace, key, record_version, value)
        digest = _xor(digest, crypto.record_tag(namespace, key, record_version, blob))
        rows.append((namespace, key, record_version, blob))
    if rows:
        session.put_records(rows)
    if recovery is not None:
        info, wrapped = recovery
        document = {"threshold": info.threshold, "keys": list(info.key_fingerprints)}
        session.put_meta("recovery", json.dumps(document).encode())
        session.put_meta("recovery_wrap", wrapped)
    session.put_meta("head", crypto.seal_head(version, digest))


class _Pending:
    """A caller's transaction body in the group-commit queue (:meth:`SealedStateStore.transact`)."""

    __slots__ = ("body", "error", "event", "prefetch", "promoted", "result")

    def __init__(
        self, body: Callable[[Transaction], object], prefetch: Sequence[tuple[str, str]]
    ) -> None:
        self.body = body
        self.prefetch = prefetch
        self.event = threading.Event()
        self.promoted = False
        self.result: object = None
        self.error: BaseException | None = None


class Snapshot:
    """A consistent read-only view of the store; valid only inside its ``with`` block."""

    def __init__(self, store: SealedStateStore, session: Session, version: int) -> None:
        self._store = store
        self._session = session
        #: The state version this view shows.
        self.version = version
        self._active = True

    def _check(self) -> None:
        if not self._active:
            raise RuntimeError("the snapshot is closed")

    def get(self, namespace: str, key: str) -> bytes | None:
        """The record's value in this view, or ``None``.

        Raises:
            VerificationError: when the record fails authentication.
        """
        self._check()
        _check_name("namespace", namespace)
        _check_name("key", key)
        return self._store._read_record(self._session, namespace, key, self.version)

    def items(
        self, namespace: str, *, start_after: str | None = None, limit: int | None = None
    ) -> list[tuple[str, bytes]]:
        """``(key, value)`` of a namespace in key order.

        Raises:
            VerificationError: when a record fails authentication.
        """
        self._check()
        _check_name("namespace", namespace)
        return self._store._read_items(
            self._session,
            namespace,
            start_after=start_after,
            limit=limit,
            head_version=self.version,
        )

    def keys(
        self, namespace: str, *, start_after: str | None = None, limit: int | None = None
    ) -> list[str]:
        """The keys of :meth:`items`.

        Raises:
            VerificationError: when a record fails authentication.
        """
        return [k for k, _ in self.items(namespace, start_after=start_after, limit=limit)]


class SealedStateStore:
    """Encrypted, authenticated, transactional records ``(namespace, key) -> bytes``.

    Open with :func:`open_store` or :func:`recover_store`. Safe to share between threads (each
    thread gets its own database connection). See the module docstring for the guarantees.
    """

    def __init__(self, backend: Backend, crypto: _Crypto) -> None:
        self._backend = backend
        self._crypto = crypto
        self._group_lock = threading.Lock()
        self._queue: list[_Pending] = []
        self._leading = False
        self._leader = threading.local()

    def __repr__(self) -> str:
        return f"SealedStateStore(store_id={self.store_id}, backend={self._backend.kind})"

    def __enter__(self) -> SealedStateStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def store_id(self) -> str:
        """The store's random identity (hex)."""
        return self._crypto.store_id.hex()

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._backend.kind

    def close(self) -> None:
        """Close the database connections."""
        self._backend.close()

    def _read_record(
        self, session: Session, namespace: str, key: str, head_version: int
    ) -> bytes | None:
        row = session.get_record(namespace, key)
        if row is None:
            return None
        return self._open_row(namespace, key, row, head_version)

    def _open_row(
        self, namespace: str, key: str, row: tuple[int, bytes], head_version: int
    ) -> bytes:
        _check_name("namespace", namespace)
        _check_name("key", key)
        version, blob = row
        if version > head_version:
            raise VerificationError(
                "record_version_ahead_of_state",
                f"record {namespace!r}/{key!r} claims a version the state never reached",
            )
        return self._crypto.open_record(namespace, key, version, blob)

    def _read_items(
        self,
        session: Session,
        namespace: str,
        *,
        start_after: str | None,
        limit: int | None,
        head_version: int,
    ) -> list[tuple[str, bytes]]:
        result = []
        for key, version, blob in session.list_records(
            namespace, start_after=start_after, limit=limit
        ):
            if version > head_version:
                raise VerificationError(
                    "record_version_ahead_of_state",
                    f"record {namespace!r}/{key!r} claims a version the state never reached",
                )
            result.append((key, self._crypto.open_record(namespace, key, version, blob)))
        return result

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        """A consistent read-only view for several reads (the thread's open transaction, if
        any, is used as is).

        Raises:
            VerificationError: when the state head fails authentication.
            StoreUnavailableError: when the database fails.
        """
        with self._backend.read() as session:
            head_version, _ = self._crypto.open_head(session.get_meta("head"))
            view = Snapshot(self, session, head_version)
            try:
                yield view
            finally:
                view._active = False

    @property
    def version(self) -> int:
        """The current state version (number of committed changing transactions).

        Raises:
            VerificationError: when the state head fails authentication.
        """
        with self.snapshot() as view:
            return view.version

    def get(self, namespace: str, key: str) -> bytes | None:
        """The current value of a record, or ``None``.

        Raises:
            VerificationError: when the record or the state head fails authentication.
        """
        with self.snapshot() as view:
            return view.get(namespace, key)

    def items(
        self, namespace: str, *, start_after: str | None = None, limit: int | None = None
    ) -> list[tuple[str, bytes]]:
        """``(key, value)`` of a namespace in key order (paged with ``start_after``/``limit``).

        Raises:
            VerificationError: when a record or the state head fails authentication.
        """
        with self.snapshot() as view:
            return view.items(namespace, start_after=start_after, limit=limit)

    def keys(
        self, namespace: str, *, start_after: str | None = None, limit: int | None = None
    ) -> list[str]:
        """The keys of :meth:`items`.

        Raises:
            VerificationError: when a record or the state head fails authentication.
        """
        return [k for k, _ in self.items(namespace, start_after=start_after, limit=limit)]

    def verify_integrity(self) -> int:
        """Check every record and the record-set digest against the head; return the version.

        Raises:
            VerificationError: ``record_authentication_failed``,
                ``record_version_ahead_of_state``, ``state_head_authentication_failed`` or
                ``state_digest_mismatch`` (a record rolled back, deleted or injected).
        """
        crypto = self._crypto
        with self._backend.read() as session:
            version, expected = crypto.open_head(session.get_meta("head"))
            digest = _ZERO_DIGEST
            count = 0
            for namespace, key, record_version, blob in session.iter_records():
                if record_version > version:
                    raise VerificationError(
                        "record_version_ahead_of_state",
                        f"record {namespace!r}/{key!r} claims a version the state never reached",
                    )
                crypto.open_record(namespace, key, record_version, blob)
                digest = _xor(digest, crypto.record_tag(namespace, key, record_version, blob))
                count += 1
        if not hmac.compare_digest(digest, expected):
            raise VerificationError(
                "state_digest_mismatch",
                "the record set does not match the sealed state head "
                "(a record was rolled back, deleted or injected)",
            )
        _logger.debug("verified %d records at state version %d", count, version)
        return version

    def recovery_info(self) -> RecoveryInfo | None:
        """The recovery configuration, or ``None`` when no recovery keys are set."""
        with self._backend.read() as session:
            return _recovery_info(session)

    # -- writing ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """An atomic write transaction: committed when the block ends normally.

        Raises:
            StoreConflictError: when it lost a race with another writer (retry it, or use
                :meth:`transact`).
            StoreUnavailableError: when the database fails.
            VerificationError: when the state head fails authentication.
            RuntimeError: when transactions are nested in one thread.
        """
        with self._backend.write() as session:
            version, _ = self._crypto.open_head(session.get_meta("head"))
            tx = Transaction(self, session, version)
            try:
                yield tx
            finally:
                tx._active = False
            tx._commit()

    def transact(
        self,
        body: Callable[[Transaction], T],
        *,
        attempts: int = 5,
        backoff: float = 0.05,
        prefetch: Sequence[tuple[str, str]] = (),
    ) -> T:
        """Run ``body`` in a transaction, running it again (up to ``attempts`` times in all)
        when the transaction loses a race. ``body`` must have no effects outside ``tx``.

        *Group commit*: the bodies that threads submit while a group is being written are run
        next, one after the other by one thread (the leader), each in its own
        :class:`Transaction` that sees the writes of those before it, and committed together in
        one database transaction (one ``fsync``). Each body keeps its own atomicity: one that
        raises contributes nothing and its caller gets the exception while the others commit;
        each changing body still adds exactly 1 to the state version. Every caller returns
        only once the group's commit is durable (or with the commit's error).

        ``prefetch`` names ``(namespace, key)`` records ``body`` will read: the group reads
        those of all its bodies in one query before running them (a hint; reads of other
        records work as usual).

        Raises:
            StoreConflictError: when every attempt conflicted.
            StoreUnavailableError: when the database fails.
            RuntimeError: when called from inside a transaction body.
        """
        if getattr(self._leader, "running", False):
            raise RuntimeError("store transactions do not nest")
        pending = _Pending(body, prefetch)
        with self._group_lock:
            self._queue.append(pending)
            lead = not self._leading
            self._leading = True
        if not lead:
            pending.event.wait()
            lead = pending.promoted
        if lead:
            self._lead(attempts, backoff)
        if pending.error is not None:
            raise pending.error
        return cast(T, pending.result)

    def _lead(self, attempts: int, backoff: float) -> None:
        # The leader is the head of the queue (it enqueued itself when nobody led, or was
        # promoted as the head), so the group it takes includes its own body.
        with self._group_lock:
            group, self._queue = self._queue[:_GROUP_MAX], self._queue[_GROUP_MAX:]
        self._leader.running = True
        try:
            self._run_group(group, attempts, backoff)
        finally:
            self._leader.running = False
            with self._group_lock:
                successor = self._queue[0] if self._queue else None
                self._leading = successor is not None
            if successor is not None:
                successor.promoted = True
                successor.event.set()
            for member in group:
                member.event.set()

    def _run_group(self, group: list[_Pending], attempts: int, backoff: float) -> None:
        for attempt in range(1, attempts + 1):
            try:
                outcomes = self._commit_group(group)
            except StoreConflictError as exc:
                if attempt == attempts:
                    for member in group:
                        member.error = exc
                    return
                _logger.info("store transaction conflicted (attempt %d); retrying", attempt)
                time.sleep(backoff * attempt * (1 + secrets.randbelow(100) / 100))
                continue
            except BaseException as exc:
                for member in group:
                    member.error = exc
                return
            for member, (result, error) in zip(group, outcomes, strict=True):
                member.result, member.error = result, error
            return

    def _commit_group(self, group: list[_Pending]) -> list[tuple[object, BaseException | None]]:
        outcomes: list[tuple[object, BaseException | None]] = []
        with self._backend.write() as session:
            base, _ = self._crypto.open_head(session.get_meta("head"))
            version = base
            merged: _GroupWrites = {}
            cache: dict[tuple[str, str], bytes | None] = {}
            wanted = sorted({name for member in group for name in member.prefetch})
            if wanted:
                found = session.get_records(wanted)
                for namespace, key in wanted:
                    row = found.get((namespace, key))
                    try:
                        cache[(namespace, key)] = (
                            None if row is None else self._open_row(namespace, key, row, base)
                        )
                    except (VerificationError, ValueError):
                        continue  # left to the body that reads it (and fails alone)
            recovery: tuple[RecoveryInfo, bytes] | None = None
            for member in group:
                tx = Transaction(self, session, version, inherited=merged, read_cache=cache)
                try:
                    result = member.body(tx)
                except StoreConflictError:
                    raise  # the whole group runs again
                except Exception as exc:
                    outcomes.append((None, exc))  # that body's caller gets it; nothing written
                    continue
                finally:
                    tx._active = False
                outcomes.append((result, None))
                if tx._writes or tx._recovery is not None:
                    version += 1
                    merged.update({name: (version, v) for name, v in tx._writes.items()})
                    recovery = tx._recovery if tx._recovery is not None else recovery
            if version != base:
                _write_changes(self._crypto, session, version, merged, recovery)
        if len(group) > 1:
            _logger.debug("group commit of %d transactions", len(group))
        return outcomes

    def set_recovery_keys(
        self, public_keys: Sequence[rsa.RSAPublicKey], threshold: int
    ) -> list[RecoveryShare]:
        """:meth:`Transaction.set_recovery_keys` in a transaction of its own.

        Raises:
            ConfigError: for bad keys or threshold (see the transaction method).
        """
        with self.transaction() as tx:
            return tx.set_recovery_keys(public_keys, threshold)


def _recovery_info(session: Session) -> RecoveryInfo | None:
    raw = session.get_meta("recovery")
    if raw is None:
        return None
    try:
        document = json.loads(raw)
        threshold = int(document["threshold"])
        keys = tuple(str(k) for k in document["keys"])
    except (ValueError, KeyError, TypeError) as exc:
        raise VerificationError("store_metadata_malformed", "bad recovery metadata") from exc
    return RecoveryInfo(threshold=threshold, key_fingerprints=keys)


def connect_backend(url: str) -> Backend:
    """The backend for a state URL.

    ``sqlite://`` followed by a file path (``sqlite:///var/lib/sealpod/state.db`` is the
    absolute path ``/var/lib/sealpod/state.db``; ``sqlite://state.db`` is relative to the
    working directory); ``postgresql://...`` or ``postgres://...`` is handed to psycopg as is.

    Raises:
        ConfigError: for an unsupported URL.
        StoreUnavailableError: when the database cannot be opened.
    """
    if url.startswith("sqlite://"):
        path = url[len("sqlite://") :]
        if not path or path == "/" or "?" in path:
            raise ConfigError("state URL: use sqlite:///ABSOLUTE/PATH")
        from sealpod.store._sqlite import SQLiteBackend

        return SQLiteBackend(Path(path))
    if url.startswith(("postgresql://", "postgres://")):
        from sealpod.store._postgres import PostgresBackend

        return PostgresBackend(url)
    raise ConfigError("state URL must start with sqlite:// or postgresql://")


def _read_store_id(session: Session) -> bytes | None:
    raw = session.get_meta("store")
    if raw is None:
        return None
    try:
        document = json.loads(raw)
        if document.get("format") != FORMAT:
            raise ValueError("format")
        store_id = bytes.fromhex(document["store_id"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise VerificationError(
            "store_metadata_malformed", "not a sealpod sealed store (or another version)"
        ) from exc
    if len(store_id) != _STORE_ID_BYTES:
        raise VerificationError("store_metadata_malformed", "bad store id")
    return store_id


def _unseal(session: Session, store_id: bytes, sealing_key: bytes | None) -> _Crypto:
    info = _recovery_info(session)
    threshold = info.threshold if info else 0
    recovery_keys = info.key_fingerprints if info else ()
    if sealing_key is None:
        raise StoreSealedError(
            "no sealing key is available", threshold=threshold, recovery_keys=recovery_keys
        )
    wrap, slot = _wrap_key(bytes(sealing_key), store_id)
    sealed = session.get_meta(f"seal:{slot}")
    if sealed is None:
        raise StoreSealedError(
            "the state is sealed to another sealing key; recovery shares are needed",
            threshold=threshold,
            recovery_keys=recovery_keys,
        )
    try:
        data_key = AESGCM(wrap).decrypt(
            sealed[:_NONCE], sealed[_NONCE:], _LABEL + b"/seal\x00" + store_id
        )
    except (InvalidTag, ValueError) as exc:
        raise VerificationError(
            "sealed_key_authentication_failed", "the sealed data key failed authentication"
        ) from exc
    crypto = _Crypto(store_id, data_key)
    crypto.open_head(session.get_meta("head"))
    return crypto


def open_store(
    url: str, sealing_key: bytes | None, *, create: bool = True, verify: bool = True
) -> SealedStateStore:
    """Open (or create) the sealed store at ``url`` and unseal it with ``sealing_key``.

    A new store gets a fresh random data key sealed under ``sealing_key``, state version 0 and
    no recovery keys. ``verify`` runs :meth:`SealedStateStore.verify_integrity` (O(records)).

    Raises:
        StoreSealedError: when the store exists but ``sealing_key`` is ``None`` or is not one it
            is sealed to (go to recovery).
        VerificationError: when the sealed key, head or (with ``verify``) records were tampered.
        ConfigError: for a bad URL, a short sealing key, or no store with ``create=False``.
        StoreUnavailableError: when the database cannot be used.
    """
    if sealing_key is not None:
        _check_sealing_key(sealing_key)
    backend = connect_backend(url)
    try:
        store = _open(backend, sealing_key, create=create)
        if verify:
            store.verify_integrity()
    except BaseException:
        backend.close()
        raise
    return store


def _open(backend: Backend, sealing_key: bytes | None, *, create: bool) -> SealedStateStore:
    with backend.read() as session:
        store_id = _read_store_id(session)
        if store_id is not None:
            return SealedStateStore(backend, _unseal(session, store_id, sealing_key))
    if not create:
        raise ConfigError("there is no sealed store at this URL")
    if sealing_key is None:
        raise ConfigError("a sealing key is needed to create a sealed store")
    with backend.write() as session:
        store_id = _read_store_id(session)
        if store_id is not None:  # another process created it meanwhile
            return SealedStateStore(backend, _unseal(session, store_id, sealing_key))
        store_id = secrets.token_bytes(_STORE_ID_BYTES)
        crypto = _Crypto(store_id, secrets.token_bytes(_KEY_BYTES))
        document = {"format": FORMAT, "store_id": store_id.hex()}
        session.put_meta("store", json.dumps(document).encode())
        slot, sealed = _seal_data_key(bytes(sealing_key), store_id, crypto.data_key.value)
        session.put_meta(f"seal:{slot}", sealed)
        session.put_meta("head", crypto.seal_head(0, _ZERO_DIGEST))
    _logger.info("created sealed store %s", store_id.hex())
    return SealedStateStore(backend, crypto)


def read_recovery_info(url: str) -> RecoveryInfo | None:
    """The recovery configuration of the store at ``url`` (no key needed).

    Raises:
        ConfigError: for a bad URL or no store there.
        VerificationError: when the store metadata is malformed.
        StoreUnavailableError: when the database cannot be used.
    """
    backend = connect_backend(url)
    try:
        with backend.read() as session:
            if _read_store_id(session) is None:
                raise ConfigError("there is no sealed store at this URL")
            return _recovery_info(session)
    finally:
        backend.close()


def _parse_share(raw: bytes, store_id: bytes) -> tuple[int, shamir.Share]:
    expected = len(_SHARE_MAGIC) + _STORE_ID_BYTES + 2 + _KEY_BYTES
    if len(raw) != expected or not raw.startswith(_SHARE_MAGIC):
        raise VerificationError("recovery_share_malformed", "not a sealpod recovery share")
    at = len(_SHARE_MAGIC)
    if not hmac.compare_digest(raw[at : at + _STORE_ID_BYTES], store_id):
        raise VerificationError("recovery_share_foreign", "the share belongs to another store")
    at += _STORE_ID_BYTES
    threshold, x = raw[at], raw[at + 1]
    if threshold < 1 or x < 1:
        raise VerificationError("recovery_share_malformed", "bad share header")
    return threshold, shamir.Share(x=x, y=raw[at + 2 :])


def recover_store(
    url: str, sealing_key: bytes, shares: Sequence[bytes], *, verify: bool = True
) -> SealedStateStore:
    """Rebuild the data key from decrypted recovery shares and seal it under ``sealing_key``.

    Raises:
        VerificationError: ``recovery_share_malformed``, ``recovery_share_foreign`` (another
            store), ``recovery_shares_inconsistent`` (different thresholds or duplicates),
            ``not_enough_recovery_shares``, ``recovery_shares_invalid`` (the rebuilt key does not
            open the state), or a tampering reason from the integrity check.
        ConfigError: for a bad URL, a short sealing key, or no store there.
        StoreUnavailableError: when the database cannot be used.
    """
    _check_sealing_key(sealing_key)
    backend = connect_backend(url)
    try:
        with backend.write() as session:
            store_id = _read_store_id(session)
            if store_id is None:
                raise ConfigError("there is no sealed store at this URL")
            parsed = [_parse_share(bytes(raw), store_id) for raw in shares]
            thresholds = {threshold for threshold, _ in parsed}
            if len(thresholds) > 1:
                raise VerificationError(
                    "recovery_shares_inconsistent", "the shares name different thresholds"
                )
            points = [share for _, share in parsed]
            if len({share.x for share in points}) != len(points):
                raise VerificationError("recovery_shares_inconsistent", "duplicate shares")
            threshold = thresholds.pop() if thresholds else 1
            if not points or len(points) < threshold:
                raise VerificationError(
                    "not_enough_recovery_shares",
                    f"{len(points)} share(s) given, {threshold} needed",
                )
            wrapped = session.get_meta("recovery_wrap")
            if wrapped is None:
                raise VerificationError(
                    "recovery_not_configured", "this store has no recovery keys"
                )
            recovery_key = shamir.combine_shares(points)
            try:
                data_key = AESGCM(recovery_key).decrypt(
                    wrapped[:_NONCE], wrapped[_NONCE:], _LABEL + b"/recovery\x00" + store_id
                )
            except (InvalidTag, ValueError) as exc:
                raise VerificationError(
                    "recovery_shares_invalid",
                    "the shares do not rebuild this store's current recovery key",
                ) from exc
            crypto = _Crypto(store_id, data_key)
            crypto.open_head(session.get_meta("head"))
            slot, sealed = _seal_data_key(bytes(sealing_key), store_id, crypto.data_key.value)
            session.put_meta(f"seal:{slot}", sealed)
        store = SealedStateStore(backend, crypto)
        _logger.warning("sealed store %s recovered and re-sealed", store_id.hex())
        if verify:
            store.verify_integrity()
    except BaseException:
        backend.close()
        raise
    return store
