"""TEE backends: the simulated SGX platform and Gramine's ``/dev/attestation``.

Names are imported lazily (PEP 562), so importing the package costs nothing until a backend is
used (``sealpod run`` without a coordinator never touches one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sealpod._internal.lazy import lazy_getattr

if TYPE_CHECKING:
    from sealpod.tee.backend import (
        EnclaveIdentity,
        GramineBackend,
        SimulationBackend,
        TEEBackend,
        get_backend,
    )
    from sealpod.tee.simulation import (
        DEFAULT_COLLATERAL_VALIDITY,
        SEALING_KEY_SIZE,
        SIMULATED_ROOT_CA_CN,
        CollateralWindow,
        SealingPolicy,
        SimulatedPlatform,
        default_platform_dir,
    )

_WHERE = {
    "EnclaveIdentity": "backend",
    "GramineBackend": "backend",
    "SimulationBackend": "backend",
    "TEEBackend": "backend",
    "get_backend": "backend",
    "DEFAULT_COLLATERAL_VALIDITY": "simulation",
    "SEALING_KEY_SIZE": "simulation",
    "SIMULATED_ROOT_CA_CN": "simulation",
    "CollateralWindow": "simulation",
    "SealingPolicy": "simulation",
    "SimulatedPlatform": "simulation",
    "default_platform_dir": "simulation",
}

__all__ = [
    "DEFAULT_COLLATERAL_VALIDITY",
    "SEALING_KEY_SIZE",
    "SIMULATED_ROOT_CA_CN",
    "CollateralWindow",
    "EnclaveIdentity",
    "GramineBackend",
    "SealingPolicy",
    "SimulatedPlatform",
    "SimulationBackend",
    "TEEBackend",
    "default_platform_dir",
    "get_backend",
]

__getattr__ = lazy_getattr(__name__, _WHERE)
