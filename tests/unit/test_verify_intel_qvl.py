"""Cross-check the SGX vectors with Intel's reference QVL (sgx-dcap-quote-verify-python).

Skips when the binding is not installed. Intel's QVL gets the same inputs (PCS body form for TCB
info and QE identity, PEM CRLs) and must reach the same TCB status as verify_quote.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from sealpod.attestation.collateral import Collateral
from sealpod.attestation.policy import KNOWN_TCB_STATUSES, AppraisalPolicy
from sealpod.attestation.verify import verify_quote

sgx_qvl = pytest.importorskip("sgx_dcap_quote_verify")

ANY_STATUS = AppraisalPolicy(accepted_tcb_statuses=tuple(sorted(KNOWN_TCB_STATUSES - {"Revoked"})))
# Intel QVL quote status (sgx_ql_qv_result_t names) for each PCS tcbStatus.
INTEL_STATUS = {
    "UpToDate": "STATUS_OK",
    "SWHardeningNeeded": "STATUS_TCB_SW_HARDENING_NEEDED",
    "ConfigurationNeeded": "STATUS_TCB_CONFIGURATION_NEEDED",
    "ConfigurationAndSWHardeningNeeded": "STATUS_TCB_CONFIGURATION_AND_SW_HARDENING_NEEDED",
    "OutOfDate": "STATUS_TCB_OUT_OF_DATE",
    "OutOfDateConfigurationNeeded": "STATUS_TCB_OUT_OF_DATE_CONFIGURATION_NEEDED",
}
PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n?", re.S)


def _sgx_cases(vectors: Path) -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for name in ("dcap-qvl-samples", "automata-dcap"):
        folder = vectors / name
        for case in json.loads((folder / "expected.json").read_text()):
            if case["quote_fields"]["tee_type"] == "0x0":
                out.append((folder, case))
    return out


def _crl_pem(hex_der: str) -> str:
    return x509.load_der_x509_crl(bytes.fromhex(hex_der)).public_bytes(Encoding.PEM).decode()


def _pcs_body(key: str, signed: str, signature: str) -> str:
    """The PCS response body the signed string was cut from."""
    return '{"' + key + '":' + signed + ',"signature":"' + signature + '"}'


def _intel_verify(quote: bytes, mapping: dict[str, Any], root_der: bytes, at: int) -> Any:
    from sealpod.attestation.quote import parse_quote

    chain = (parse_quote(quote).pck_chain_pem or b"").decode()
    certs = PEM_CERT.findall(chain)
    root_pem = x509.load_der_x509_certificate(root_der).public_bytes(Encoding.PEM).decode()
    return sgx_qvl.verify(
        trusted_root_ca_certificate=root_pem,
        pck_certificate=certs[0],
        pck_signing_chain="".join(certs[1:]),
        root_ca_crl=_crl_pem(mapping["root_ca_crl"]),
        intermediate_ca_crl=_crl_pem(mapping["pck_crl"]),
        tcb_info=_pcs_body("tcbInfo", mapping["tcb_info"], mapping["tcb_info_signature"]),
        tcb_signing_chain=mapping["tcb_info_issuer_chain"],
        quote=quote,
        qe_identity=_pcs_body(
            "enclaveIdentity", mapping["qe_identity"], mapping["qe_identity_signature"]
        ),
        expiration_date=dt.datetime.fromtimestamp(at, dt.UTC),
    )


def test_intel_qvl_agrees_on_every_sgx_vector(attestation_vectors: Path) -> None:
    root_der = (attestation_vectors / "dcap-qvl-samples" / "IntelSGXRootCA.der").read_bytes()
    cases = _sgx_cases(attestation_vectors)
    assert len(cases) >= 2
    for folder, case in cases:
        quote = (folder / case["quote"]).read_bytes()
        mapping = json.loads((folder / case["collateral"]).read_text())
        at = case["dcap_qvl_0_7_0"]["verify_at_now_secs"]["now_secs"]
        ours = verify_quote(quote, Collateral.from_mapping(mapping), at=at, policy=ANY_STATUS)
        theirs = _intel_verify(quote, mapping, root_der, at)
        assert theirs.pck_certificate_status.name == "STATUS_OK", case["name"]
        assert theirs.tcb_info_status.name == "STATUS_OK", case["name"]
        assert theirs.qe_identity_status.name == "STATUS_OK", case["name"]
        assert theirs.quote_status.name == INTEL_STATUS[ours.status], case["name"]
        assert theirs.enclave_report is not None
        assert theirs.enclave_report.mr_enclave == ours.mr_enclave
        assert theirs.enclave_report.report_data == ours.report_data


def test_intel_qvl_also_refuses_a_flipped_quote_signature(attestation_vectors: Path) -> None:
    root_der = (attestation_vectors / "dcap-qvl-samples" / "IntelSGXRootCA.der").read_bytes()
    folder, case = _sgx_cases(attestation_vectors)[0]
    quote = bytearray((folder / case["quote"]).read_bytes())
    quote[48 + 384 + 4 + 5] ^= 1  # inside the ECDSA signature (quote v3 layout)
    mapping = json.loads((folder / case["collateral"]).read_text())
    at = case["dcap_qvl_0_7_0"]["verify_at_now_secs"]["now_secs"]
    theirs = _intel_verify(bytes(quote), mapping, root_der, at)
    assert theirs.quote_status.name not in INTEL_STATUS.values()
