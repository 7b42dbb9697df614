"""Client side of the coordinator: attest it, pin its root, activate a service.

* :func:`verify_coordinator` fetches ``/api/v1/quote`` with a fresh nonce over TLS *without*
  trusting anything yet, verifies the quote (chain, collateral, identity, simulation policy) and
  that its report data is ``SHA-256(root_cert_der ‖ nonce) ‖ 0³²`` for the root it returned, and
  only then returns that root. The first connection needs no trust: an impostor cannot make a
  quote binding its own root, and every later call (:func:`pinned_client`) verifies the server's
  TLS certificate against the pinned root only.
* :func:`activate` makes a key pair and CSR locally (the private key never leaves), gets a
  nonce, quotes ``SHA-256("sealpod-activation-v1" ‖ SPKI ‖ nonce) ‖ 0³²`` with the TEE backend,
  and checks what it receives: the certificate is for its key and chains to the pinned root.

``sealpod run --coordinator`` imports this module on every start, so it loads only the
activation client (:mod:`sealpod.coordinator._activate_client`: standard-library HTTPS, no
httpx, pydantic or attestation verifier), which also holds the activated instance's volume-tag
calls (:func:`get_volume_tag`, :func:`set_volume_tag`: asked before the application starts).
Every other call lives in :mod:`sealpod.coordinator._client_calls` (httpx) and is imported on
first use (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sealpod.coordinator._activate_client import (
    ActivationResult,
    PinnedVolumeTag,
    VolumeKey,
    activate,
    get_volume_tag,
    pinned_ssl_context,
    set_volume_tag,
)

if TYPE_CHECKING:
    from sealpod.coordinator._client_calls import (
        ManifestUpdate,
        SignedManifest,
        UserSecret,
        VerifiedCoordinator,
        approve_update,
        cancel_update,
        coordinator_certificate_chain,
        coordinator_status,
        fetch_audit,
        fetch_manifest,
        get_secret,
        pinned_client,
        propose_update,
        raise_package_svn,
        reset_volume,
        response_json,
        set_secret,
        submit_recovery_share,
        verify_coordinator,
    )

__all__ = [
    "ActivationResult",
    "ManifestUpdate",
    "PinnedVolumeTag",
    "SignedManifest",
    "UserSecret",
    "VerifiedCoordinator",
    "VolumeKey",
    "activate",
    "approve_update",
    "cancel_update",
    "coordinator_certificate_chain",
    "coordinator_status",
    "fetch_audit",
    "fetch_manifest",
    "get_secret",
    "get_volume_tag",
    "pinned_client",
    "pinned_ssl_context",
    "propose_update",
    "raise_package_svn",
    "reset_volume",
    "response_json",
    "set_secret",
    "set_volume_tag",
    "submit_recovery_share",
    "verify_coordinator",
]

_CALLS = frozenset(__all__) - {
    "ActivationResult",
    "PinnedVolumeTag",
    "VolumeKey",
    "activate",
    "get_volume_tag",
    "pinned_ssl_context",
    "set_volume_tag",
}


def __getattr__(name: str) -> Any:
    if name not in _CALLS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module("sealpod.coordinator._client_calls"), name)
