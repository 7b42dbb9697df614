"""Attestation: DCAP quote models, verification and appraisal, collateral."""

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

__all__ = [
    "INTEL_QE_VENDOR_ID",
    "CertificationData",
    "CertificationDataType",
    "DCAPQuote",
    "ECDSASignatureData",
    "QEReportCertificationData",
    "QuoteHeader",
    "SGXReportBody",
    "TDReport",
    "TEEType",
    "parse_quote",
]
