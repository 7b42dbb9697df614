"""TEE backends: where quotes and sealing keys come from.

Two backends implement one :class:`TEEBackend` protocol, and everything above them (activation,
coordinator, sealed state) uses only the protocol:

* :class:`SimulationBackend`: the simulated SGX platform (:mod:`sealpod.tee.simulation`). Its
  quotes verify only under the simulated root; ``simulated`` is always true and every use logs a
  warning.
* :class:`GramineBackend`: Intel SGX through Gramine's ``/dev/attestation`` pseudo-filesystem.
  A quote is obtained by writing 64 bytes to ``user_report_data`` and reading ``quote``;
  sealing keys are ``keys/_sgx_mrenclave`` and ``keys/_sgx_mrsigner`` (16 bytes each). The
  enclave's identity is read from the body of a quote over zero report data: Gramine's
  ``my_target_info`` holds MRENCLAVE but not MRSIGNER, ISVPRODID or ISVSVN.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from sealpod.attestation.quote import SGXReportBody, parse_quote
from sealpod.errors import ConfigError, EnvironmentUnavailableError, QuoteFormatError
from sealpod.tee.simulation import SealingPolicy, SimulatedPlatform, default_platform_dir

_logger = logging.getLogger(__name__)

__all__ = [
    "EnclaveIdentity",
    "GramineBackend",
    "SealingPolicy",
    "SimulationBackend",
    "TEEBackend",
    "get_backend",
]

_REPORT_DATA_SIZE = 64
_GRAMINE_KEY_SIZE = 16


@dataclass(frozen=True)
class EnclaveIdentity:
    """Who an enclave is: its measurement, its signer and the SIGSTRUCT numbers."""

    mr_enclave: bytes
    mr_signer: bytes
    isv_prod_id: int = 0
    isv_svn: int = 0
    debug: bool = False

    def __post_init__(self) -> None:
        if len(self.mr_enclave) != 32 or len(self.mr_signer) != 32:
            raise ConfigError("MRENCLAVE and MRSIGNER must be 32 bytes each")
        for value, name in ((self.isv_prod_id, "ISVPRODID"), (self.isv_svn, "ISVSVN")):
            if not 0 <= value <= 0xFFFF:
                raise ConfigError(f"{name} must be in 0..65535, got {value}")

    @classmethod
    def from_report_body(cls, body: SGXReportBody) -> EnclaveIdentity:
        """The identity an SGX report body states."""
        return cls(
            mr_enclave=body.mr_enclave,
            mr_signer=body.mr_signer,
            isv_prod_id=body.isv_prod_id,
            isv_svn=body.isv_svn,
            debug=body.debug,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (hex for the measurements)."""
        return {
            "mr_enclave": self.mr_enclave.hex(),
            "mr_signer": self.mr_signer.hex(),
            "isv_prod_id": self.isv_prod_id,
            "isv_svn": self.isv_svn,
            "debug": self.debug,
        }


@runtime_checkable
class TEEBackend(Protocol):
    """A source of quotes and sealing keys for the enclave this process runs in."""

    @property
    def simulated(self) -> bool:
        """True when the evidence comes from the simulated platform (no memory isolation)."""
        ...

    @property
    def identity(self) -> EnclaveIdentity:
        """This enclave's identity."""
        ...

    def quote(self, report_data: bytes) -> bytes:
        """A DCAP quote whose report data is ``report_data`` (at most 64 bytes, zero-padded)."""
        ...

    def sealing_key(self, policy: SealingPolicy) -> bytes:
        """The 16-byte sealing key bound to MRENCLAVE or to MRSIGNER (+ ISVPRODID)."""
        ...


def _pad_report_data(report_data: bytes) -> bytes:
    if len(report_data) > _REPORT_DATA_SIZE:
        raise ConfigError(f"report data is {len(report_data)} bytes; at most 64 allowed")
    return bytes(report_data).ljust(_REPORT_DATA_SIZE, b"\x00")


def _check_policy(policy: str) -> SealingPolicy:
    if policy == "mrenclave":
        return "mrenclave"
    if policy == "mrsigner":
        return "mrsigner"
    raise ConfigError(f"unknown sealing policy {policy!r} (use mrenclave or mrsigner)")


class SimulationBackend:
    """The simulated SGX platform acting as the TEE of an enclave with ``identity``.

    INSECURE: no memory isolation. Quotes verify only under the simulated root.
    """

    simulated = True

    def __init__(self, platform: SimulatedPlatform, identity: EnclaveIdentity) -> None:
        self._platform = platform
        self._identity = identity
        _logger.warning(
            "using the SIMULATED SGX platform at %s: no memory isolation, evidence is "
            "accepted only by policies that allow simulation",
            platform.directory,
        )

    def __repr__(self) -> str:
        return f"SimulationBackend(identity={self._identity!r}, simulated=True)"

    @property
    def identity(self) -> EnclaveIdentity:
        """The identity the simulated enclave claims (measured by ``sealpod build``)."""
        return self._identity

    @property
    def platform(self) -> SimulatedPlatform:
        """The underlying simulated platform."""
        return self._platform

    def quote(self, report_data: bytes) -> bytes:
        """A simulated DCAP v3 quote over ``report_data``.

        Raises:
            ConfigError: report data longer than 64 bytes.
        """
        identity = self._identity
        return self._platform.quote(
            _pad_report_data(report_data),
            mr_enclave=identity.mr_enclave,
            mr_signer=identity.mr_signer,
            isv_prod_id=identity.isv_prod_id,
            isv_svn=identity.isv_svn,
            debug=identity.debug,
        )

    def sealing_key(self, policy: SealingPolicy) -> bytes:
        """The simulated 16-byte sealing key of this identity on this platform.

        Raises:
            ConfigError: unknown policy.
        """
        identity = self._identity
        return self._platform.sealing_key(
            _check_policy(policy),
            mr_enclave=identity.mr_enclave,
            mr_signer=identity.mr_signer,
            isv_prod_id=identity.isv_prod_id,
            debug=identity.debug,
        )


