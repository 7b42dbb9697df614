"""TEE backends: the simulated SGX platform and Gramine's ``/dev/attestation``."""

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
