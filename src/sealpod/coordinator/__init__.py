"""The coordinator: sealpod's attested control plane (issue 3; DESIGN.md).

Server side: :func:`create_app` (FastAPI) over a :class:`Coordinator` (state machine, PKI,
manifest, activation, audit), served over HTTPS by :class:`CoordinatorServer`. Client side:
:func:`verify_coordinator` (attest and pin the root) and :func:`activate`.
"""

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
