"""Attestation: DCAP quote models, verification and appraisal, collateral and the PCCS client.

``verify_quote`` is the one entry point for evidence: parse, verify the signature chain with
dcap-qvl at an explicit time against a pinned root, then appraise against an
:class:`AppraisalPolicy`.

Names are imported lazily (PEP 562) so that code needing only the quote models does not pay for
dcap-qvl, pydantic and httpx at start-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sealpod._internal.lazy import lazy_getattr

if TYPE_CHECKING:
    from sealpod.attestation.collateral import Collateral
    from sealpod.attestation.pccs import PCCSClient
    from sealpod.attestation.pck import PCKExtensions
    from sealpod.attestation.policy import AppraisalPolicy
    from sealpod.attestation.quote import (
        INTEL_QE_VENDOR_ID,
        CertificationData,
        CertificationDataType,
        DCAPQuote,
        ECDSASignatureData,
        QEReportCertificationData,
        QuoteHeader,
        SGXReportBody,
        TDReport,
        TEEType,
        parse_quote,
    )
    from sealpod.attestation.verify import (
        INTEL_ROOT_CA_SHA256,
        VerifiedEvidence,
        intel_root,
        load_trust_root,
        verify_quote,
    )

_WHERE = {
    "Collateral": "collateral",
    "PCCSClient": "pccs",
    "PCKExtensions": "pck",
    "AppraisalPolicy": "policy",
    "INTEL_QE_VENDOR_ID": "quote",
    "CertificationData": "quote",
    "CertificationDataType": "quote",
    "DCAPQuote": "quote",
    "ECDSASignatureData": "quote",
    "QEReportCertificationData": "quote",
    "QuoteHeader": "quote",
    "SGXReportBody": "quote",
    "TDReport": "quote",
    "TEEType": "quote",
    "parse_quote": "quote",
    "INTEL_ROOT_CA_SHA256": "verify",
    "VerifiedEvidence": "verify",
    "intel_root": "verify",
    "load_trust_root": "verify",
    "verify_quote": "verify",
}

__all__ = [
    "INTEL_QE_VENDOR_ID",
    "INTEL_ROOT_CA_SHA256",
    "AppraisalPolicy",
    "CertificationData",
    "CertificationDataType",
    "Collateral",
    "DCAPQuote",
    "ECDSASignatureData",
    "PCCSClient",
    "PCKExtensions",
    "QEReportCertificationData",
    "QuoteHeader",
    "SGXReportBody",
    "TDReport",
    "TEEType",
    "VerifiedEvidence",
    "intel_root",
    "load_trust_root",
    "parse_quote",
    "verify_quote",
]


__getattr__ = lazy_getattr(__name__, _WHERE)
