"""The coordinator's PKI: root and mesh CAs, service leaves, certificate secrets.

See :mod:`sealpod.pki.ca` for the hierarchy and its invariants and
:mod:`sealpod.pki.certificates` for the simulated mark and chain verification.
"""

from __future__ import annotations

from sealpod.pki.ca import (
    BACKDATE,
    DEFAULT_LEAF_VALIDITY,
    DEFAULT_MESH_VALIDITY,
    DEFAULT_ROOT_VALIDITY,
    CoordinatorCA,
    service_uri,
)
from sealpod.pki.certificates import (
    KEY_USAGE_NAMES,
    SEALPOD_OID_ARC,
    SIMULATED_EXTENSION_OID,
    SIMULATED_EXTENSION_VALUE,
    SIMULATED_OU,
    CertifiedKey,
    KeyType,
    PrivateKey,
    PublicKey,
    certificates_to_pem,
    generate_private_key,
    is_simulated,
    public_key_der,
    verify_chain,
)

__all__ = [
    "BACKDATE",
    "DEFAULT_LEAF_VALIDITY",
    "DEFAULT_MESH_VALIDITY",
    "DEFAULT_ROOT_VALIDITY",
    "KEY_USAGE_NAMES",
    "SEALPOD_OID_ARC",
    "SIMULATED_EXTENSION_OID",
    "SIMULATED_EXTENSION_VALUE",
    "SIMULATED_OU",
    "CertifiedKey",
    "CoordinatorCA",
    "KeyType",
    "PrivateKey",
    "PublicKey",
    "certificates_to_pem",
    "generate_private_key",
    "is_simulated",
    "public_key_der",
    "service_uri",
    "verify_chain",
]
