"""SIGSTRUCT layout, signing and verification.

Expected values come from the Intel SDM (Vol. 3D, 38.13, Table 38-19), from Gramine's
``sgx_arch.h`` constants, from Gramine PR #1287 (the DATE byte example) and from independent
arithmetic on the RSA numbers, never from the code under test.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from sealpod.errors import ConfigError, VerificationError
from sealpod.sgx import (
    SIGSTRUCT,
    SIGSTRUCT_LAYOUT,
    EnclaveSigningKey,
    new_sigstruct,
    sign_sigstruct,
    verify_sigstruct,
)

MRENCLAVE = bytes(range(32))
DATE = dt.date(2023, 4, 14)

# SDM Table 38-19 (with the KSS and CET fields), as (name, offset, size).
SDM_TABLE = [
    ("header", 0, 16),
    ("vendor", 16, 4),
    ("date", 20, 4),
    ("header2", 24, 16),
    ("swdefined", 40, 4),
    ("reserved1", 44, 84),
    ("modulus", 128, 384),
    ("exponent", 512, 4),
    ("signature", 516, 384),
    ("misc_select", 900, 4),
    ("misc_mask", 904, 4),
    ("cet_attributes", 908, 1),
    ("cet_attributes_mask", 909, 1),
    ("reserved2", 910, 2),
    ("isv_family_id", 912, 16),
    ("attributes", 928, 16),
    ("attribute_mask", 944, 16),
    ("enclave_hash", 960, 32),
    ("reserved3", 992, 16),
    ("isv_ext_prod_id", 1008, 16),
    ("isv_prod_id", 1024, 2),
    ("isv_svn", 1026, 2),
    ("reserved4", 1028, 12),
    ("q1", 1040, 384),
    ("q2", 1424, 384),
]

# The signed bytes (SDM 38.13): HEADER..reserved (0..127) and MISCSELECT..ISVSVN (900..1027).
SIGNED_OFFSETS = [*range(0, 128), *range(900, 1028)]


@pytest.fixture(scope="module")
def key() -> EnclaveSigningKey:
    return EnclaveSigningKey.generate()


@pytest.fixture(scope="module")
def other_key() -> EnclaveSigningKey:
    return EnclaveSigningKey.generate()


@pytest.fixture(scope="module")
def signed(key: EnclaveSigningKey) -> bytes:
    unsigned = new_sigstruct(mr_enclave=MRENCLAVE, date=DATE, isv_prod_id=0x1234, isv_svn=0x0506)
    return sign_sigstruct(unsigned, key).to_bytes()


def _flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[offset] ^= mask
    return bytes(out)


def _le(data: bytes, offset: int, size: int) -> int:
    return int.from_bytes(data[offset : offset + size], "little")


# --- layout ---------------------------------------------------------------------------------


def test_layout_tiles_1808_bytes_without_gaps() -> None:
    position = 0
    for row in SIGSTRUCT_LAYOUT:
        assert row.offset == position, row.name
        position += row.size
    assert position == 1808


def test_layout_offsets_match_the_sdm_table() -> None:
    ours = {row.name: (row.offset, row.size) for row in SIGSTRUCT_LAYOUT}
    # Rows the SDM keeps whole but the table splits into parts.
    ours["date"] = (20, 4)
    ours["attributes"] = (ours["attribute_flags"][0], 16)
    ours["attribute_mask"] = (ours["attribute_flags_mask"][0], 16)
    for name, offset, size in SDM_TABLE:
        assert ours[name] == (offset, size), name


def test_signed_flag_covers_exactly_the_sdm_signed_regions() -> None:
    signed_bytes = set()
    for row in SIGSTRUCT_LAYOUT:
        if row.signed:
            signed_bytes.update(range(row.offset, row.offset + row.size))
    assert signed_bytes == set(SIGNED_OFFSETS)


@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=1808, max_size=1808))
def test_any_1808_bytes_round_trip(raw: bytes) -> None:
    assert SIGSTRUCT.from_bytes(raw).to_bytes() == raw


def test_signing_data_is_bytes_0_127_and_900_1027(signed: bytes) -> None:
    assert SIGSTRUCT.from_bytes(signed).signing_data() == signed[0:128] + signed[900:1028]


# --- building and signing -------------------------------------------------------------------


def test_signed_sigstruct_round_trips_and_verifies(signed: bytes) -> None:
    assert len(signed) == 1808
    parsed = verify_sigstruct(signed)
    assert parsed.to_bytes() == signed
    assert parsed.mr_enclave == MRENCLAVE
    assert parsed.isv_prod_id == 0x1234
    assert parsed.isv_svn == 0x0506


def test_header_constants_and_field_bytes_are_where_the_sdm_puts_them(signed: bytes) -> None:
    assert signed[0:16] == bytes.fromhex("06000000E10000000000010000000000")
    assert signed[24:40] == bytes.fromhex("01010000600000006000000001000000")
    assert signed[960:992] == MRENCLAVE
    assert signed[1024:1028] == bytes([0x34, 0x12, 0x06, 0x05])
    assert _le(signed, 512, 4) == 3


def test_date_is_bcd_day_month_year_like_gramine(signed: bytes) -> None:
    # Gramine PR #1287: 2023-04-14 is stored as the bytes 14 04 23 20.
    assert signed[20:24] == bytes([0x14, 0x04, 0x23, 0x20])
    parsed = SIGSTRUCT.from_bytes(signed)
    assert parsed.date == "2023-04-14"
    assert parsed.date_value() == DATE


def test_defaults_are_gramines_for_a_production_enclave(signed: bytes) -> None:
    # sgx_arch.h: MODE64BIT=0x4, XFRM legacy=0x3, masks SGX_*_MASK_CONST.
    assert _le(signed, 928, 8) == 0x4
    assert _le(signed, 936, 8) == 0x3
    assert _le(signed, 944, 8) == 0xFFFFFFFFFFFFFFFF
    assert _le(signed, 952, 8) == 0xFFFFFFFFFFF9FF1B
    assert _le(signed, 900, 4) == 0
    assert _le(signed, 904, 4) == 0xFFFFFFFF
    assert SIGSTRUCT.from_bytes(signed).debug is False


def test_debug_enclave_sets_attribute_bit_1_and_warns(
    key: EnclaveSigningKey, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="sealpod.sgx.sigstruct"):
        raw = sign_sigstruct(new_sigstruct(mr_enclave=MRENCLAVE, date=DATE, debug=True), key)
    assert "DEBUG enclave" in caplog.text
    data = raw.to_bytes()
    assert _le(data, 928, 8) == 0x4 | 0x2
    assert verify_sigstruct(data).debug is True


def test_signature_is_pkcs1_v15_sha256_over_the_signed_bytes(
    signed: bytes, key: EnclaveSigningKey
) -> None:
    # Independent check with plain integers: s^3 mod N must be the EMSA-PKCS1-v1_5 block.
    n = key.private_key.public_key().public_numbers().n
    s = _le(signed, 516, 384)
    digest = hashlib.sha256(signed[0:128] + signed[900:1028]).digest()
    digest_info = bytes.fromhex("3031300d060960864801650304020105000420") + digest
    block = b"\x00\x01" + b"\xff" * (384 - 3 - len(digest_info)) + b"\x00" + digest_info
    assert pow(s, 3, n) == int.from_bytes(block, "big")
    assert _le(signed, 128, 384) == n


def test_q1_q2_follow_the_sdm_formulas(signed: bytes, key: EnclaveSigningKey) -> None:
    n = key.private_key.public_key().public_numbers().n
    s = _le(signed, 516, 384)
    q1 = (s * s) // n
    q2 = (s**3 - q1 * s * n) // n
    assert _le(signed, 1040, 384) == q1
    assert _le(signed, 1424, 384) == q2


def test_mrsigner_is_sha256_of_the_little_endian_modulus(
    signed: bytes, key: EnclaveSigningKey
) -> None:
    n = key.private_key.public_key().public_numbers().n
    expected = hashlib.sha256(n.to_bytes(384, "little")).digest()
    assert SIGSTRUCT.from_bytes(signed).mr_signer == expected
    assert key.mr_signer == expected


def test_view_uses_gramine_sigstruct_view_keys(signed: bytes) -> None:
    view = SIGSTRUCT.from_bytes(signed).view()
    assert list(view) == [
        "mr_signer",
        "mr_enclave",
        "isv_prod_id",
        "isv_svn",
        "attribute_flags",
        "attribute_xfrms",
        "misc_select",
        "attribute_flags_mask",
        "attribute_xfrm_mask",
        "misc_mask",
        "date",
        "debug_enclave",
    ]
    assert view["attribute_flags"] == "0x4"
    assert view["attribute_xfrm_mask"] == "0xfffffffffff9ff1b"
    assert view["mr_enclave"] == MRENCLAVE.hex()


def test_out_of_range_isv_svn_is_refused() -> None:
    with pytest.raises(ValueError, match="isv_svn"):
        new_sigstruct(mr_enclave=MRENCLAVE, date=DATE, isv_svn=0x10000)


def test_short_mrenclave_is_refused() -> None:
    with pytest.raises(ValueError, match="MRENCLAVE"):
        new_sigstruct(mr_enclave=bytes(31), date=DATE)


# --- attacks ----------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", SIGNED_OFFSETS)
def test_flipped_byte_in_signed_region_is_refused(signed: bytes, offset: int) -> None:
    with pytest.raises(VerificationError) as info:
        verify_sigstruct(_flip(signed, offset, 0x80))
    assert info.value.reason in {"sigstruct_bad_signature", "sigstruct_bad_header"}


def test_flipped_mrenclave_byte_is_a_bad_signature(signed: bytes) -> None:
    with pytest.raises(VerificationError) as info:
        verify_sigstruct(_flip(signed, 975))
    assert info.value.reason == "sigstruct_bad_signature"


def test_flipped_signature_byte_is_refused(signed: bytes) -> None:
    with pytest.raises(VerificationError) as info:
        verify_sigstruct(_flip(signed, 600))
    assert info.value.reason == "sigstruct_bad_signature"


def test_tampered_header_is_refused(signed: bytes) -> None:
    with pytest.raises(VerificationError) as info:
        verify_sigstruct(_flip(signed, 4))
    assert info.value.reason == "sigstruct_bad_header"


def test_foreign_modulus_swapped_in_is_refused(signed: bytes, other_key: EnclaveSigningKey) -> None:
    # Claim the signature came from another key: it does not verify under that modulus.
    forged = signed[:128] + other_key.modulus_le + signed[512:]
    with pytest.raises(VerificationError) as info:
        verify_sigstruct(forged)
    assert info.value.reason == "sigstruct_bad_signature"


def test_foreign_signature_under_our_modulus_is_refused(
    key: EnclaveSigningKey, other_key: EnclaveSigningKey
) -> None:
    theirs = sign_sigstruct(new_sigstruct(mr_enclave=MRENCLAVE, date=DATE), other_key).to_bytes()
    forged = theirs[:128] + key.modulus_le + theirs[512:]
    with pytest.raises(VerificationError) as info:
        verify_sigstruct(forged)
    assert info.value.reason == "sigstruct_bad_signature"


def test_resigned_by_foreign_key_is_refused_when_mrsigner_pinned(
    key: EnclaveSigningKey, other_key: EnclaveSigningKey
) -> None:
    theirs = sign_sigstruct(new_sigstruct(mr_enclave=MRENCLAVE, date=DATE), other_key).to_bytes()
    with pytest.raises(VerificationError) as info:
        verify_sigstruct(theirs, expected_mr_signer=key.mr_signer)
    assert info.value.reason == "sigstruct_mrsigner_mismatch"


def test_other_mrenclave_is_refused_when_pinned(signed: bytes) -> None:
    with pytest.raises(VerificationError) as info:
        verify_sigstruct(signed, expected_mr_enclave=bytes(32))
    assert info.value.reason == "sigstruct_mrenclave_mismatch"
    assert verify_sigstruct(signed, expected_mr_enclave=MRENCLAVE).mr_enclave == MRENCLAVE


def test_tampered_q1_is_refused(signed: bytes) -> None:
    with pytest.raises(VerificationError) as info:
        verify_sigstruct(_flip(signed, 1040))
    assert info.value.reason == "sigstruct_bad_q1"


def test_tampered_q2_is_refused(signed: bytes) -> None:
    with pytest.raises(VerificationError) as info:
        verify_sigstruct(_flip(signed, 1807))
    assert info.value.reason == "sigstruct_bad_q2"


def test_nonzero_unsigned_reserved_bytes_are_refused(signed: bytes) -> None:
    with pytest.raises(VerificationError) as info:
        verify_sigstruct(_flip(signed, 1030))
    assert info.value.reason == "sigstruct_bad_reserved"


def test_exponent_other_than_3_is_refused(signed: bytes) -> None:
    forged = signed[:512] + (65537).to_bytes(4, "little") + signed[516:]
    with pytest.raises(VerificationError) as info:
        verify_sigstruct(forged)
    assert info.value.reason == "sigstruct_bad_exponent"


def test_short_modulus_is_refused(signed: bytes) -> None:
    forged = signed[:511] + b"\x00" + signed[512:]
    with pytest.raises(VerificationError) as info:
        verify_sigstruct(forged)
    assert info.value.reason == "sigstruct_bad_modulus"


@pytest.mark.parametrize("length", [0, 1807, 1809, 3616])
def test_truncated_or_extended_sigstruct_is_refused(signed: bytes, length: int) -> None:
    data = (signed * 2)[:length]
    with pytest.raises(VerificationError) as info:
        verify_sigstruct(data)
    assert info.value.reason == "sigstruct_bad_length"
    assert "1808" in str(info.value)


# --- keys -------------------------------------------------------------------------------------


def _pem(private_key: rsa.RSAPrivateKey) -> bytes:
    return private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def test_key_with_exponent_65537_is_refused() -> None:
    wrong = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    with pytest.raises(ConfigError, match="exponent 3") as info:
        EnclaveSigningKey.from_pem(_pem(wrong))
    assert "\n" not in str(info.value)


def test_2048_bit_key_is_refused() -> None:
    small = rsa.generate_private_key(public_exponent=3, key_size=2048)
    with pytest.raises(ConfigError, match="3072") as info:
        EnclaveSigningKey.from_pem(_pem(small))
    assert "\n" not in str(info.value)


def test_garbage_pem_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="PEM"):
        EnclaveSigningKey.from_pem(
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        )


def test_key_repr_hides_the_private_key(key: EnclaveSigningKey) -> None:
    text = repr(key)
    d = key.private_key.private_numbers().d
    assert format(d, "x")[:32] not in text
    assert key.mr_signer.hex() in text


def test_pem_round_trip_keeps_mrsigner(key: EnclaveSigningKey) -> None:
    assert EnclaveSigningKey.from_pem(key.to_pem()).mr_signer == key.mr_signer
