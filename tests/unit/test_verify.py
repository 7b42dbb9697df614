"""verify_quote against the real DCAP vectors: results, time windows, one test per attack.

Expected values come from each vector's ``expected.json`` (results observed with dcap-qvl and,
for SGX, Intel's QVL) and offsets from Intel's quote v3 layout, never from the code under test.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from sealpod.attestation.collateral import Collateral
from sealpod.attestation.policy import KNOWN_TCB_STATUSES, AppraisalPolicy
from sealpod.attestation.verify import (
    INTEL_ROOT_CA_SHA256,
    intel_root,
    load_trust_root,
    verify_quote,
)
from sealpod.errors import ConfigError, QuoteFormatError, VerificationError

VECTOR_DIRS = ("dcap-qvl-samples", "automata-dcap", "go-tdx-guest-2023")
# Anything Intel may say, except Revoked: lets a test observe the raw status.
ANY_STATUS = AppraisalPolicy(accepted_tcb_statuses=tuple(sorted(KNOWN_TCB_STATUSES - {"Revoked"})))
# dcap-qvl error text in expected.json -> the stable reason the brief assigns to it.
EXPECTED_REASONS = {
    "No matching TCB level found": "tcb_level_not_found",
    "TCBInfo expired": "collateral_expired",
    "QE Identity expired": "collateral_expired",
    "CrlExpired": "collateral_expired",
    "issue date is in the future": "collateral_not_yet_valid",
}

# Intel SGX ECDSA quote v3 layout (SGX ECDSA QuoteLibReference, appendix A).
HEADER = 48
BODY = 384
SIG_LEN = HEADER + BODY  # uint32 signature data length
SIGNATURE = SIG_LEN + 4  # 64-byte ECDSA signature over header+body
ATT_KEY = SIGNATURE + 64  # 64-byte attestation public key
QE_REPORT = ATT_KEY + 64  # 384-byte QE report body
QE_SIGNATURE = QE_REPORT + 384  # 64-byte signature of the QE report by the PCK
QE_AUTH = QE_SIGNATURE + 64  # uint16 size + QE authentication data
# Offsets inside the SGX report body (Intel SDM REPORTBODY).
MRENCLAVE_IN_BODY = 64
REPORT_DATA_IN_BODY = 320


def _expected_reason(error: str) -> str:
    for needle, reason in EXPECTED_REASONS.items():
        if needle in error:
            return reason
    raise AssertionError(f"no reason known for {error!r}")


def _cases(vectors: Path) -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for name in VECTOR_DIRS:
        folder = vectors / name
        for case in json.loads((folder / "expected.json").read_text()):
            out.append((folder, case))
    return out


def _load(folder: Path, case: dict[str, Any]) -> tuple[bytes, Collateral]:
    quote = (folder / case["quote"]).read_bytes()
    return quote, Collateral.from_dcap_qvl_json((folder / case["collateral"]).read_text())


@pytest.fixture(scope="module")
def sgx_case(attestation_vectors: Path) -> tuple[bytes, dict[str, Any], int, dict[str, Any]]:
    """The dcap-qvl sample SGX quote (Processor CA), its collateral mapping, time and case."""
    folder = attestation_vectors / "dcap-qvl-samples"
    case = next(
        c for c in json.loads((folder / "expected.json").read_text()) if c["quote"] == "sgx_quote"
    )
    quote = (folder / case["quote"]).read_bytes()
    mapping = json.loads((folder / case["collateral"]).read_text())
    return quote, mapping, case["dcap_qvl_0_7_0"]["verify_at_now_secs"]["now_secs"], case


@pytest.fixture(scope="module")
def sgx_policy(sgx_case: tuple[bytes, dict[str, Any], int, dict[str, Any]]) -> AppraisalPolicy:
    status = sgx_case[3]["dcap_qvl_0_7_0"]["verify_at_now_secs"]["status"]
    return AppraisalPolicy(accepted_tcb_statuses=(status,))


def _flip(data: bytes, offset: int) -> bytes:
    out = bytearray(data)
    out[offset] ^= 0x01
    return bytes(out)


def _refused(
    quote: bytes,
    mapping: dict[str, Any],
    at: int,
    reasons: set[str] | str,
    policy: AppraisalPolicy = ANY_STATUS,
    **kwargs: Any,
) -> VerificationError:
    collateral = Collateral.from_mapping(mapping)
    with pytest.raises(VerificationError) as info:
        verify_quote(quote, collateral, at=at, policy=policy, **kwargs)
    wanted = {reasons} if isinstance(reasons, str) else reasons
    assert info.value.reason in wanted, str(info.value)
    assert "\n" not in str(info.value)
    return info.value


# -- results of every vector ----------------------------------------------------------------------


def test_every_vector_gives_the_expected_result(attestation_vectors: Path) -> None:
    cases = _cases(attestation_vectors)
    assert len(cases) >= 6
    for folder, case in cases:
        quote, collateral = _load(folder, case)
        expected = case["dcap_qvl_0_7_0"]["verify_at_now_secs"]
        fields = case["quote_fields"]
        if not expected["ok"]:
            with pytest.raises(VerificationError) as info:
                verify_quote(quote, collateral, at=expected["now_secs"], policy=ANY_STATUS)
            assert info.value.reason == _expected_reason(expected["error"]), case["name"]
            continue
        evidence = verify_quote(quote, collateral, at=expected["now_secs"], policy=ANY_STATUS)
        assert evidence.status == expected["status"], case["name"]
        assert list(evidence.advisory_ids) == expected["advisory_ids"], case["name"]
        assert evidence.simulated is False
        assert evidence.verified_at == expected["now_secs"]
        assert evidence.trust_root_sha256 == INTEL_ROOT_CA_SHA256
        assert evidence.fmspc == fields["fmspc"].upper()
        assert evidence.report_data.hex() == fields["report_data"]
        if fields["tee_type"] == "0x0":
            assert evidence.tee == "sgx"
            assert (
                evidence.mr_enclave is not None
                and evidence.mr_enclave.hex() == fields["mr_enclave"]
            )
            assert (
                evidence.mr_signer is not None and evidence.mr_signer.hex() == fields["mr_signer"]
            )
            assert evidence.isv_prod_id == fields["isv_prod_id"]
            assert evidence.isv_svn == fields["isv_svn"]
            assert evidence.debug == fields["debug"]
        else:
            assert evidence.tee == "tdx"
            assert evidence.mr_td is not None and evidence.mr_td.hex() == fields["mr_td"]
            assert evidence.rtmrs is not None
            assert evidence.rtmrs[0].hex() == fields["rtmr0"]
            assert evidence.rtmrs[3].hex() == fields["rtmr3"]
            assert evidence.debug == bool(bytes.fromhex(fields["td_attributes"])[0] & 1)
        as_dict = evidence.to_dict()
        assert as_dict["simulated"] is False
        assert as_dict["status"] == expected["status"]
        assert json.loads(json.dumps(as_dict)) == as_dict


def test_every_vector_is_refused_after_its_window(attestation_vectors: Path) -> None:
    for folder, case in _cases(attestation_vectors):
        quote, collateral = _load(folder, case)
        after = case["dcap_qvl_0_7_0"]["verify_after_window"]
        with pytest.raises(VerificationError) as info:
            verify_quote(quote, collateral, at=after["now_secs"], policy=ANY_STATUS)
        assert info.value.reason == _expected_reason(after["error"]), case["name"]


def test_every_vector_is_refused_before_its_window(attestation_vectors: Path) -> None:
    for folder, case in _cases(attestation_vectors):
        quote, collateral = _load(folder, case)
        before = case["dcap_qvl_0_7_0"]["verify_before_window"]
        with pytest.raises(VerificationError) as info:
            verify_quote(quote, collateral, at=before["now_secs"], policy=ANY_STATUS)
        assert info.value.reason == _expected_reason(before["error"]), case["name"]


def test_window_edges(attestation_vectors: Path) -> None:
    """Accepted on the first second of the window and just before its end, refused outside."""
    for folder, case in _cases(attestation_vectors):
        if not case["dcap_qvl_0_7_0"]["verify_at_now_secs"]["ok"]:
            continue
        quote, collateral = _load(folder, case)
        window = case["collateral_window"]
        for at in (window["not_before_secs"], window["not_after_secs"] - 1):
            verify_quote(quote, collateral, at=at, policy=ANY_STATUS)
        with pytest.raises(VerificationError) as early:
            verify_quote(quote, collateral, at=window["not_before_secs"] - 1, policy=ANY_STATUS)
        assert early.value.reason == "collateral_not_yet_valid"
        with pytest.raises(VerificationError) as late:
            verify_quote(quote, collateral, at=window["not_after_secs"] + 1, policy=ANY_STATUS)
        assert late.value.reason == "collateral_expired"


def test_far_future_is_refused(sgx_case: tuple[bytes, dict[str, Any], int, dict[str, Any]]) -> None:
    quote, mapping, _, _ = sgx_case
    _refused(quote, mapping, 4_000_000_000, "collateral_expired")


def test_trailing_bytes_after_the_quote_are_ignored(
    sgx_case: tuple[bytes, dict[str, Any], int, dict[str, Any]], sgx_policy: AppraisalPolicy
) -> None:
    quote, mapping, at, case = sgx_case
    padded = verify_quote(
        quote + b"\0" * 70, Collateral.from_mapping(mapping), at=at, policy=sgx_policy
    )
    assert padded.mr_enclave is not None
    assert padded.mr_enclave.hex() == case["quote_fields"]["mr_enclave"]


def test_dcap_qvl_collateral_object_is_accepted(
    sgx_case: tuple[bytes, dict[str, Any], int, dict[str, Any]], sgx_policy: AppraisalPolicy
) -> None:
    quote, mapping, at, case = sgx_case
    raw = Collateral.from_mapping(mapping).to_dcap_qvl()
    evidence = verify_quote(quote, raw, at=at, policy=sgx_policy)
    assert evidence.fmspc == case["quote_fields"]["fmspc"].upper()


# -- the pinned root ------------------------------------------------------------------------------


def test_shipped_root_is_intels(attestation_vectors: Path) -> None:
    root = intel_root()
    vector_root = (attestation_vectors / "dcap-qvl-samples" / "IntelSGXRootCA.der").read_bytes()
    assert root.der == vector_root
    assert root.is_intel
    fingerprint = "44:A0:19:6B:2B:99:F8:89:B8:E1:49:E9:5B:80:7A:35:0E:74:24:96:43:99:E8:85:A7:CB:B8:CC:FA:B6:74:D3"
    assert hashlib.sha256(root.der).hexdigest() == fingerprint.replace(":", "").lower()


def test_intel_root_given_explicitly_is_not_simulated(
    sgx_case: tuple[bytes, dict[str, Any], int, dict[str, Any]],
    sgx_policy: AppraisalPolicy,
    attestation_vectors: Path,
) -> None:
    quote, mapping, at, _ = sgx_case
    pem = (attestation_vectors / "go-tdx-guest-2023" / "trusted_root.pem").read_bytes()
    root = load_trust_root(pem)
    assert load_trust_root(root) == root
    evidence = verify_quote(
        quote, Collateral.from_mapping(mapping), at=at, policy=sgx_policy, trust_root_der=root
    )
    assert evidence.simulated is False


def _foreign_root() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name.from_rfc4514_string("CN=Intel SGX Root CA,O=Intel Corporation")
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=4000))
        .not_valid_after(now + dt.timedelta(days=4000))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(Encoding.DER)


def test_foreign_root_is_refused(
    sgx_case: tuple[bytes, dict[str, Any], int, dict[str, Any]],
) -> None:
    """An attacker's root named like Intel's cannot stand in for the pinned one."""
    quote, mapping, at, _ = sgx_case
    _refused(quote, mapping, at, "untrusted_root", trust_root_der=_foreign_root())


def test_foreign_simulated_root_does_not_help_an_intel_quote_pass_as_simulated(
    sgx_case: tuple[bytes, dict[str, Any], int, dict[str, Any]], sgx_policy: AppraisalPolicy
) -> None:
    quote, mapping, at, _ = sgx_case
    evidence = verify_quote(
        quote,
        Collateral.from_mapping(mapping),
        at=at,
        policy=sgx_policy,
        simulated_root_der=_foreign_root(),
    )
    assert evidence.simulated is False


def test_garbage_trust_root_is_a_config_error(
    sgx_case: tuple[bytes, dict[str, Any], int, dict[str, Any]],
) -> None:
    quote, mapping, at, _ = sgx_case
    with pytest.raises(ConfigError):
        verify_quote(
            quote, Collateral.from_mapping(mapping), at=at, policy=ANY_STATUS, trust_root_der=b"xx"
        )
    with pytest.raises(ConfigError):
        load_trust_root(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


def test_intel_root_as_simulated_root_is_a_config_error(
    sgx_case: tuple[bytes, dict[str, Any], int, dict[str, Any]],
) -> None:
    quote, mapping, at, _ = sgx_case
    with pytest.raises(ConfigError):
        verify_quote(
            quote,
            Collateral.from_mapping(mapping),
            at=at,
            policy=ANY_STATUS,
            simulated_root_der=intel_root().der,
        )


def test_bad_time_is_a_config_error(
    sgx_case: tuple[bytes, dict[str, Any], int, dict[str, Any]],
) -> None:
    quote, mapping, _, _ = sgx_case
    for at in (-1, 1.5, True):
        with pytest.raises(ConfigError):
            verify_quote(quote, Collateral.from_mapping(mapping), at=at, policy=ANY_STATUS)  # type: ignore[arg-type]


# -- one test per attack on the quote ----------------------------------------------------------


def test_truncated_quote_is_a_format_error(
    sgx_case: tuple[bytes, dict[str, Any], int, dict[str, Any]],
) -> None:
    quote, mapping, at, _ = sgx_case
    with pytest.raises(QuoteFormatError):
        verify_quote(quote[:1000], Collateral.from_mapping(mapping), at=at, policy=ANY_STATUS)


def test_flipped_byte_in_quote_header_is_refused(
    sgx_case: tuple[bytes, dict[str, Any], int, dict[str, Any]],
) -> None:
    quote, mapping, at, _ = sgx_case
    _refused(_flip(quote, 30), mapping, at, "bad_quote_signature")  # in user_data


def test_flipped_byte_in_mrenclave_is_refused(
    sgx_case: tuple[bytes, dict[str, Any], int, dict[str, Any]],
) -> None:
    quote, mapping, at, _ = sgx_case
    _refused(_flip(quote, HEADER + MRENCLAVE_IN_BODY), mapping, at, "bad_quote_signature")


def test_flipped_byte_in_report_data_is_refused(
    sgx_case: tuple[bytes, dict[str, Any], int, dict[str, Any]],
) -> None:
    quote, mapping, at, _ = sgx_case
    _refused(_flip(quote, HEADER + REPORT_DATA_IN_BODY), mapping, at, "bad_quote_signature")


def test_flipped_byte_in_quote_signature_is_refused(
    sgx_case: tuple[bytes, dict[str, Any], int, dict[str, Any]],
) -> None:
    quote, mapping, at, _ = sgx_case
    _refused(_flip(quote, SIGNATURE + 5), mapping, at, "bad_quote_signature")


def test_replaced_attestation_key_is_refused(
    sgx_case: tuple[bytes, dict[str, Any], int, dict[str, Any]],
) -> None:
    """The QE report binds the attestation key (report_data = SHA-256(key || auth data))."""
    quote, mapping, at, _ = sgx_case
    _refused(_flip(quote, ATT_KEY + 5), mapping, at, "bad_qe_report")


def test_flipped_byte_in_qe_report_is_refused(
    sgx_case: tuple[bytes, dict[str, Any], int, dict[str, Any]],
) -> None:
    quote, mapping, at, _ = sgx_case
    _refused(_flip(quote, QE_REPORT + 64), mapping, at, "bad_qe_report")


def test_flipped_byte_in_qe_report_signature_is_refused(
    sgx_case: tuple[bytes, dict[str, Any], int, dict[str, Any]],
) -> None:
    quote, mapping, at, _ = sgx_case
    _refused(_flip(quote, QE_SIGNATURE + 10), mapping, at, "bad_qe_report")


def test_flipped_byte_in_qe_auth_data_is_refused(
    sgx_case: tuple[bytes, dict[str, Any], int, dict[str, Any]],
) -> None:
    quote, mapping, at, _ = sgx_case
    (auth_size,) = struct.unpack_from("<H", quote, QE_AUTH)
    assert auth_size > 0
    _refused(_flip(quote, QE_AUTH + 2), mapping, at, "bad_qe_report")


def _pck_chain_offset(quote: bytes) -> int:
    (auth_size,) = struct.unpack_from("<H", quote, QE_AUTH)
    cert_data = QE_AUTH + 2 + auth_size
    cert_type, _size = struct.unpack_from("<HI", quote, cert_data)
    assert cert_type == 5  # PEM PCK chain
    return cert_data + 6


def test_flipped_bit_in_pck_leaf_certificate_is_refused(
    sgx_case: tuple[bytes, dict[str, Any], int, dict[str, Any]],
) -> None:
    quote, mapping, at, _ = sgx_case
    start = _pck_chain_offset(quote)
    # Inside the leaf's base64, well past the header line: a bit of the DER changes.
    target = start + quote[start:].index(b"\n", 40) + 200
    _refused(_flip(quote, target), mapping, at, "bad_chain")


def test_flipped_bit_in_pck_ca_certificate_is_refused(
    sgx_case: tuple[bytes, dict[str, Any], int, dict[str, Any]],
) -> None:
    quote, mapping, at, _ = sgx_case
    start = _pck_chain_offset(quote)
    second = quote.index(b"-----BEGIN CERTIFICATE-----", start + 10)
    _refused(_flip(quote, second + 400), mapping, at, {"bad_chain", "untrusted_root"})


def test_flipped_bit_in_chain_root_certificate_is_refused(
    sgx_case: tuple[bytes, dict[str, Any], int, dict[str, Any]],
) -> None:
    quote, mapping, at, _ = sgx_case
    last = quote.rindex(b"-----BEGIN CERTIFICATE-----")
    _refused(_flip(quote, last + 300), mapping, at, {"bad_chain", "untrusted_root"})


# -- one test per attack on the collateral -------------------------------------------------------


def _flip_hex(value: str, index: int) -> str:
    raw = bytearray(bytes.fromhex(value))
    raw[index] ^= 0x01
    return raw.hex()


def test_flipped_byte_in_tcb_info_signature_is_refused(
    sgx_case: tuple[bytes, dict[str, Any], int, dict[str, Any]],
) -> None:
    quote, mapping, at, _ = sgx_case
    changed = dict(mapping, tcb_info_signature=_flip_hex(mapping["tcb_info_signature"], 3))
    _refused(quote, changed, at, "bad_collateral_signature")


def test_upgraded_status_in_signed_tcb_info_is_refused(
    sgx_case: tuple[bytes, dict[str, Any], int, dict[str, Any]],
) -> None:
    """Editing the signed TCB info to mark every level UpToDate breaks its signature."""
    quote, mapping, at, _ = sgx_case
    info = mapping["tcb_info"]
    edited = info.replace(
        '"tcbStatus":"ConfigurationAndSWHardeningNeeded"', '"tcbStatus":"UpToDate"'
    )
    assert edited != info
    _refused(quote, dict(mapping, tcb_info=edited), at, "bad_collateral_signature")


def test_reformatted_tcb_info_is_refused(
    sgx_case: tuple[bytes, dict[str, Any], int, dict[str, Any]],
) -> None:
    """Same JSON, different bytes: the signature covers the bytes, not the meaning."""
    quote, mapping, at, _ = sgx_case
    reformatted = json.dumps(json.loads(mapping["tcb_info"]), indent=1)
    _refused(quote, dict(mapping, tcb_info=reformatted), at, "bad_collateral_signature")


def test_flipped_byte_in_qe_identity_signature_is_refused(
    sgx_case: tuple[bytes, dict[str, Any], int, dict[str, Any]],
) -> None:
    quote, mapping, at, _ = sgx_case
    changed = dict(mapping, qe_identity_signature=_flip_hex(mapping["qe_identity_signature"], 40))
    _refused(quote, changed, at, "bad_collateral_signature")


def test_edited_signed_qe_identity_is_refused(
    sgx_case: tuple[bytes, dict[str, Any], int, dict[str, Any]],
) -> None:
    quote, mapping, at, _ = sgx_case
    identity = json.loads(mapping["qe_identity"])
    edited = mapping["qe_identity"].replace(
        f'"isvprodid":{identity["isvprodid"]}', f'"isvprodid":{identity["isvprodid"] + 1}'
    )
    assert edited != mapping["qe_identity"]
    _refused(quote, dict(mapping, qe_identity=edited), at, "bad_collateral_signature")


def test_flipped_byte_in_root_ca_crl_is_refused(
    sgx_case: tuple[bytes, dict[str, Any], int, dict[str, Any]],
) -> None:
    quote, mapping, at, _ = sgx_case
    crl = mapping["root_ca_crl"]
    changed = dict(mapping, root_ca_crl=_flip_hex(crl, len(crl) // 2 - 10))  # in the signature
    _refused(quote, changed, at, "bad_crl")


def test_flipped_byte_in_pck_crl_is_refused(
    sgx_case: tuple[bytes, dict[str, Any], int, dict[str, Any]],
) -> None:
    quote, mapping, at, _ = sgx_case
    crl = mapping["pck_crl"]
    changed = dict(mapping, pck_crl=_flip_hex(crl, len(crl) // 2 - 10))
    _refused(quote, changed, at, "bad_crl")


def test_flipped_bit_in_tcb_signing_certificate_is_refused(
    sgx_case: tuple[bytes, dict[str, Any], int, dict[str, Any]],
) -> None:
    quote, mapping, at, _ = sgx_case
    chain = mapping["tcb_info_issuer_chain"]
    index = 300
    replacement = "B" if chain[index] != "B" else "C"
    changed = dict(mapping, tcb_info_issuer_chain=chain[:index] + replacement + chain[index + 1 :])
    _refused(quote, changed, at, "bad_chain")


def test_collateral_of_another_platform_is_refused(attestation_vectors: Path) -> None:
    """An SGX quote with TCB info for another FMSPC (and another CA's CRL) is refused."""
    folder = attestation_vectors / "automata-dcap"
    case = json.loads((folder / "expected.json").read_text())[0]
    mapping = json.loads((folder / case["collateral"]).read_text())
    sgx_quote = (attestation_vectors / "dcap-qvl-samples" / "sgx_quote").read_bytes()
    at = case["dcap_qvl_0_7_0"]["verify_at_now_secs"]["now_secs"]
    _refused(sgx_quote, mapping, at, {"fmspc_mismatch", "bad_crl", "bad_chain"})


def test_tdx_collateral_for_an_sgx_quote_is_refused(
    sgx_case: tuple[bytes, dict[str, Any], int, dict[str, Any]], attestation_vectors: Path
) -> None:
    quote, _, _, _ = sgx_case
    folder = attestation_vectors / "dcap-qvl-samples"
    case = next(
        c for c in json.loads((folder / "expected.json").read_text()) if c["quote"] == "tdx_quote"
    )
    mapping = json.loads((folder / case["collateral"]).read_text())
    at = case["dcap_qvl_0_7_0"]["verify_at_now_secs"]["now_secs"]
    with pytest.raises(VerificationError):
        verify_quote(quote, Collateral.from_mapping(mapping), at=at, policy=ANY_STATUS)


# -- appraisal through verify_quote on real evidence -------------------------------------------


def test_default_policy_refuses_configuration_needed(
    sgx_case: tuple[bytes, dict[str, Any], int, dict[str, Any]],
) -> None:
    quote, mapping, at, case = sgx_case
    assert case["dcap_qvl_0_7_0"]["verify_at_now_secs"]["status"] not in (
        "UpToDate",
        "SWHardeningNeeded",
    )
    _refused(quote, mapping, at, "tcb_status_not_accepted", policy=AppraisalPolicy())


def test_real_advisory_can_be_rejected(
    sgx_case: tuple[bytes, dict[str, Any], int, dict[str, Any]], sgx_policy: AppraisalPolicy
) -> None:
    quote, mapping, at, case = sgx_case
    advisory = case["dcap_qvl_0_7_0"]["verify_at_now_secs"]["advisory_ids"][-1]
    policy = sgx_policy.model_copy(update={"rejected_advisories": (advisory,)})
    _refused(quote, mapping, at, "advisory_rejected", policy=policy)


def test_real_identity_is_checked(
    sgx_case: tuple[bytes, dict[str, Any], int, dict[str, Any]], sgx_policy: AppraisalPolicy
) -> None:
    quote, mapping, at, case = sgx_case
    fields = case["quote_fields"]
    right = AppraisalPolicy.from_mapping(
        {
            "accepted_tcb_statuses": list(sgx_policy.accepted_tcb_statuses),
            "mrenclave": [fields["mr_enclave"]],
            "mrsigner": fields["mr_signer"],
            "isv_prod_id": fields["isv_prod_id"],
            "min_isv_svn": fields["isv_svn"],
            "expected_report_data": fields["report_data"],
        }
    )
    verify_quote(quote, Collateral.from_mapping(mapping), at=at, policy=right)
    wrong_enclave = right.model_copy(update={"mrenclave": (b"\0" * 32,)})
    _refused(quote, mapping, at, "mrenclave_mismatch", policy=wrong_enclave)
    wrong_signer = right.model_copy(update={"mrsigner": b"\0" * 32})
    _refused(quote, mapping, at, "mrsigner_mismatch", policy=wrong_signer)
    higher_svn = right.model_copy(update={"min_isv_svn": fields["isv_svn"] + 1})
    _refused(quote, mapping, at, "isv_svn_too_low", policy=higher_svn)
    other_data = right.model_copy(update={"expected_report_data": b"\1" * 64})
    _refused(quote, mapping, at, "report_data_mismatch", policy=other_data)


def test_real_tdx_identity_is_checked(attestation_vectors: Path) -> None:
    folder = attestation_vectors / "dcap-qvl-samples"
    case = next(
        c for c in json.loads((folder / "expected.json").read_text()) if c["quote"] == "tdx_quote"
    )
    quote, collateral = _load(folder, case)
    at = case["dcap_qvl_0_7_0"]["verify_at_now_secs"]["now_secs"]
    fields = case["quote_fields"]
    policy = AppraisalPolicy.from_mapping({"mr_td": fields["mr_td"], "rtmr0": fields["rtmr0"]})
    verify_quote(quote, collateral, at=at, policy=policy)
    with pytest.raises(VerificationError) as info:
        verify_quote(
            quote, collateral, at=at, policy=policy.model_copy(update={"rtmr0": b"\0" * 48})
        )
    assert info.value.reason == "rtmr_mismatch"
    with pytest.raises(VerificationError) as info:
        verify_quote(quote, collateral, at=at, policy=AppraisalPolicy(mrenclave=(b"\0" * 32,)))
    assert info.value.reason == "tee_mismatch"


def test_evidence_is_frozen(
    sgx_case: tuple[bytes, dict[str, Any], int, dict[str, Any]], sgx_policy: AppraisalPolicy
) -> None:
    quote, mapping, at, _ = sgx_case
    evidence = verify_quote(quote, Collateral.from_mapping(mapping), at=at, policy=sgx_policy)
    with pytest.raises(dataclasses.FrozenInstanceError):
        evidence.simulated = True  # type: ignore[misc]


def test_expired_raw_dcap_qvl_collateral_is_refused(attestation_vectors: Path) -> None:
    """Without our window pre-check, dcap-qvl's own expiry errors map to the same reasons."""
    for folder, case in _cases(attestation_vectors):
        quote, collateral = _load(folder, case)
        for key in ("verify_after_window", "verify_before_window"):
            expected = case["dcap_qvl_0_7_0"][key]
            with pytest.raises(VerificationError) as info:
                verify_quote(
                    quote, collateral.to_dcap_qvl(), at=expected["now_secs"], policy=ANY_STATUS
                )
            assert info.value.reason == _expected_reason(expected["error"]), case["name"]


def test_platform_below_every_tcb_level_is_refused(attestation_vectors: Path) -> None:
    """The negative vectors: genuine, Intel-signed collateral, but no TCB level matches."""
    negatives = [
        (folder, case)
        for folder, case in _cases(attestation_vectors)
        if not case["dcap_qvl_0_7_0"]["verify_at_now_secs"]["ok"]
    ]
    assert len(negatives) >= 2
    for folder, case in negatives:
        quote, collateral = _load(folder, case)
        expected = case["dcap_qvl_0_7_0"]["verify_at_now_secs"]
        with pytest.raises(VerificationError) as info:
            verify_quote(quote, collateral, at=expected["now_secs"], policy=ANY_STATUS)
        assert info.value.reason == "tcb_level_not_found", case["name"]
