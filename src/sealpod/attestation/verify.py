"""Verify a DCAP quote against its collateral and appraise it against a policy.

``verify_quote`` = parse (:func:`sealpod.attestation.quote.parse_quote`) + cryptographic
verification (dcap-qvl: PCK chain up to a pinned root, CRLs, TCB info and QE identity signatures
and dates, QE report, quote signature, TCB level) + appraisal
(:meth:`sealpod.attestation.policy.AppraisalPolicy.appraise`).

Invariants of this module:

* The trust anchor is pinned. By default it is the Intel SGX Root CA shipped in
  ``sealpod/data/IntelSGXRootCA.der``, whose SHA-256 fingerprint is checked when it is loaded.
* *Simulated* is decided by the root the chain verified under, never by anything the evidence
  says about itself: evidence that verified under any root other than Intel's is
  ``simulated=True``, and the policy refuses it unless ``allow_simulation`` is set (which logs a
  warning every time). There is no path that skips verification.
* Every failure is a :class:`~sealpod.errors.VerificationError` with a stable ``reason``; dcap-qvl's
  error strings are mapped to those reasons in one place (:func:`_reason_for`). Bytes that are not
  a quote raise :class:`~sealpod.errors.QuoteFormatError` first.
* The per-call overhead over dcap-qvl is kept small: roots are parsed once and cached, and a
  :class:`~sealpod.attestation.collateral.Collateral` converts itself to dcap-qvl's form once.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

import dcap_qvl
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from sealpod.attestation.collateral import Collateral
from sealpod.attestation.policy import AppraisalPolicy
from sealpod.attestation.quote import DCAPQuote, SGXReportBody, TEEType, parse_quote
from sealpod.errors import ConfigError, QuoteFormatError, VerificationError

__all__ = [
    "INTEL_ROOT_CA_SHA256",
    "TrustRoot",
    "VerifiedEvidence",
    "intel_root",
    "load_trust_root",
    "verify_quote",
]

_logger = logging.getLogger(__name__)

#: SHA-256 fingerprint of the Intel SGX Root CA certificate (DER).
INTEL_ROOT_CA_SHA256 = bytes.fromhex(
    "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
)
_INTEL_ROOT_RESOURCE = "data/IntelSGXRootCA.der"
_PEM_CERT_RE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\s*([A-Za-z0-9+/=\s]+?)\s*-----END CERTIFICATE-----"
)


@dataclass(frozen=True)
class TrustRoot:
    """A parsed, pinned root certificate."""

    der: bytes = field(repr=False)
    sha256: bytes
    subject: str
    #: True only for the Intel SGX Root CA (by fingerprint).
    is_intel: bool
    #: The base64 of the DER, to find the root in a quote's PEM chain without parsing it.
    b64: bytes = field(repr=False)
    #: One full 64-character line of the root's PEM: a fast first check for the same.
    pem_line: bytes = field(repr=False)

    def in_chain(self, chain_pem: bytes) -> bool:
        """Whether the PEM chain contains this certificate (any line width)."""
        if self.pem_line in chain_pem:
            return True
        flat = chain_pem.replace(b"\n", b"").replace(b"\r", b"")
        return self.b64 in flat


def _trust_root_from_der(der: bytes) -> TrustRoot:
    if not isinstance(der, bytes | bytearray | memoryview):
        raise ConfigError(f"a trust root must be DER bytes, not {type(der).__name__}")
    return _parse_trust_root(bytes(der))


@functools.lru_cache(maxsize=16)
def _parse_trust_root(der: bytes) -> TrustRoot:
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise ConfigError(f"trust root is not a DER X.509 certificate: {exc}") from exc
    digest = hashlib.sha256(der).digest()
    b64 = base64.b64encode(der)
    return TrustRoot(
        der=der,
        sha256=digest,
        subject=cert.subject.rfc4514_string(),
        is_intel=digest == INTEL_ROOT_CA_SHA256,
        b64=b64,
        # The last full line of the standard 64-column PEM wrapping (in the signature).
        pem_line=b64[(len(b64) // 64 - 1) * 64 : (len(b64) // 64) * 64],
    )


@functools.cache
def intel_root() -> TrustRoot:
    """The shipped Intel SGX Root CA, fingerprint-checked (loaded once).

    Raises:
        VerificationError: ``untrusted_root``: the shipped file is missing or not Intel's root.
    """
    try:
        der = resources.files("sealpod").joinpath(_INTEL_ROOT_RESOURCE).read_bytes()
    except OSError as exc:
        raise VerificationError(
            "untrusted_root", f"the shipped Intel SGX Root CA cannot be read: {exc}"
        ) from exc
    if hashlib.sha256(der).digest() != INTEL_ROOT_CA_SHA256:
        raise VerificationError(
            "untrusted_root", "the shipped Intel SGX Root CA does not have the pinned fingerprint"
        )
    return _trust_root_from_der(der)


def load_trust_root(data: bytes) -> bytes:
    """Read a root certificate given as PEM or DER and return its DER.

    Raises:
        ConfigError: the data is neither a PEM nor a DER certificate.
    """
    raw = bytes(data)
    match = _PEM_CERT_RE.search(raw)
    if match is not None:
        try:
            cert = x509.load_pem_x509_certificate(match.group(0))
        except ValueError as exc:
            raise ConfigError(f"trust root PEM does not parse: {exc}") from exc
        return cert.public_bytes(Encoding.DER)
    return _trust_root_from_der(raw).der


@dataclass(frozen=True)
class VerifiedEvidence:
    """What a verified, appraised quote proves.

    SGX evidence fills ``mr_enclave``..``isv_svn``; TDX evidence fills ``mr_td`` and ``rtmrs``.
    """

    status: str
    advisory_ids: tuple[str, ...]
    tee: Literal["sgx", "tdx"]
    report_data: bytes
    debug: bool
    fmspc: str
    #: True when the chain verified under a root other than the Intel SGX Root CA.
    simulated: bool
    #: The time (epoch seconds) the quote and collateral were checked at.
    verified_at: int
    trust_root_sha256: bytes
    mr_enclave: bytes | None = None
    mr_signer: bytes | None = None
    isv_prod_id: int | None = None
    isv_svn: int | None = None
    mr_td: bytes | None = None
    rtmrs: tuple[bytes, ...] | None = None
    #: The parsed quote (for callers that need more fields, e.g. the attestation key).
    quote: DCAPQuote | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (hex for bytes) of the verified claims."""
        out: dict[str, Any] = {
            "status": self.status,
            "advisory_ids": list(self.advisory_ids),
            "tee": self.tee,
            "simulated": self.simulated,
            "debug": self.debug,
            "fmspc": self.fmspc,
        }
        if self.tee == "sgx":
            out["mr_enclave"] = _hex(self.mr_enclave)
            out["mr_signer"] = _hex(self.mr_signer)
            out["isv_prod_id"] = self.isv_prod_id
            out["isv_svn"] = self.isv_svn
        else:
            out["mr_td"] = _hex(self.mr_td)
            for index, value in enumerate(self.rtmrs or ()):
                out[f"rtmr{index}"] = value.hex()
        out["report_data"] = self.report_data.hex()
        out["verified_at"] = self.verified_at
        out["trust_root_sha256"] = self.trust_root_sha256.hex()
        return out


