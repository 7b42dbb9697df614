"""Quote parsing against real DCAP quotes, and the parser's behaviour on malformed input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealpod.attestation.quote import (
    CertificationDataType,
    SGXReportBody,
    TDReport,
    parse_quote,
)
from sealpod.errors import QuoteFormatError

_VECTOR_DIRS = ("dcap-qvl-samples", "automata-dcap", "go-tdx-guest-2023")


def _vectors(root: Path) -> list[tuple[str, bytes, dict[str, Any]]]:
    found = []
    for folder in _VECTOR_DIRS:
        for entry in json.loads((root / folder / "expected.json").read_text()):
            found.append((entry["name"], (root / folder / entry["quote"]).read_bytes(), entry))
    return found


@pytest.fixture(scope="module")
def vectors(attestation_vectors: Path) -> list[tuple[str, bytes, dict[str, Any]]]:
    return _vectors(attestation_vectors)


def test_every_vector_field_matches_expected(
    vectors: list[tuple[str, bytes, dict[str, Any]]],
) -> None:
    assert len(vectors) >= 6
    for name, raw, entry in vectors:
        fields = entry["quote_fields"]
        quote = parse_quote(raw)
        assert quote.version == fields["version"], name
        assert quote.header.tee_type == int(fields["tee_type"], 16), name
        assert quote.header.attestation_key_type == fields["attestation_key_type"], name
        assert quote.header.qe_svn == fields["qe_svn"], name
        assert quote.header.pce_svn == fields["pce_svn"], name
        assert quote.header.qe_vendor_id.hex() == fields["qe_vendor_id"], name
        body = quote.body
        assert body.report_data.hex() == fields["report_data"].lower(), name
        if isinstance(body, SGXReportBody):
            assert body.mr_enclave.hex() == fields["mr_enclave"], name
            assert body.mr_signer.hex() == fields["mr_signer"], name
            assert body.attributes.hex() == fields["attributes"], name
            assert body.debug is fields["debug"], name
            assert body.isv_prod_id == fields["isv_prod_id"], name
            assert body.isv_svn == fields["isv_svn"], name
            assert body.cpu_svn.hex() == fields["cpu_svn"], name
        else:
            assert isinstance(body, TDReport)
            assert body.mr_td.hex() == fields["mr_td"], name
            assert body.rtmr0.hex() == fields["rtmr0"], name
            assert body.rtmr3.hex() == fields["rtmr3"], name
            assert body.tee_tcb_svn.hex() == fields["tee_tcb_svn"], name
            assert body.td_attributes.hex() == fields["td_attributes"], name
        # Every vector carries a 3-certificate PCK chain (leaf, PCK CA, root).
        assert len(quote.certification_data.pck_chain_certificates()) == 3, name
        assert quote.certification_data.cert_type == CertificationDataType.PCK_CERT_CHAIN


def test_round_trip_reproduces_the_quote_bytes(
    vectors: list[tuple[str, bytes, dict[str, Any]]],
) -> None:
    for name, raw, _ in vectors:
        rebuilt = parse_quote(raw).to_bytes()
        assert raw.startswith(rebuilt), name
        assert parse_quote(rebuilt) == parse_quote(raw), name


def test_trailing_bytes_are_not_part_of_the_quote(
    vectors: list[tuple[str, bytes, dict[str, Any]]],
) -> None:
    # The automata TDX vector is zero-padded to 8000 bytes; the quote itself is shorter.
    padded = [
        (name, raw) for name, raw, _ in vectors if len(parse_quote(raw).to_bytes()) < len(raw)
    ]
    assert padded, "expected at least one vector with trailing bytes"
    for name, raw in padded:
        assert parse_quote(raw + b"\xff" * 100).to_bytes() == parse_quote(raw).to_bytes(), name


def test_v5_sample_parses_as_td_report_15(attestation_vectors: Path) -> None:
    raw = (attestation_vectors / "go-tdx-guest-2023" / "quote_v5_sample.dat").read_bytes()
    quote = parse_quote(raw)
    assert quote.version == 5
    assert quote.body_type == 3
    assert isinstance(quote.body, TDReport) and quote.body.is_v15
    assert quote.to_bytes() == raw[: len(quote.to_bytes())]


def test_every_truncation_is_a_quote_format_error(
    vectors: list[tuple[str, bytes, dict[str, Any]]],
) -> None:
    _, raw, _ = vectors[0]
    true_length = len(parse_quote(raw).to_bytes())
    for cut in range(0, true_length, 7):
        with pytest.raises(QuoteFormatError):
            parse_quote(raw[:cut])


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (0, b"\x09\x00", "unsupported quote version 9"),
        (2, b"\x03\x00", "attestation key type 3"),
        (4, b"\x81\x00\x00\x00", "quote v3 must have tee_type SGX"),
        (4, b"\x42\x00\x00\x00", "unknown tee_type"),
    ],
)
def test_bad_header_field_is_named(
    vectors: list[tuple[str, bytes, dict[str, Any]]], offset: int, value: bytes, message: str
) -> None:
    raw = next(r for _, r, e in vectors if e["quote_fields"]["version"] == 3)
    bad = raw[:offset] + value + raw[offset + len(value) :]
    with pytest.raises(QuoteFormatError, match=message):
        parse_quote(bad)


def test_oversized_signature_length_is_refused(
    vectors: list[tuple[str, bytes, dict[str, Any]]],
) -> None:
    raw = next(r for _, r, e in vectors if e["quote_fields"]["version"] == 3)
    offset = 48 + 384
    bad = raw[:offset] + (0xFFFFFFF0).to_bytes(4, "little") + raw[offset + 4 :]
    with pytest.raises(QuoteFormatError, match="signature data"):
        parse_quote(bad)


def test_non_bytes_input_is_a_quote_format_error() -> None:
    with pytest.raises(QuoteFormatError):
        parse_quote("not bytes")  # type: ignore[arg-type]


# --- fuzzing: thousands of inputs, only QuoteFormatError may escape --------------------------


def _parse_or_format_error(data: bytes) -> None:
    try:
        quote = parse_quote(data)
    except QuoteFormatError:
        return
    # Whatever parses must serialise back to a prefix of the input.
    assert data.startswith(quote.to_bytes())


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=6000))
def test_fuzz_random_bytes(data: bytes) -> None:
    _parse_or_format_error(data)


@pytest.fixture(scope="module")
def seed_quotes(attestation_vectors: Path) -> list[bytes]:
    return [raw for _, raw, _ in _vectors(attestation_vectors)]


@settings(
    max_examples=2500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_fuzz_mutated_real_quotes(seed_quotes: list[bytes], data: st.DataObject) -> None:
    raw = bytearray(data.draw(st.sampled_from(seed_quotes)))
    for _ in range(data.draw(st.integers(1, 8))):
        kind = data.draw(st.sampled_from(["flip", "cut", "length", "insert"]))
        if not raw:
            break
        position = data.draw(st.integers(0, len(raw) - 1))
        if kind == "flip":
            raw[position] ^= data.draw(st.integers(1, 255))
        elif kind == "cut":
            del raw[position:]
        elif kind == "insert":
            raw[position:position] = data.draw(st.binary(min_size=1, max_size=16))
        else:
            # Overwrite a plausible length field with an extreme value.
            value = data.draw(st.sampled_from([0, 1, 0xFFFF, 0xFFFFFFFF, len(raw)]))
            raw[position : position + 4] = value.to_bytes(4, "little")
    _parse_or_format_error(bytes(raw))
