"""MRENCLAVE of a package: the SGX measurement of a fixed, documented enclave layout.

The layout (simulation identity, version 1), measured exactly as the CPU measures
ECREATE/EADD/EEXTEND (the records of :class:`sealpod.sgx.EnclaveMeasurement`, written out here
in bulk: ``sealpod run`` measures the manifest on every start and must not import
:mod:`sealpod.sgx`, whose signing keys pull in ``cryptography``; the unit tests hold the two to
the same digests):

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

import hashlib
import struct
from typing import TYPE_CHECKING, Final

from sealpod.errors import ManifestError

#: SDM 38.7: pages are 4 KiB and EEXTEND measures 256 bytes at a time.
PAGE_SIZE: Final = 4096
_CHUNK: Final = 256

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
# SECINFO.FLAGS (SDM Table 38-8): R = 0x1, X = 0x4, PT_REG = 0x200.
_MANIFEST_FLAGS: Final = 0x1 | 0x200
_RUNTIME_FLAGS: Final = 0x1 | 0x4 | 0x200
# The measurement records (SDM: ECREATE, EADD and EEXTEND operations), little-endian.
_ECREATE = struct.Struct("<8sIQ44x")
_EADD = "8sQQ40x"
_EEXTEND = "8sQ48x"
#: All records of one page: its EADD, then an EEXTEND and 256 bytes of the page, 16 times.
_PAGE_RECORDS = struct.Struct(f"<{_EADD}{(_EEXTEND + '256s') * 16}")
_PAGE_CHUNKS = struct.Struct("256s" * 16)


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
    padded = bytes(data) + bytes(-len(data) % PAGE_SIZE)
    measurement = hashlib.sha256(_ECREATE.pack(b"ECREATE", SSA_FRAME_SIZE, ENCLAVE_SIZE))
    measurement.update(_pages(0, padded, _MANIFEST_FLAGS))
    measurement.update(_pages(len(padded), runtime_page(len(data), runtime_id), _RUNTIME_FLAGS))
    return measurement.digest()


def _pages(offset: int, data: bytes, flags: int) -> bytes:
    """The EADD and EEXTEND records of page-aligned ``data`` added at ``offset``."""
    fields: list[object] = [b"EADD", 0, flags, *([b"EEXTEND", 0, b""] * 16)]
    records: list[bytes] = []
    for page in range(0, len(data), PAGE_SIZE):
        base = offset + page
        fields[1] = base
        fields[4::3] = range(base, base + PAGE_SIZE, _CHUNK)
        fields[5::3] = _PAGE_CHUNKS.unpack_from(data, page)
        records.append(_PAGE_RECORDS.pack(*fields))
    return b"".join(records)


def measure_manifest(manifest: EnclaveManifest) -> bytes:
    """MRENCLAVE of a package whose enclave.json is ``manifest``.

    Raises:
        ManifestError: the manifest does not fit in the enclave.
    """
    return measure_manifest_bytes(manifest.canonical_bytes())
