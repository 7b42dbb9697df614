"""The Intel SGX extension of PCK certificates: decoding real certificates, encoding, attacks."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import dcap_qvl
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from sealpod.attestation.pck import SGX_EXTENSION_OID, PCKConfiguration, PCKExtensions
from sealpod.attestation.quote import parse_quote
from sealpod.errors import QuoteFormatError

SGX_OID = x509.ObjectIdentifier("1.2.840.113741.1.13.1")

# (vector folder, expected.json entry name, quote file)
REAL_QUOTES = [
    ("dcap-qvl-samples", "sgx_v3_processor", "sgx_quote"),
    ("automata-dcap", "sgx_v3_platform", "sgx_v3_quote.bin"),
]


def _leaf_pem(quote_path: Path) -> bytes:
    certs = parse_quote(quote_path.read_bytes()).certification_data.pck_chain_certificates()
    return certs[0]


def _expected_fmspc(folder: Path, quote_file: str) -> str:
    entries = json.loads((folder / "expected.json").read_text())
    (entry,) = [e for e in entries if e["quote"] == quote_file]
    return str(entry["quote_fields"]["fmspc"])


def _raw_extension(cert: x509.Certificate) -> bytes:
    value = cert.extensions.get_extension_for_oid(SGX_OID).value
    assert isinstance(value, x509.UnrecognizedExtension)
    return value.value


# ---------------------------------------------------------------- hand-made DER for attacks


def tlv(tag: int, body: bytes) -> bytes:
    if len(body) < 0x80:
        return bytes([tag, len(body)]) + body
    if len(body) < 0x100:
        return bytes([tag, 0x81, len(body)]) + body
    return bytes([tag, 0x82]) + len(body).to_bytes(2, "big") + body


def oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        groups = [arc & 0x7F]
        arc >>= 7
        while arc:
            groups.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(groups))
    return tlv(0x06, bytes(out))


def entry(dotted: str, value: bytes) -> bytes:
    return tlv(0x30, oid(dotted) + value)


def handmade(
    *, skip: str = "", extra: bytes = b"", fmspc: bytes = b"\x00\x60\x6a\x00\x00\x00"
) -> bytes:
    base = SGX_EXTENSION_OID
    tcb = b"".join(entry(f"{base}.2.{i}", tlv(0x02, b"\x01")) for i in range(1, 17))
    tcb += entry(f"{base}.2.17", tlv(0x02, b"\x0d"))
    tcb += entry(f"{base}.2.18", tlv(0x04, bytes([1] * 16)))
    parts = {
        "ppid": entry(f"{base}.1", tlv(0x04, bytes(range(16)))),
        "tcb": entry(f"{base}.2", tlv(0x30, tcb)),
        "pceid": entry(f"{base}.3", tlv(0x04, b"\x00\x00")),
        "fmspc": entry(f"{base}.4", tlv(0x04, fmspc)),
        "type": entry(f"{base}.5", tlv(0x0A, b"\x00")),
    }
    body = b"".join(v for k, v in parts.items() if k != skip) + extra
    return tlv(0x30, body)


# ---------------------------------------------------------------- real certificates


@pytest.mark.parametrize(("folder", "name", "quote_file"), REAL_QUOTES)
def test_real_pck_certificate_decodes_with_expected_fmspc(
    attestation_vectors: Path, folder: str, name: str, quote_file: str
) -> None:
    pem = _leaf_pem(attestation_vectors / folder / quote_file)
    ext = PCKExtensions.from_certificate(x509.load_pem_x509_certificate(pem))
    assert ext.fmspc.hex().upper() == _expected_fmspc(attestation_vectors / folder, quote_file)


@pytest.mark.parametrize(("folder", "name", "quote_file"), REAL_QUOTES)
def test_real_pck_certificate_matches_dcap_qvl(
    attestation_vectors: Path, folder: str, name: str, quote_file: str
) -> None:
    pem = _leaf_pem(attestation_vectors / folder / quote_file)
    ours = PCKExtensions.from_pem_chain(pem)
    theirs = dcap_qvl.parse_pck_extension_from_pem(pem)
    assert ours.ppid == bytes(theirs.ppid)
    assert ours.cpu_svn == bytes(theirs.cpu_svn)
    assert ours.pce_svn == theirs.pce_svn
    assert ours.pce_id == bytes(theirs.pce_id)
    assert ours.fmspc == bytes(theirs.fmspc)
    assert ours.sgx_type == theirs.sgx_type
    instance = theirs.platform_instance_id
    assert ours.platform_instance_id == (bytes(instance) if instance is not None else None)
    for index, svn in enumerate(ours.tcb_component_svns, start=1):
        raw = theirs.get_value(f"{SGX_EXTENSION_OID}.2.{index}")
        assert int.from_bytes(bytes(raw), "big") == svn


@pytest.mark.parametrize(("folder", "name", "quote_file"), REAL_QUOTES)
def test_encoding_reproduces_intel_bytes(
    attestation_vectors: Path, folder: str, name: str, quote_file: str
) -> None:
    cert = x509.load_pem_x509_certificate(_leaf_pem(attestation_vectors / folder / quote_file))
    raw = _raw_extension(cert)
    assert PCKExtensions.from_der(raw).to_der() == raw


def test_platform_ca_certificate_carries_configuration(attestation_vectors: Path) -> None:
    pem = _leaf_pem(attestation_vectors / "automata-dcap" / "sgx_v3_quote.bin")
    ext = PCKExtensions.from_pem_chain(pem)
    theirs = dcap_qvl.parse_pck_extension_from_pem(pem)
    assert ext.configuration is not None
    for suffix, flag in (
        ("7.1", ext.configuration.dynamic_platform),
        ("7.2", ext.configuration.cached_keys),
        ("7.3", ext.configuration.smt_enabled),
    ):
        assert theirs.get_value(f"{SGX_EXTENSION_OID}.{suffix}") == (b"\xff" if flag else b"\x00")


def test_processor_ca_certificate_has_no_platform_fields(attestation_vectors: Path) -> None:
    pem = _leaf_pem(attestation_vectors / "dcap-qvl-samples" / "sgx_quote")
    ext = PCKExtensions.from_pem_chain(pem)
    assert ext.platform_instance_id is None
    assert ext.configuration is None


# ---------------------------------------------------------------- our encoding, read by dcap-qvl

_KEY = ec.generate_private_key(ec.SECP256R1())


def _cert_with(ext: PCKExtensions) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test PCK")])
    start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(_KEY.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=1))
        .add_extension(ext.to_extension(), critical=False)
        .sign(_KEY, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


extensions = st.builds(
    PCKExtensions,
    ppid=st.binary(min_size=16, max_size=16),
    tcb_component_svns=st.tuples(*[st.integers(0, 255)] * 16),
    pce_svn=st.integers(0, 0xFFFF),
    cpu_svn=st.binary(min_size=16, max_size=16),
    pce_id=st.binary(min_size=2, max_size=2),
    fmspc=st.binary(min_size=6, max_size=6),
    sgx_type=st.integers(0, 2),
    platform_instance_id=st.none() | st.binary(min_size=16, max_size=16),
    configuration=st.none()
    | st.builds(
        PCKConfiguration,
        dynamic_platform=st.none() | st.booleans(),
        cached_keys=st.none() | st.booleans(),
        smt_enabled=st.none() | st.booleans(),
    ),
)


@settings(max_examples=40, deadline=None)
@given(extensions)
def test_encoding_round_trips(ext: PCKExtensions) -> None:
    assert PCKExtensions.from_der(ext.to_der()) == ext


@settings(max_examples=25, deadline=None)
@given(extensions.filter(lambda ext: ext.pce_svn < 0x8000))
def test_dcap_qvl_reads_our_encoding(ext: PCKExtensions) -> None:
    # dcap-qvl 0.7 reads PCESVN from at most two DER bytes, so it cannot read 0x8000..0xFFFF
    # (three bytes in DER); real PCESVNs are far below that.
    theirs = dcap_qvl.parse_pck_extension_from_pem(_cert_with(ext))
    assert bytes(theirs.fmspc) == ext.fmspc
    assert bytes(theirs.cpu_svn) == ext.cpu_svn
    assert theirs.pce_svn == ext.pce_svn
    assert bytes(theirs.pce_id) == ext.pce_id
    assert bytes(theirs.ppid) == ext.ppid
    assert theirs.sgx_type == ext.sgx_type


# ---------------------------------------------------------------- attacks and malformed input


def test_handmade_extension_decodes() -> None:
    ext = PCKExtensions.from_der(handmade())
    assert ext.fmspc == bytes.fromhex("00606a000000")
    assert ext.tcb_component_svns == (1,) * 16
    assert ext.pce_svn == 13


def test_truncated_extension_is_refused() -> None:
    data = handmade()
    for cut in range(len(data)):
        with pytest.raises(QuoteFormatError):
            PCKExtensions.from_der(data[:cut])


def test_trailing_bytes_after_extension_are_refused() -> None:
    with pytest.raises(QuoteFormatError, match="trailing"):
        PCKExtensions.from_der(handmade() + b"\x00")


def test_duplicated_fmspc_entry_is_refused() -> None:
    duplicate = entry(f"{SGX_EXTENSION_OID}.4", tlv(0x04, b"\x99" * 6))
    with pytest.raises(QuoteFormatError, match="duplicated"):
        PCKExtensions.from_der(handmade(extra=duplicate))


def test_missing_fmspc_is_refused() -> None:
    with pytest.raises(QuoteFormatError, match="FMSPC"):
        PCKExtensions.from_der(handmade(skip="fmspc"))


def test_missing_tcb_is_refused() -> None:
    with pytest.raises(QuoteFormatError, match="TCB"):
        PCKExtensions.from_der(handmade(skip="tcb"))


def test_short_fmspc_is_refused() -> None:
    with pytest.raises(QuoteFormatError, match="FMSPC"):
        PCKExtensions.from_der(handmade(fmspc=b"\x00" * 5))


def _body(data: bytes) -> bytes:
    return data[4:] if data[1] == 0x82 else data[3:] if data[1] == 0x81 else data[2:]


def test_non_minimal_length_is_refused() -> None:
    body = _body(handmade())
    padded = b"\x30\x83" + len(body).to_bytes(3, "big") + body  # leading zero length byte
    with pytest.raises(QuoteFormatError, match="non-minimal"):
        PCKExtensions.from_der(padded)


def test_indefinite_length_is_refused() -> None:
    body = _body(handmade())
    with pytest.raises(QuoteFormatError, match="indefinite"):
        PCKExtensions.from_der(b"\x30\x80" + body + b"\x00\x00")


def test_negative_pcesvn_is_refused() -> None:
    base = SGX_EXTENSION_OID
    tcb = b"".join(entry(f"{base}.2.{i}", tlv(0x02, b"\x01")) for i in range(1, 17))
    tcb += entry(f"{base}.2.17", tlv(0x02, b"\xff"))  # -1
    tcb += entry(f"{base}.2.18", tlv(0x04, bytes(16)))
    data = tlv(
        0x30,
        entry(f"{base}.1", tlv(0x04, bytes(16)))
        + entry(f"{base}.2", tlv(0x30, tcb))
        + entry(f"{base}.3", tlv(0x04, b"\x00\x00"))
        + entry(f"{base}.4", tlv(0x04, bytes(6)))
        + entry(f"{base}.5", tlv(0x0A, b"\x00")),
    )
    with pytest.raises(QuoteFormatError, match="negative"):
        PCKExtensions.from_der(data)


def test_component_svn_above_255_is_refused() -> None:
    base = SGX_EXTENSION_OID
    tcb = entry(f"{base}.2.1", tlv(0x02, b"\x01\x00"))
    tcb += b"".join(entry(f"{base}.2.{i}", tlv(0x02, b"\x01")) for i in range(2, 17))
    tcb += entry(f"{base}.2.17", tlv(0x02, b"\x01"))
    tcb += entry(f"{base}.2.18", tlv(0x04, bytes(16)))
    data = tlv(
        0x30,
        entry(f"{base}.1", tlv(0x04, bytes(16)))
        + entry(f"{base}.2", tlv(0x30, tcb))
        + entry(f"{base}.3", tlv(0x04, b"\x00\x00"))
        + entry(f"{base}.4", tlv(0x04, bytes(6)))
        + entry(f"{base}.5", tlv(0x0A, b"\x00")),
    )
    with pytest.raises(QuoteFormatError, match="larger than 255"):
        PCKExtensions.from_der(data)


def test_wrong_tag_for_ppid_is_refused() -> None:
    base = SGX_EXTENSION_OID
    bad = handmade(skip="ppid", extra=entry(f"{base}.1", tlv(0x02, b"\x01")))
    with pytest.raises(QuoteFormatError, match="PPID"):
        PCKExtensions.from_der(bad)


def test_unknown_top_level_entry_is_ignored() -> None:
    future = entry(f"{SGX_EXTENSION_OID}.99", tlv(0x04, b"new"))
    assert PCKExtensions.from_der(handmade(extra=future)) == PCKExtensions.from_der(handmade())


def test_certificate_without_sgx_extension_is_refused() -> None:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not a PCK")])
    start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(_KEY.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=1))
        .sign(_KEY, hashes.SHA256())
    )
    with pytest.raises(QuoteFormatError, match="no Intel SGX extension"):
        PCKExtensions.from_certificate(cert)


def test_empty_pem_chain_is_refused() -> None:
    with pytest.raises(QuoteFormatError):
        PCKExtensions.from_pem_chain(b"no certificates here")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_escape_as_other_errors(data: bytes) -> None:
    try:
        PCKExtensions.from_der(data)
    except QuoteFormatError:
        pass


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 255))
def test_single_byte_corruption_never_escapes_as_other_errors(position: int, value: int) -> None:
    data = bytearray(handmade())
    data[position % len(data)] = value
    try:
        PCKExtensions.from_der(bytes(data))
    except QuoteFormatError:
        pass
