"""MRENCLAVE of a package: the SGX measurement of a fixed, documented enclave layout.

The layout (simulation identity, version 1), measured with
:class:`sealpod.sgx.EnclaveMeasurement` exactly as the CPU measures ECREATE/EADD/EEXTEND:

1. ECREATE with SECS.SIZE = :data:`ENCLAVE_SIZE` (1 GiB) and SSAFRAMESIZE = 1;
2. the canonical enclave.json bytes from enclave offset 0, one EADD (SECINFO R, PT_REG) and
   16 EEXTENDs per page, the last page zero-padded;
3. one page right after the manifest (SECINFO R|X, PT_REG) holding the runtime identity:
   :data:`SEALPOD_RUNTIME_ID` in UTF-8, NUL-padded to 64 bytes, then the manifest's length in
   bytes as a little-endian u64 (so trailing zero padding cannot be confused with content),
   then zeros.

Any change of any byte of the canonical manifest (a trusted file's hash, argv, env, a mount,
ISVPRODID/ISVSVN/DEBUG) or of the runtime identity changes MRENCLAVE.

On SGX hardware the CPU reports the measurement of the enclave Gramine builds from the
package's Gramine manifest (``/.sealpod/gramine/entrypoint.manifest``, signed by
``gramine-sgx-sign``), not this value: this is the identity of the package in simulation mode,
where the runtime enforces the same policy with its shield.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Final

from sealpod.errors import ManifestError
from sealpod.sgx import PAGE_SIZE, EnclaveMeasurement, SecinfoFlags

#: The runtime identity measured into every package's MRENCLAVE.
SEALPOD_RUNTIME_ID: Final = "sealpod-runtime-v1"
#: SECS.SIZE of the simulated enclave.
ENCLAVE_SIZE: Final = 1 << 30
#: SECS.SSAFRAMESIZE of the simulated enclave.
SSA_FRAME_SIZE: Final = 1
#: The largest canonical manifest that fits (the runtime page must fit after it).
MAX_MANIFEST_BYTES: Final = ENCLAVE_SIZE - PAGE_SIZE

if TYPE_CHECKING:
    from sealpod.package.manifest import EnclaveManifest

_RUNTIME_PAGE = struct.Struct("<64sQ")
_MANIFEST_FLAGS: Final = SecinfoFlags.R | SecinfoFlags.PT_REG
_RUNTIME_FLAGS: Final = SecinfoFlags.R | SecinfoFlags.X | SecinfoFlags.PT_REG


def runtime_page(manifest_length: int, runtime_id: str = SEALPOD_RUNTIME_ID) -> bytes:
    """The page holding the runtime identity and the manifest length."""
    raw_id = runtime_id.encode("utf-8")
    if len(raw_id) > 64:
        raise ValueError("runtime identity longer than 64 bytes")
    head = _RUNTIME_PAGE.pack(raw_id, manifest_length)
    return head + bytes(PAGE_SIZE - len(head))


def measure_manifest_bytes(data: bytes, *, runtime_id: str = SEALPOD_RUNTIME_ID) -> bytes:
    """MRENCLAVE of the layout holding ``data`` (canonical enclave.json bytes).

    Raises:
        ManifestError: ``data`` is empty or does not fit in the enclave.
    """
    if not data:
        raise ManifestError("an empty enclave manifest cannot be measured")
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"enclave manifest of {len(data)} bytes does not fit the enclave")
    measurement = EnclaveMeasurement()
    measurement.ecreate(ENCLAVE_SIZE, SSA_FRAME_SIZE)
    pages = measurement.add_pages(0, data, _MANIFEST_FLAGS)
    measurement.add_page(pages * PAGE_SIZE, runtime_page(len(data), runtime_id), _RUNTIME_FLAGS)
    return measurement.digest()


def measure_manifest(manifest: EnclaveManifest) -> bytes:
    """MRENCLAVE of a package whose enclave.json is ``manifest``.

    Raises:
        ManifestError: the manifest does not fit in the enclave.
    """
    return measure_manifest_bytes(manifest.canonical_bytes())
