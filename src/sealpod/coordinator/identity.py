"""The coordinator's own enclave identity.

On SGX hardware the coordinator's identity is whatever Gramine measured. In simulation there is
no hardware measurement, so the coordinator *claims* a deterministic identity computed from the
files of the installed sealpod distribution (issue 3 §2): the distribution's files are taken as
the trusted files of an enclave manifest, and MRENCLAVE is the SGX measurement
(:mod:`sealpod.sgx.measurement`) of an enclave holding that manifest's canonical JSON. Any
machine with the same release computes the same value, so ``sealpod verify --expect-mrenclave``
means something even in simulation (it pins the code, not the hardware).

The canonical manifest is ``{"format": "sealpod-coordinator-identity-v1", "trusted_files":
{relative path: sha256 hex}}`` with sorted keys and no whitespace; paths are POSIX, relative to
the ``sealpod`` package directory; ``__pycache__`` directories and compiled files are skipped
(they depend on the interpreter, not on the release).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from sealpod.errors import EnvironmentUnavailableError
from sealpod.sgx.measurement import PAGE_SIZE, measure_blob
from sealpod.tee.backend import EnclaveIdentity

__all__ = [
    "SIMULATED_COORDINATOR_MRSIGNER",
    "CoordinatorMeasurement",
    "coordinator_identity",
    "measure_distribution",
]

_logger = logging.getLogger(__name__)

_FORMAT = "sealpod-coordinator-identity-v1"
#: MRSIGNER the simulated coordinator claims: there is no signing key in simulation, so it is a
#: fixed, documented value (SHA-256 of a label) that no hardware enclave can have by accident.
SIMULATED_COORDINATOR_MRSIGNER = hashlib.sha256(b"sealpod simulated coordinator signer v1").digest()
#: ISVPRODID of the coordinator ("sc" in ASCII).
COORDINATOR_ISV_PROD_ID = 0x7363
_SKIPPED_DIRS = frozenset({"__pycache__"})
_SKIPPED_SUFFIXES = (".pyc", ".pyo")


@dataclass(frozen=True)
class CoordinatorMeasurement:
    """The measured distribution: MRENCLAVE and the file list it covers."""

    mr_enclave: bytes
    files: tuple[tuple[str, str], ...]
    root: Path


def _package_dir() -> Path:
    import sealpod  # local import: this module is part of the package it measures

    return Path(sealpod.__file__).resolve().parent


def _trusted_files(root: Path) -> list[tuple[str, str]]:
    files: list[tuple[str, str]] = []
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIPPED_DIRS)
        for filename in filenames:
            if filename.endswith(_SKIPPED_SUFFIXES):
                continue
            path = Path(directory) / filename
            if not path.is_file():
                continue
            digest = hashlib.sha256()
            try:
                with open(path, "rb") as handle:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(block)
            except OSError as exc:
                raise EnvironmentUnavailableError(
                    f"cannot read {path} to measure the coordinator: {exc.strerror or exc}"
                ) from exc
            files.append((path.relative_to(root).as_posix(), digest.hexdigest()))
    # Code-point order of the relative paths: independent of the file system's listing order.
    files.sort()
    return files


def _enclave_size(length: int) -> int:
    size = PAGE_SIZE
    while size < length:
        size *= 2
    return size


def measure_distribution(root: Path | None = None) -> CoordinatorMeasurement:
    """Measure the sealpod package directory ``root`` (default: the installed package).

    Raises:
        EnvironmentUnavailableError: a file of the distribution cannot be read.
    """
    directory = _package_dir() if root is None else root
    files = _trusted_files(directory)
    document = {"format": _FORMAT, "trusted_files": dict(files)}
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    mr_enclave = measure_blob(canonical, enclave_size=_enclave_size(len(canonical)))
    _logger.debug("measured %d coordinator files: %s", len(files), mr_enclave.hex())
    return CoordinatorMeasurement(mr_enclave=mr_enclave, files=tuple(files), root=directory)


@functools.cache
def coordinator_identity() -> EnclaveIdentity:
    """The identity the *simulated* coordinator claims (measured once per process).

    Raises:
        EnvironmentUnavailableError: a file of the distribution cannot be read.
    """
    measurement = measure_distribution()
    return EnclaveIdentity(
        mr_enclave=measurement.mr_enclave,
        mr_signer=SIMULATED_COORDINATOR_MRSIGNER,
        isv_prod_id=COORDINATOR_ISV_PROD_ID,
        isv_svn=0,
        debug=False,
    )
