"""Confidential packages: an existing image plus its measured, signed enclave policy.

* :func:`build_package` turns ``oci:``/``docker-archive:``/``dir:`` images into packages;
* :class:`EnclaveManifest` is ``/.sealpod/enclave.json``; :func:`measure_manifest` its
  MRENCLAVE (the layout is documented in :mod:`sealpod.package.measure`);
* :func:`open_package` + :func:`verify_package` read and check a package (the runtime's first
  step); :func:`package_rootfs_layers` gives the runtime the layers and the policy;
* :func:`render_gramine_manifest` writes the same policy for Gramine on SGX hardware.
"""

from sealpod.package.build import build_manifest, build_package, collect_trusted_files, parse_volume
from sealpod.package.gramine import render_gramine_manifest, volume_key_name
from sealpod.package.manifest import (
    ENCLAVE_SCHEMA_VERSION,
    EnclaveManifest,
    EnclaveUser,
    TrustedFile,
    canonical_json,
)
from sealpod.package.measure import (
    ENCLAVE_SIZE,
    SEALPOD_RUNTIME_ID,
    measure_manifest,
    measure_manifest_bytes,
)
from sealpod.package.package import (
    ANNOTATION_MRENCLAVE,
    ANNOTATION_MRSIGNER,
    ENCLAVE_JSON,
    ENCLAVE_SIG,
    GRAMINE_MANIFEST,
    Package,
    PackageInfo,
    PackageRootfs,
    open_package,
    package_info,
    package_rootfs_layers,
    verify_package,
)

__all__ = [
    "ANNOTATION_MRENCLAVE",
    "ANNOTATION_MRSIGNER",
    "ENCLAVE_JSON",
    "ENCLAVE_SCHEMA_VERSION",
    "ENCLAVE_SIG",
    "ENCLAVE_SIZE",
    "GRAMINE_MANIFEST",
    "SEALPOD_RUNTIME_ID",
    "EnclaveManifest",
    "EnclaveUser",
    "Package",
    "PackageInfo",
    "PackageRootfs",
    "TrustedFile",
    "build_manifest",
    "build_package",
    "canonical_json",
    "collect_trusted_files",
    "measure_manifest",
    "measure_manifest_bytes",
    "open_package",
    "package_info",
    "package_rootfs_layers",
    "parse_volume",
    "render_gramine_manifest",
    "verify_package",
    "volume_key_name",
]