def _hex(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


# dcap-qvl error text (lower-cased substring) -> stable reason. First match wins, so the more
# specific patterns come first.
_ERROR_REASONS: tuple[tuple[str, str], ...] = (
    ("failed to decode quote", "malformed_quote"),
    ("tcbinfo expired", "collateral_expired"),
    ("qe identity expired", "collateral_expired"),
    ("collateral expired", "collateral_expired"),
    ("crlexpired", "collateral_expired"),
    ("revocation list expired", "collateral_expired"),
    ("issue date is in the future", "collateral_not_yet_valid"),
    ("crlnotvalidyet", "collateral_not_yet_valid"),
    ("certexpired", "certificate_expired"),
    ("certificate expired", "certificate_expired"),
    ("certnotvalidyet", "certificate_not_yet_valid"),
    ("revoked", "revoked"),
    # dcap-qvl refuses debug enclaves/TDs itself, before any appraisal.
    ("debug mode is enabled", "debug_not_allowed"),
    ("no matching tcb level", "tcb_level_not_found"),
    ("isv enclave report signature", "bad_quote_signature"),
    ("qe report hash mismatch", "bad_qe_report"),
    ("signature is invalid for qe_report", "bad_qe_report"),
    ("signature is invalid for tcb_info", "bad_collateral_signature"),
    ("signature is invalid for qe_identity", "bad_collateral_signature"),
    ("qe mrsigner", "bad_qe_identity"),
    ("qe isvprodid", "bad_qe_identity"),
    ("qe miscselect", "bad_qe_identity"),
    ("qe attributes", "bad_qe_identity"),
    ("qe vendor", "bad_qe_identity"),
    ("qe identity", "bad_qe_identity"),
    ("fmspc mismatch", "fmspc_mismatch"),
    ("non-sgx tcb info", "collateral_mismatch"),
    ("non-tdx tcb info", "collateral_mismatch"),
    ("tdx module", "bad_tdx_module"),
    ("service td", "service_td_not_allowed"),
    ("unsupported", "unsupported_quote"),
    ("failed to load root ca", "untrusted_root"),
    ("failed to parse root ca certificate", "untrusted_root"),
    ("unknownissuer", "untrusted_root"),
    ("root ca crl", "bad_crl"),
    ("pck crl", "bad_crl"),
    ("invalidcrlsignature", "bad_crl"),
    ("certificate chain", "bad_chain"),
    ("pck certificate", "bad_chain"),
    ("invalidsignatureforpublickey", "bad_chain"),
    ("leaf certificate", "bad_chain"),
)
# Failures that a foreign root also produces: re-labelled untrusted_root when the quote's chain does
# not end in the root we verified against.
_ROOT_SENSITIVE = frozenset({"bad_crl", "bad_chain", "untrusted_root"})


def _reason_for(message: str) -> str:
    lowered = message.lower()
    for needle, reason in _ERROR_REASONS:
        if needle in lowered:
            return reason
    return "verification_failed"


def _one_line(message: str) -> str:
    parts = [line.strip() for line in message.splitlines() if line.strip()]
    parts = [part for part in parts if part != "Caused by:"]
    text = parts[0].removeprefix("Verification failed: ") if parts else "verification failed"
    causes = [re.sub(r"^\d+:\s*", "", part) for part in parts[1:]]
    return f"{text} ({'; '.join(causes)})" if causes else text


def _verification_error(exc: ValueError, root: TrustRoot, chain: bytes) -> VerificationError:
    message = str(exc)
    reason = _reason_for(message)
    text = _one_line(message)
    if reason in _ROOT_SENSITIVE and not root.in_chain(chain):
        reason = "untrusted_root"
        text = f"the quote's PCK chain does not end in the pinned root {root.subject} ({text})"
    return VerificationError(reason, text)


def _fmspc_of(collateral: Collateral | Any) -> str:
    if isinstance(collateral, Collateral):
        return collateral.fmspc
    try:
        return str(json.loads(collateral.tcb_info)["fmspc"]).upper()
    except (ValueError, KeyError, TypeError, AttributeError):
        return ""


def verify_quote(
    quote: bytes,
    collateral: Collateral | dcap_qvl.QuoteCollateralV3,
    *,
    at: int,
    policy: AppraisalPolicy,
    trust_root_der: bytes | None = None,
    simulated_root_der: bytes | None = None,
) -> VerifiedEvidence:
    """Verify ``quote`` with ``collateral`` at time ``at`` and appraise it against ``policy``.

    Args:
        quote: the raw quote (trailing bytes after the signature data are ignored).
        collateral: a :class:`Collateral` (preferred: converted once, reused, and every item's
            issue date and expiry is checked) or a ``dcap_qvl.QuoteCollateralV3`` (then only
            dcap-qvl's own date checks apply).
        at: verification time, epoch seconds (collateral and certificates must be valid then).
        policy: what the verified claims must satisfy.
        trust_root_der: the root to pin instead of the shipped Intel SGX Root CA. Any root that
            is not Intel's makes the evidence ``simulated``.
        simulated_root_der: an additional, simulated root (e.g. of ``sealpod sim``); evidence that
            chains to it is ``simulated`` and accepted only if ``policy.allow_simulation``.

    Returns:
        The verified claims.

    Raises:
        QuoteFormatError: ``quote`` is not a well-formed DCAP quote.
        ConfigError: ``at`` is not a time, or a given root is not a DER certificate.
        VerificationError: the quote, its chain or its collateral fails a check, or the claims
            do not satisfy the policy; ``reason`` says which (``untrusted_root``, ``bad_chain``,
            ``bad_crl``, ``revoked``, ``collateral_expired``, ``collateral_not_yet_valid``,
            ``certificate_expired``, ``tcb_level_not_found``, ``bad_quote_signature``,
            ``bad_qe_report``, ``bad_qe_identity``, ``bad_collateral_signature``,
            ``fmspc_mismatch``, ... and the policy reasons of
            :meth:`AppraisalPolicy.appraise`).
    """
    if isinstance(at, bool) or not isinstance(at, int) or at < 0:
        raise ConfigError(f"verification time must be epoch seconds, got {at!r}")
    if not isinstance(quote, bytes | bytearray | memoryview):
        raise QuoteFormatError(f"quote must be bytes, not {type(quote).__name__}")
    raw = quote if type(quote) is bytes else bytes(quote)
    parsed = parse_quote(raw)

    roots = [intel_root() if trust_root_der is None else _trust_root_from_der(trust_root_der)]
    if simulated_root_der is not None:
        simulated_root = _trust_root_from_der(simulated_root_der)
        if simulated_root.is_intel:
            raise ConfigError("simulated_root_der is the Intel SGX Root CA")
        if simulated_root.sha256 != roots[0].sha256:
            roots.append(simulated_root)
    chain = parsed.pck_chain_pem or b""
    # Verify under the root the quote's chain ends in (cheap check; dcap-qvl does the real one),
    # else try each root in turn. Which root verified decides `simulated`.
    candidates = roots
    if len(roots) > 1:
        named = [root for root in roots if root.in_chain(chain)]
        candidates = named[:1] or roots

    if isinstance(collateral, Collateral):
        # dcap-qvl checks every nextUpdate but not every issue date (e.g. a PCK CRL whose
        # thisUpdate is after `at`); collateral from the future is refused here.
        outside = collateral.expired_or_early_item(at)
        if outside is not None:
            raise VerificationError(*outside)
        dcap_collateral = collateral.to_dcap_qvl()
    else:
        dcap_collateral = collateral
    report: Any = None
    first_error: VerificationError | None = None
    used = candidates[0]
    for root in candidates:
        try:
            report = dcap_qvl.verify_with_root_ca(raw, dcap_collateral, root.der, at)
        except ValueError as exc:
            error = _verification_error(exc, root, chain)
            if first_error is None:
                first_error = error
                first_error.__cause__ = exc
            continue
        used = root
        break
    if report is None:
        if first_error is None:  # pragma: no cover - candidates is never empty
            raise VerificationError("verification_failed", "no trust root to verify against")
        raise first_error

    body = parsed.body
    is_sgx = parsed.header.tee_type == TEEType.SGX
    if is_sgx and isinstance(body, SGXReportBody):
        evidence = VerifiedEvidence(
            status=str(report.status),
            advisory_ids=tuple(report.advisory_ids),
            tee="sgx",
            report_data=body.report_data,
            debug=body.debug,
            fmspc=_fmspc_of(collateral),
            simulated=not used.is_intel,
            verified_at=at,
            trust_root_sha256=used.sha256,
            mr_enclave=body.mr_enclave,
            mr_signer=body.mr_signer,
            isv_prod_id=body.isv_prod_id,
            isv_svn=body.isv_svn,
            quote=parsed,
        )
    elif not is_sgx and not isinstance(body, SGXReportBody):
        evidence = VerifiedEvidence(
            status=str(report.status),
            advisory_ids=tuple(report.advisory_ids),
            tee="tdx",
            report_data=body.report_data,
            debug=body.debug,
            fmspc=_fmspc_of(collateral),
            simulated=not used.is_intel,
            verified_at=at,
            trust_root_sha256=used.sha256,
            mr_td=body.mr_td,
            rtmrs=body.rtmrs,
            quote=parsed,
        )
    else:  # pragma: no cover - parse_quote ties the body type to tee_type
        raise VerificationError("malformed_quote", "the body does not match the header's tee_type")
    policy.appraise(evidence)
    return evidence
