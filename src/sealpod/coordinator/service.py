"""The coordinator service: state machine, its own identity and PKI, manifest, activation.

:class:`Coordinator` is assembled from one base and feature mixins, one module each:
``_base`` (state, storage, PKI, manifest, users, audit), ``_activation``, ``_governance``
(updates, SVN raises), ``_recovery``, ``_user_secrets`` and ``_volumes`` (rollback pins).

States (issue 3 §2)::

    accepting-manifest ──POST /manifest──▶ accepting-services
    recovery: the sealed state exists but this TEE's sealing key does not open it

Invariants:

* Everything persistent lives in the sealed store (:mod:`sealpod.store`): the coordinator CA,
  the manifest (canonical JSON) and its signature, generated secrets, instance records and the
  hash-chained audit log. Every change is one store transaction together with its audit entry.
* An activation releases anything only after, in this order: the service exists, the nonce is
  fresh and now consumed, the CSR parses, the quote verifies under a pinned root with the
  package's policy from the manifest (identity, debug, TCB, simulation) and its report data is
  ``SHA-256("sealpod-activation-v1" ‖ SPKI(csr) ‖ nonce) ‖ 0³²``, and ``max_instances`` leaves
  room. Every refusal (activation or manifest) is appended to the audit log with its reason.
* The service's private key never reaches the coordinator: templates that use
  ``sealpod.private_key`` are rendered with a random placeholder, which the client replaces with
  its key (:attr:`ActivationOutcome.private_key_placeholder`).
"""

from __future__ import annotations

from sealpod.coordinator._activation import ActivationMixin
from sealpod.coordinator._base import (
    ActivationOutcome,
    ActivationRequestData,
    CoordinatorEvidence,
    CoordinatorState,
    ManifestAccepted,
    ManifestInfo,
    SecretRelease,
    UpdateStatus,
    UserSecretUpload,
    VolumeGrant,
    encode_files,
    package_policy,
)
from sealpod.coordinator._governance import GovernanceMixin
from sealpod.coordinator._recovery import RecoveryMixin
from sealpod.coordinator._user_secrets import UserSecretsMixin
from sealpod.coordinator._volumes import VolumesMixin, VolumeTag

__all__ = [
    "ActivationOutcome",
    "ActivationRequestData",
    "Coordinator",
    "CoordinatorEvidence",
    "CoordinatorState",
    "ManifestAccepted",
    "ManifestInfo",
    "SecretRelease",
    "UpdateStatus",
    "UserSecretUpload",
    "VolumeGrant",
    "VolumeTag",
    "encode_files",
    "package_policy",
]


class Coordinator(ActivationMixin, GovernanceMixin, RecoveryMixin, UserSecretsMixin, VolumesMixin):
    """One coordinator: its TEE, its sealed state and what it serves. Thread-safe.

    Build with :meth:`open`.
    """
