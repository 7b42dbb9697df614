"""Sealed coordinator state: encrypted transactional records, sealing, recovery, audit log.

See :mod:`sealpod.store.sealed` for the record layout and the guarantees,
:mod:`sealpod.store.shamir` for the secret sharing and :mod:`sealpod.store.audit` for the
hash-chained audit log. Backends: SQLite (``sqlite:///PATH``) and PostgreSQL
(``postgresql://...``).
"""

from __future__ import annotations

from sealpod.store._backend import StoreConflictError, StoreUnavailableError
from sealpod.store.audit import (
    AUDIT_HEAD_NAMESPACE,
    AUDIT_NAMESPACE,
    GENESIS_HASH,
    AuditEntry,
    AuditHead,
    AuditLog,
    verify_audit_entries,
)
from sealpod.store.sealed import (
    RecoveryInfo,
    RecoveryShare,
    SealedStateStore,
    Snapshot,
    StoreSealedError,
    Transaction,
    decrypt_recovery_share,
    key_fingerprint,
    open_store,
    read_recovery_info,
    recover_store,
)

__all__ = [
    "AUDIT_HEAD_NAMESPACE",
    "AUDIT_NAMESPACE",
    "GENESIS_HASH",
    "AuditEntry",
    "AuditHead",
    "AuditLog",
    "RecoveryInfo",
    "RecoveryShare",
    "SealedStateStore",
    "Snapshot",
    "StoreConflictError",
    "StoreSealedError",
    "StoreUnavailableError",
    "Transaction",
    "decrypt_recovery_share",
    "key_fingerprint",
    "open_store",
    "read_recovery_info",
    "recover_store",
    "verify_audit_entries",
]
