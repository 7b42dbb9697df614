"""Collateral loading: dcap-qvl JSON, Intel PCS responses, validity windows, malformed input."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote as url_quote

import dcap_qvl
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from sealpod.attestation.collateral import Collateral, split_signed_body
from sealpod.errors import VerificationError

VECTOR_DIRS = ("dcap-qvl-samples", "automata-dcap", "go-tdx-guest-2023")


def _cases(vectors: Path) -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for name in VECTOR_DIRS:
        folder = vectors / name
        for case in json.loads((folder / "expected.json").read_text()):
            out.append((folder, case))
    return out


@pytest.fixture(scope="module")
def go_tdx(attestation_vectors: Path) -> Path:
    return attestation_vectors / "go-tdx-guest-2023"


def _pcs_kwargs(folder: Path) -> dict[str, Any]:
    """The go-tdx-guest PCS responses as Intel sent them, headers URL-encoded again."""
    return {
        "tcb_info_body": (folder / "sample_tcbInfo_response").read_bytes(),
        "tcb_info_issuer_chain": url_quote((folder / "tcb_info_issuer_chain.pem").read_text()),
        "qe_identity_body": (folder / "sample_qeIdentity_response").read_bytes(),
        "qe_identity_issuer_chain": url_quote(
            (folder / "qe_identity_issuer_chain.pem").read_text()
        ),
        "pck_crl": (folder / "pckcrl").read_bytes(),
        "pck_crl_issuer_chain": url_quote((folder / "pck_crl_issuer_chain.pem").read_text()),
        "root_ca_crl": (folder / "rootcrl.der").read_bytes(),
    }


def test_every_vector_collateral_loads_with_the_expected_window(attestation_vectors: Path) -> None:
    cases = _cases(attestation_vectors)
    assert len(cases) >= 6
    for folder, case in cases:
        collateral = Collateral.from_dcap_qvl_json((folder / case["collateral"]).read_text())
        window = case["collateral_window"]
        assert collateral.not_before == window["not_before_secs"], case["name"]
        assert collateral.not_after == window["not_after_secs"], case["name"]
        assert collateral.fmspc == case["quote_fields"]["fmspc"].upper(), case["name"]
        expected_tee = "tdx" if case["quote_fields"]["tee_type"] == "0x81" else "sgx"
        assert collateral.tee == expected_tee, case["name"]
        assert collateral.is_valid_at(window["not_before_secs"])
        assert collateral.is_valid_at(window["not_after_secs"] - 1)
        assert not collateral.is_valid_at(window["not_before_secs"] - 1)
        assert not collateral.is_valid_at(window["not_after_secs"] + 1)


def test_to_dcap_qvl_carries_every_field_and_is_built_once(attestation_vectors: Path) -> None:
    path = attestation_vectors / "dcap-qvl-samples" / "sgx_quote_collateral.json"
    raw = json.loads(path.read_text())
    collateral = Collateral.from_dcap_qvl_json(path.read_text())
    converted = collateral.to_dcap_qvl()
    assert converted is collateral.to_dcap_qvl()
    assert converted.tcb_info == raw["tcb_info"]
    assert converted.qe_identity == raw["qe_identity"]
    assert bytes(converted.root_ca_crl).hex() == raw["root_ca_crl"]
    assert bytes(converted.pck_crl).hex() == raw["pck_crl"]
    assert bytes(converted.tcb_info_signature).hex() == raw["tcb_info_signature"]
    assert bytes(converted.qe_identity_signature).hex() == raw["qe_identity_signature"]
    assert converted.pck_crl_issuer_chain == raw["pck_crl_issuer_chain"]
    # dcap-qvl's own parser reads the same JSON the same way.
    theirs = dcap_qvl.QuoteCollateralV3.from_json(path.read_text())
    assert theirs.tcb_info == converted.tcb_info
    assert bytes(theirs.root_ca_crl) == bytes(converted.root_ca_crl)


def test_mapping_round_trip(attestation_vectors: Path) -> None:
    path = attestation_vectors / "automata-dcap" / "tdx_v4_collateral.dcap-qvl.json"
    collateral = Collateral.from_dcap_qvl_json(path.read_text())
    assert collateral.to_mapping() == json.loads(path.read_text())
    assert Collateral.from_dcap_qvl_json(collateral.to_dcap_qvl_json()) == collateral


def test_from_dcap_qvl_object_reuses_it(attestation_vectors: Path) -> None:
    path = attestation_vectors / "dcap-qvl-samples" / "tdx_quote_collateral.json"
    theirs = dcap_qvl.QuoteCollateralV3.from_json(path.read_text())
    wrapped = Collateral.from_dcap_qvl(theirs)
    assert wrapped.to_dcap_qvl() is theirs
    assert wrapped == Collateral.from_dcap_qvl_json(path.read_text())


def test_pcs_responses_give_the_same_collateral_as_the_vector(go_tdx: Path) -> None:
    from_pcs = Collateral.from_pcs_responses(**_pcs_kwargs(go_tdx))
    reference = Collateral.from_dcap_qvl_json((go_tdx / "collateral_v4.dcap-qvl.json").read_text())
    assert from_pcs == reference


def test_signed_string_is_the_exact_substring_of_the_body(go_tdx: Path) -> None:
    body = (go_tdx / "sample_tcbInfo_response").read_text()
    signed, signature = split_signed_body(body, "tcbInfo", "tcb_info")
    assert signed in body
    assert body.startswith('{"tcbInfo":' + signed)
    assert json.loads(body)["signature"] == signature.hex()


def test_signed_string_keeps_whitespace_as_sent() -> None:
    body = '{ "signature" : "' + "ab" * 64 + '" ,\n "tcbInfo" :  {"b": 1,  "a" : [1, 2]} }'
    signed, signature = split_signed_body(body, "tcbInfo", "tcb_info")
    assert signed == '{"b": 1,  "a" : [1, 2]}'
    assert signature == bytes.fromhex("ab" * 64)


def test_pcs_pem_crl_is_accepted(go_tdx: Path) -> None:
    kwargs = _pcs_kwargs(go_tdx)
    kwargs["pck_crl"] = x509.load_der_x509_crl(kwargs["pck_crl"]).public_bytes(Encoding.PEM)
    kwargs["root_ca_crl"] = kwargs["root_ca_crl"].hex().encode()  # PCCS sends hex
    from_pcs = Collateral.from_pcs_responses(**kwargs)
    assert from_pcs.pck_crl == (go_tdx / "pckcrl").read_bytes()
    assert from_pcs.root_ca_crl == (go_tdx / "rootcrl.der").read_bytes()


def test_unencoded_issuer_chain_header_is_accepted(go_tdx: Path) -> None:
    kwargs = _pcs_kwargs(go_tdx)
    kwargs["tcb_info_issuer_chain"] = (go_tdx / "tcb_info_issuer_chain.pem").read_text()
    assert (
        Collateral.from_pcs_responses(**kwargs).tcb_info_issuer_chain
        == (go_tdx / "tcb_info_issuer_chain.pem").read_text()
    )


def test_repr_is_short(attestation_vectors: Path) -> None:
    path = attestation_vectors / "dcap-qvl-samples" / "sgx_quote_collateral.json"
    text = repr(Collateral.from_dcap_qvl_json(path.read_text()))
    assert len(text) < 200 and "00A067110000" in text


# -- malformed input: VerificationError("malformed_collateral") naming the field -------------


@pytest.fixture
def sgx_mapping(attestation_vectors: Path) -> dict[str, Any]:
    path = attestation_vectors / "dcap-qvl-samples" / "sgx_quote_collateral.json"
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _refused(data: Any, field: str) -> None:
    with pytest.raises(VerificationError) as info:
        Collateral.from_mapping(data)
    assert info.value.reason == "malformed_collateral"
    assert field in str(info.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tcb_info", "not json"),
        ("tcb_info", '{"issueDate": "2025-01-01T00:00:00Z"}'),
        ("tcb_info", '{"issueDate": "yesterday", "nextUpdate": "2025-01-01T00:00:00Z"}'),
        ("qe_identity", "[1, 2]"),
        ("root_ca_crl", "zz"),
        ("root_ca_crl", "3000"),
        ("pck_crl", 12),
        ("tcb_info_signature", "00" * 63),
        ("qe_identity_signature", "nothex"),
        ("tcb_info_issuer_chain", "no certificate here"),
        ("pck_crl_issuer_chain", None),
    ],
)
def test_malformed_field_is_named(sgx_mapping: dict[str, Any], field: str, value: Any) -> None:
    sgx_mapping[field] = value
    _refused(sgx_mapping, field)


def test_missing_field_is_named(sgx_mapping: dict[str, Any]) -> None:
    del sgx_mapping["qe_identity"]
    _refused(sgx_mapping, "qe_identity")


def test_unknown_field_is_named(sgx_mapping: dict[str, Any]) -> None:
    sgx_mapping["tcb_info_sig"] = "00"
    _refused(sgx_mapping, "tcb_info_sig")


def test_tcb_info_without_fmspc_is_refused(sgx_mapping: dict[str, Any]) -> None:
    info = json.loads(sgx_mapping["tcb_info"])
    del info["fmspc"]
    sgx_mapping["tcb_info"] = json.dumps(info)
    _refused(sgx_mapping, "tcb_info.fmspc")


def test_non_json_collateral_file_is_refused() -> None:
    with pytest.raises(VerificationError) as info:
        Collateral.from_dcap_qvl_json("{not json")
    assert info.value.reason == "malformed_collateral"
    _refused([1, 2], "collateral")


@pytest.mark.parametrize(
    "body",
    [
        "",
        "[]",
        '{"tcbInfo": {"a": 1}}',
        '{"signature": "' + "00" * 64 + '"}',
        '{"tcbInfo": [], "signature": "' + "00" * 64 + '"}',
        '{"tcbInfo": {"a": 1}, "signature": "00"}',
        '{"tcbInfo": {"a": 1}, "signature": "' + "00" * 64 + '"} trailing',
        '{"tcbInfo": {"a": 1}, "tcbInfo": {"a": 2}, "signature": "' + "00" * 64 + '"}',
        '{"tcbInfo": {"a": 1} "signature": "' + "00" * 64 + '"}',
        '{"tcbInfo": {"a": 1}, "signature": "' + "00" * 64 + '"',
    ],
)
def test_malformed_pcs_body_is_refused(body: str) -> None:
    with pytest.raises(VerificationError) as info:
        split_signed_body(body, "tcbInfo", "tcb_info")
    assert info.value.reason == "malformed_collateral"
    assert "tcb_info" in str(info.value)


def test_pcs_response_without_issuer_chain_is_refused(go_tdx: Path) -> None:
    kwargs = _pcs_kwargs(go_tdx)
    kwargs["qe_identity_issuer_chain"] = ""
    with pytest.raises(VerificationError) as info:
        Collateral.from_pcs_responses(**kwargs)
    assert "qe_identity_issuer_chain" in str(info.value)


def test_pcs_garbage_crl_is_refused(go_tdx: Path) -> None:
    kwargs = _pcs_kwargs(go_tdx)
    kwargs["pck_crl"] = b"<html>error</html>"
    with pytest.raises(VerificationError) as info:
        Collateral.from_pcs_responses(**kwargs)
    assert "pck_crl" in str(info.value)


def test_model_copy_validates(sgx_mapping: dict[str, Any]) -> None:
    collateral = Collateral.from_mapping(sgx_mapping)
    with pytest.raises(VerificationError) as info:
        collateral.model_copy(update={"tcb_info": "{}"})
    assert "tcb_info" in str(info.value)
    other = json.loads(collateral.tcb_info)
    other["fmspc"] = "00" * 6
    copied = collateral.model_copy(update={"tcb_info": json.dumps(other)})
    assert copied.fmspc == "000000000000"
    assert collateral.fmspc != copied.fmspc


def test_crl_next_update_is_exclusive_and_tcb_info_next_update_inclusive(
    attestation_vectors: Path,
) -> None:
    """RFC 5280: a CRL is expired at its nextUpdate; dcap-qvl: TCB info only after it."""
    folder = attestation_vectors / "dcap-qvl-samples"
    collateral = Collateral.from_dcap_qvl_json((folder / "sgx_quote_collateral.json").read_text())
    tcb_end = json.loads(collateral.tcb_info)["nextUpdate"]
    tcb_next = int(dt.datetime.fromisoformat(tcb_end.replace("Z", "+00:00")).timestamp())
    crl = x509.load_der_x509_crl(collateral.pck_crl)
    crl_next = int(crl.next_update_utc.timestamp()) if crl.next_update_utc else 0
    items = collateral.validity
    assert items["tcb_info"].expires_at == tcb_next + 1
    assert items["pck_crl"].expires_at == crl_next
