"""Confidential packages: an existing image plus its measured, signed enclave policy.

* :func:`build_package` turns ``oci:``/``docker-archive:``/``dir:`` images into packages;
* :class:`EnclaveManifest` is ``/.sealpod/enclave.json``; :func:`measure_manifest` its
  MRENCLAVE (the layout is documented in :mod:`sealpod.package.measure`);
* :func:`open_package` + :func:`verify_package` read and check a package (the runtime's first
  step); :func:`package_rootfs_layers` gives the runtime the layers and the policy (an
  :class:`EnclaveView`, read without pydantic);
* :func:`render_gramine_manifest` writes the same policy for Gramine on SGX hardware.

Names are imported lazily (PEP 562): ``sealpod run`` needs only :mod:`sealpod.package.package`
and must not pay for the builder, the hasher or the pydantic model at start-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sealpod._internal.lazy import lazy_getattr

if TYPE_CHECKING:
    from sealpod.package.build import (
        build_manifest,
        build_package,
        collect_trusted_files,
        parse_volume,
    )
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
    from sealpod.package.view import EnclaveView, RunUser

_WHERE = {
    "build_manifest": "build",
    "build_package": "build",
    "collect_trusted_files": "build",
    "parse_volume": "build",
    "render_gramine_manifest": "gramine",
    "volume_key_name": "gramine",
    "ENCLAVE_SCHEMA_VERSION": "manifest",
    "EnclaveManifest": "manifest",
    "EnclaveUser": "manifest",
    "TrustedFile": "manifest",
    "canonical_json": "manifest",
    "ENCLAVE_SIZE": "measure",
    "SEALPOD_RUNTIME_ID": "measure",
    "measure_manifest": "measure",
    "measure_manifest_bytes": "measure",
    "ANNOTATION_MRENCLAVE": "package",
    "ANNOTATION_MRSIGNER": "package",
    "ENCLAVE_JSON": "package",
    "ENCLAVE_SIG": "package",
    "GRAMINE_MANIFEST": "package",
    "Package": "package",
    "PackageInfo": "package",
    "PackageRootfs": "package",
    "open_package": "package",
    "package_info": "package",
    "package_rootfs_layers": "package",
    "verify_package": "package",
    "EnclaveView": "view",
    "RunUser": "view",
}

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
    "EnclaveView",
    "Package",
    "PackageInfo",
    "PackageRootfs",
    "RunUser",
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

__getattr__ = lazy_getattr(__name__, _WHERE)