class GramineBackend:
    """Intel SGX through Gramine's ``/dev/attestation`` (DCAP attestation)."""

    simulated = False

    def __init__(self, root: str | os.PathLike[str] = "/dev/attestation") -> None:
        """Open the attestation device.

        Raises:
            EnvironmentUnavailableError: no Gramine attestation device, or attestation disabled
                (``attestation_type`` is ``none``, e.g. under ``gramine-direct``).
        """
        self._root = Path(root)
        missing = [
            name for name in ("user_report_data", "quote") if not (self._root / name).exists()
        ]
        if missing:
            raise EnvironmentUnavailableError(
                f"no Gramine attestation device at {self._root} (missing {', '.join(missing)}); "
                "run inside a Gramine SGX enclave or use the simulation backend"
            )
        kind_path = self._root / "attestation_type"
        if kind_path.exists():
            kind = self._read(kind_path, "attestation type").decode(errors="replace").strip()
            if kind == "none":
                raise EnvironmentUnavailableError(
                    "Gramine remote attestation is disabled (attestation_type is 'none'); set "
                    'sgx.remote_attestation = "dcap" in the manifest'
                )
        self._lock = threading.Lock()
        self._identity: EnclaveIdentity | None = None

    def __repr__(self) -> str:
        return f"GramineBackend(root={str(self._root)!r})"

    def _read(self, path: Path, what: str) -> bytes:
        try:
            with open(path, "rb") as fh:
                return fh.read()
        except OSError as exc:
            raise EnvironmentUnavailableError(
                f"cannot read {what} from {path}: {exc.strerror or exc}"
            ) from exc

    def _write(self, path: Path, data: bytes, what: str) -> None:
        try:
            with open(path, "wb", buffering=0) as fh:
                written = fh.write(data)
        except OSError as exc:
            raise EnvironmentUnavailableError(
                f"cannot write {what} to {path}: {exc.strerror or exc}"
            ) from exc
        if written != len(data):
            raise EnvironmentUnavailableError(f"short write of {what} to {path}")

    def quote(self, report_data: bytes) -> bytes:
        """Ask Gramine's quoting path for a DCAP quote over ``report_data``.

        Raises:
            ConfigError: report data longer than 64 bytes.
            EnvironmentUnavailableError: the device fails, or returns a quote that does not
                parse or does not carry our report data.
        """
        padded = _pad_report_data(report_data)
        # Gramine keeps one user_report_data per process: serialise write-then-read.
        with self._lock:
            self._write(self._root / "user_report_data", padded, "report data")
            raw = self._read(self._root / "quote", "quote")
        try:
            quote = parse_quote(raw)
        except QuoteFormatError as exc:
            raise EnvironmentUnavailableError(f"Gramine returned a malformed quote: {exc}") from exc
        if quote.body.report_data != padded:
            raise EnvironmentUnavailableError("Gramine returned a quote over different report data")
        return quote.to_bytes()

    def sealing_key(self, policy: SealingPolicy) -> bytes:
        """Gramine's 16-byte SGX sealing key (``keys/_sgx_mrenclave`` or ``_sgx_mrsigner``).

        Raises:
            ConfigError: unknown policy.
            EnvironmentUnavailableError: the key file is missing or has the wrong size.
        """
        checked = _check_policy(policy)
        path = self._root / "keys" / f"_sgx_{checked}"
        key = self._read(path, "sealing key")
        if len(key) != _GRAMINE_KEY_SIZE:
            raise EnvironmentUnavailableError(
                f"{path} holds {len(key)} bytes; expected a {_GRAMINE_KEY_SIZE}-byte key"
            )
        return key

    @property
    def identity(self) -> EnclaveIdentity:
        """This enclave's identity, read once from a quote over zero report data.

        Raises:
            EnvironmentUnavailableError: the device fails or returns a non-SGX quote.
        """
        if self._identity is None:
            quote = parse_quote(self.quote(bytes(_REPORT_DATA_SIZE)))
            if not isinstance(quote.body, SGXReportBody):
                raise EnvironmentUnavailableError("Gramine returned a non-SGX quote")
            self._identity = EnclaveIdentity.from_report_body(quote.body)
        return self._identity


def get_backend(
    name: Literal["simulation", "gramine"] | str,
    *,
    identity: EnclaveIdentity | None = None,
    platform_dir: str | os.PathLike[str] | None = None,
    gramine_root: str | os.PathLike[str] = "/dev/attestation",
) -> TEEBackend:
    """The backend called ``name``.

    ``simulation`` needs the ``identity`` the enclave claims and loads the platform from
    ``platform_dir`` (default :func:`~sealpod.tee.simulation.default_platform_dir`).

    Raises:
        ConfigError: unknown backend, or ``simulation`` without an identity.
        EnvironmentUnavailableError: the platform or device is missing.
    """
    if name == "simulation":
        if identity is None:
            raise ConfigError("the simulation backend needs the enclave identity it runs as")
        directory = default_platform_dir() if platform_dir is None else platform_dir
        return SimulationBackend(SimulatedPlatform.load(directory), identity)
    if name == "gramine":
        return GramineBackend(gramine_root)
    raise ConfigError(f"unknown TEE backend {name!r} (use simulation or gramine)")
