"""The coordinator: sealpod's attested control plane (issue 3; DESIGN.md).

Server side: :func:`create_app` (FastAPI) over a :class:`Coordinator` (state machine, PKI,
manifest, activation, governance, user secrets, volume pins, recovery, audit, metrics), served
over HTTPS by :class:`CoordinatorServer` with a certificate of its own root.

Client side (every call after the first talks TLS pinned to the attested root):
:func:`verify_coordinator` (attest, return the root to pin), :func:`activate` (a service
instance), :func:`fetch_manifest`, :func:`set_secret` / :func:`get_secret`,
:func:`propose_update` / :func:`approve_update` / :func:`cancel_update`,
:func:`raise_package_svn`, :func:`get_volume_tag` / :func:`set_volume_tag` /
:func:`reset_volume`, :func:`submit_recovery_share`, :func:`fetch_audit` (checks the chain).

HTTP API (JSON; errors ``{"error": {"code", "message", "kind"}}``; OpenAPI at
``/openapi.json``): ``GET /api/v1/status``, ``GET /api/v1/quote?nonce=``,
``POST|GET /api/v1/manifest``, ``POST /api/v1/activation/nonce``, ``POST /api/v1/activation``,
``PUT|GET /api/v1/secrets/{name}`` (user-signed), ``POST|GET /api/v1/manifest/updates``,
``POST /api/v1/manifest/updates/{id}/approve|cancel``, ``POST /api/v1/packages/{name}/min-isv-svn``
(user-signed), ``GET|PUT /api/v1/volumes/{name}/tag`` (service-signed),
``POST /api/v1/volumes/{name}/reset`` (user-signed), ``POST /api/v1/recover``,
``GET /api/v1/audit``, ``GET /metrics``, ``GET /healthz``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sealpod._internal.lazy import lazy_getattr

if TYPE_CHECKING:
    from sealpod.coordinator.app import create_app
    from sealpod.coordinator.binding import activation_report_data, coordinator_report_data
    from sealpod.coordinator.client import (
        ActivationResult,
        ManifestUpdate,
        PinnedVolumeTag,
        SignedManifest,
        UserSecret,
        VerifiedCoordinator,
        VolumeKey,
        activate,
        approve_update,
        cancel_update,
        fetch_audit,
        fetch_manifest,
        get_secret,
        get_volume_tag,
        pinned_client,
        propose_update,
        raise_package_svn,
        reset_volume,
        set_secret,
        set_volume_tag,
        submit_recovery_share,
        verify_coordinator,
    )
    from sealpod.coordinator.errors import RequestRefusedError
    from sealpod.coordinator.identity import coordinator_identity, measure_distribution
    from sealpod.coordinator.server import CoordinatorServer
    from sealpod.coordinator.service import (
        ActivationOutcome,
        Coordinator,
        CoordinatorState,
        package_policy,
    )
    from sealpod.coordinator.settings import CoordinatorSettings

_WHERE = {
    "ActivationOutcome": "service",
    "ActivationResult": "client",
    "Coordinator": "service",
    "CoordinatorServer": "server",
    "CoordinatorSettings": "settings",
    "CoordinatorState": "service",
    "ManifestUpdate": "client",
    "PinnedVolumeTag": "client",
    "RequestRefusedError": "errors",
    "SignedManifest": "client",
    "UserSecret": "client",
    "VerifiedCoordinator": "client",
    "VolumeKey": "client",
    "activate": "client",
    "activation_report_data": "binding",
    "approve_update": "client",
    "cancel_update": "client",
    "coordinator_identity": "identity",
    "coordinator_report_data": "binding",
    "create_app": "app",
    "fetch_audit": "client",
    "fetch_manifest": "client",
    "get_secret": "client",
    "get_volume_tag": "client",
    "measure_distribution": "identity",
    "package_policy": "service",
    "pinned_client": "client",
    "propose_update": "client",
    "raise_package_svn": "client",
    "reset_volume": "client",
    "set_secret": "client",
    "set_volume_tag": "client",
    "submit_recovery_share": "client",
    "verify_coordinator": "client",
}

__all__ = [
    "ActivationOutcome",
    "ActivationResult",
    "Coordinator",
    "CoordinatorServer",
    "CoordinatorSettings",
    "CoordinatorState",
    "ManifestUpdate",
    "PinnedVolumeTag",
    "RequestRefusedError",
    "SignedManifest",
    "UserSecret",
    "VerifiedCoordinator",
    "VolumeKey",
    "activate",
    "activation_report_data",
    "approve_update",
    "cancel_update",
    "coordinator_identity",
    "coordinator_report_data",
    "create_app",
    "fetch_audit",
    "fetch_manifest",
    "get_secret",
    "get_volume_tag",
    "measure_distribution",
    "package_policy",
    "pinned_client",
    "propose_update",
    "raise_package_svn",
    "reset_volume",
    "set_secret",
    "set_volume_tag",
    "submit_recovery_share",
    "verify_coordinator",
]

__getattr__ = lazy_getattr(__name__, _WHERE)
