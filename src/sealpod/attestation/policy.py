"""Appraisal policy: what verified evidence must say to be accepted.

:func:`sealpod.attestation.verify.verify_quote` first checks the evidence cryptographically
(signatures, chains, CRLs, collateral dates, TCB level) and then hands the result to
:meth:`AppraisalPolicy.appraise`, which checks the *claims*: TCB status and advisories, the
enclave or TD identity, the debug flag, the report data and whether simulated evidence is
acceptable.

Invariants of this module:

* A policy is immutable and rejects unknown fields, so a typo in a policy file is an error, not a
  silently ignored rule.
* Every failed check raises :class:`~sealpod.errors.VerificationError` with a stable reason.
* The defaults are the safe choice: no debug enclaves, no simulated evidence, only ``UpToDate``
  and ``SWHardeningNeeded``. ``Revoked`` can never be accepted.
* The insecure switches (``allow_simulation``, ``allow_debug``) log a warning every time a policy
  with them is used.
* ``allow_debug`` is checked here, but dcap-qvl 0.7 already refuses debug enclaves and TDs during
  cryptographic verification ("Debug mode is enabled" -> reason ``debug_not_allowed``), so with
  that verifier a debug quote is refused whatever this flag says.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from sealpod._internal.models import RevalidatingModel
from sealpod.errors import ConfigError, VerificationError

if TYPE_CHECKING:
    from sealpod.attestation.verify import VerifiedEvidence

__all__ = ["KNOWN_TCB_STATUSES", "AppraisalPolicy"]

_logger = logging.getLogger(__name__)

#: TCB statuses defined by Intel's PCS API (TCB info v3 ``tcbStatus``).
KNOWN_TCB_STATUSES = frozenset(
    {
        "UpToDate",
        "SWHardeningNeeded",
        "ConfigurationNeeded",
        "ConfigurationAndSWHardeningNeeded",
        "OutOfDate",
        "OutOfDateConfigurationNeeded",
        "Revoked",
    }
)


def _hex_of(size: int) -> Any:
    def parse(value: Any) -> bytes:
        if isinstance(value, bytes):
            raw = value
        elif isinstance(value, str):
            try:
                raw = bytes.fromhex(value.strip().lower().removeprefix("0x"))
            except ValueError as exc:
                raise ValueError("not a hex string") from exc
        else:
            raise ValueError("expected a hex string")
        if len(raw) != size:
            raise ValueError(f"expected {size} bytes ({2 * size} hex digits), got {len(raw)}")
        return raw

    return parse


_to_hex = PlainSerializer(lambda raw: raw.hex(), return_type=str)
Hex32 = Annotated[bytes, BeforeValidator(_hex_of(32)), _to_hex]
Hex48 = Annotated[bytes, BeforeValidator(_hex_of(48)), _to_hex]
Hex64 = Annotated[bytes, BeforeValidator(_hex_of(64)), _to_hex]
_U16 = Annotated[int, Field(ge=0, le=0xFFFF)]


class AppraisalPolicy(RevalidatingModel):
    """The claims verified evidence must carry (all fields optional; defaults are safe).

    SGX identity: ``mrenclave`` (any of a list) and/or ``mrsigner`` + ``isv_prod_id`` +
    ``min_isv_svn``. TDX identity: ``mr_td`` and ``rtmr0``..``rtmr3``. A policy with SGX identity
    rules refuses TDX evidence and vice versa.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    accepted_tcb_statuses: tuple[str, ...] = ("UpToDate", "SWHardeningNeeded")
    rejected_advisories: tuple[str, ...] = ()
    tee: Literal["sgx", "tdx"] | None = None
    mrenclave: tuple[Hex32, ...] | None = None
    mrsigner: Hex32 | None = None
    isv_prod_id: _U16 | None = None
    min_isv_svn: _U16 = 0
    mr_td: Hex48 | None = None
    rtmr0: Hex48 | None = None
    rtmr1: Hex48 | None = None
    rtmr2: Hex48 | None = None
    rtmr3: Hex48 | None = None
    allow_debug: bool = False
    expected_report_data: Hex64 | None = None
    allow_simulation: bool = False

    @field_validator("accepted_tcb_statuses")
    @classmethod
    def _known_statuses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for status in value:
            if status not in KNOWN_TCB_STATUSES:
                raise ValueError(f"unknown TCB status {status!r}")
            if status == "Revoked":
                raise ValueError("a revoked platform can never be accepted")
        return value

    @field_validator("rejected_advisories")
    @classmethod
    def _advisory_ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(advisory.strip().upper() for advisory in value)

    @field_validator("mrenclave")
    @classmethod
    def _non_empty(cls, value: tuple[bytes, ...] | None) -> tuple[bytes, ...] | None:
        if value is not None and not value:
            raise ValueError("an empty list would refuse every enclave; omit the field instead")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> AppraisalPolicy:
        if self.mrsigner is not None and self.isv_prod_id is None:
            raise ValueError("mrsigner needs isv_prod_id (one signer signs many products)")
        if self.isv_prod_id is not None and self.mrsigner is None:
            raise ValueError("isv_prod_id is meaningless without mrsigner")
        if self._wants_sgx and self._wants_tdx:
            raise ValueError("a policy holds either SGX (mrenclave/mrsigner) or TDX identity rules")
        if (self.tee == "sgx" and self._wants_tdx) or (self.tee == "tdx" and self._wants_sgx):
            raise ValueError(f"identity rules do not match tee={self.tee!r}")
        return self

    @cached_property
    def _wants_sgx(self) -> bool:
        return self.mrenclave is not None or self.mrsigner is not None or self.min_isv_svn > 0

    @cached_property
    def _wants_tdx(self) -> bool:
        return any(
            value is not None
            for value in (self.mr_td, self.rtmr0, self.rtmr1, self.rtmr2, self.rtmr3)
        )

    # -- loading ---------------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "policy") -> AppraisalPolicy:
        """Build a policy from a parsed JSON/YAML document.

        Raises:
            ConfigError: the document is not a valid policy; the message names the field.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: a policy must be a mapping")
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "(policy)"
            message = str(first["msg"]).removeprefix("Value error, ")
            raise ConfigError(f"{source}: {where}: {message}") from exc

    @classmethod
    def from_file(cls, path: str | Path) -> AppraisalPolicy:
        """Load a policy from a JSON or YAML file.

        Raises:
            ConfigError: the file cannot be read or is not a valid policy.
        """
        source = Path(path)
        try:
            text = source.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read policy {source}: {exc}") from exc
        try:
            if source.suffix.lower() == ".json":
                data = json.loads(text)
            else:
                data = yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as exc:
            raise ConfigError(f"policy {source} is not valid JSON/YAML: {exc}") from exc
        return cls.from_mapping(data if data is not None else {}, source=str(source))

    def to_dict(self) -> dict[str, Any]:
        """The policy as a JSON-ready dict (hex for bytes), readable by :meth:`from_mapping`."""
        return self.model_dump(mode="json", exclude_defaults=True)

    # -- appraisal -------------------------------------------------------------------------

    def appraise(self, evidence: VerifiedEvidence) -> None:
        """Check the claims of cryptographically verified evidence against this policy.

        Raises:
            VerificationError: a claim does not satisfy the policy; ``reason`` says which one
                (``simulation_not_allowed``, ``revoked``, ``tcb_status_not_accepted``,
                ``advisory_rejected``, ``tee_mismatch``, ``debug_not_allowed``,
                ``mrenclave_mismatch``, ``mrsigner_mismatch``, ``isv_prod_id_mismatch``,
                ``isv_svn_too_low``, ``mr_td_mismatch``, ``rtmr_mismatch``,
                ``report_data_mismatch``).
        """
        if evidence.simulated:
            if not self.allow_simulation:
                raise VerificationError(
                    "simulation_not_allowed",
                    "the quote was verified under a non-Intel (simulated) root; "
                    "the policy does not allow simulated evidence",
                )
            _logger.warning(
                "INSECURE: accepting SIMULATED evidence (allow_simulation): "
                "it proves nothing about hardware isolation"
            )
        elif self.allow_simulation:
            _logger.warning("INSECURE: appraising with allow_simulation=True")

        if evidence.status == "Revoked":
            raise VerificationError("revoked", "the platform TCB is revoked")
        if evidence.status not in self.accepted_tcb_statuses:
            raise VerificationError(
                "tcb_status_not_accepted",
                f"TCB status {evidence.status} is not one of "
                f"{', '.join(self.accepted_tcb_statuses) or '(none)'}",
            )
        rejected = sorted(set(evidence.advisory_ids) & set(self.rejected_advisories))
        if rejected:
            raise VerificationError(
                "advisory_rejected", f"the platform is affected by {', '.join(rejected)}"
            )
        if self.tee is not None and evidence.tee != self.tee:
            raise VerificationError(
                "tee_mismatch", f"expected {self.tee.upper()} evidence, got {evidence.tee.upper()}"
            )

        if evidence.debug:
            if not self.allow_debug:
                raise VerificationError(
                    "debug_not_allowed",
                    "the enclave/TD runs in debug mode (its memory is readable)",
                )
            _logger.warning("INSECURE: accepting a DEBUG enclave/TD (allow_debug)")
        elif self.allow_debug:
            _logger.warning("INSECURE: appraising with allow_debug=True")

        if evidence.tee == "sgx":
            self._appraise_sgx(evidence)
        else:
            self._appraise_tdx(evidence)

        if self.expected_report_data is not None and not hmac.compare_digest(
            evidence.report_data, self.expected_report_data
        ):
            raise VerificationError(
                "report_data_mismatch", "the quote's report_data is not the expected value"
            )

    def _appraise_sgx(self, evidence: VerifiedEvidence) -> None:
        if self._wants_tdx:
            raise VerificationError("tee_mismatch", "the policy expects a TDX TD, got SGX evidence")
        if self.mrenclave is not None and evidence.mr_enclave not in self.mrenclave:
            raise VerificationError(
                "mrenclave_mismatch",
                f"MRENCLAVE {_hex(evidence.mr_enclave)} is not an accepted measurement",
            )
        if self.mrsigner is not None:
            if evidence.mr_signer != self.mrsigner:
                raise VerificationError(
                    "mrsigner_mismatch", f"MRSIGNER {_hex(evidence.mr_signer)} is not the expected"
                )
            if evidence.isv_prod_id != self.isv_prod_id:
                raise VerificationError(
                    "isv_prod_id_mismatch",
                    f"ISVPRODID {evidence.isv_prod_id} is not {self.isv_prod_id}",
                )
        if (evidence.isv_svn or 0) < self.min_isv_svn:
            raise VerificationError(
                "isv_svn_too_low", f"ISVSVN {evidence.isv_svn} is below {self.min_isv_svn}"
            )

    def _appraise_tdx(self, evidence: VerifiedEvidence) -> None:
        if self._wants_sgx:
            raise VerificationError("tee_mismatch", "the policy expects an SGX enclave, got TDX")
        if self.mr_td is not None and evidence.mr_td != self.mr_td:
            raise VerificationError(
                "mr_td_mismatch", f"MRTD {_hex(evidence.mr_td)} is not expected"
            )
        rtmrs = evidence.rtmrs or ()
        for index, expected in enumerate((self.rtmr0, self.rtmr1, self.rtmr2, self.rtmr3)):
            if expected is not None and (index >= len(rtmrs) or rtmrs[index] != expected):
                raise VerificationError("rtmr_mismatch", f"RTMR{index} is not the expected value")


def _hex(value: bytes | None) -> str:
    return value.hex() if value is not None else "(none)"
