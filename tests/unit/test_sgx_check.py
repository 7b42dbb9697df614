"""The SIGSTRUCT check, held to an independent reference, and the run path's MRENCLAVE.

:func:`sealpod.sgx._check.verify_sigstruct_bytes` verifies the RSA signature with a plain
``pow()``; the reference here verifies it with ``cryptography``'s RSA PKCS#1 v1.5 and applies the
SDM's structural checks in EINIT's order, so every mutated structure must get the same decision
and reason from both. :func:`sealpod.package.measure_manifest_bytes` writes the measurement
records itself; :class:`sealpod.sgx.EnclaveMeasurement` is its reference.
"""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from sealpod.errors import VerificationError
from sealpod.package.measure import SEALPOD_RUNTIME_ID, measure_manifest_bytes, runtime_page
from sealpod.sgx import (
    EnclaveMeasurement,
    EnclaveSigningKey,
    SecinfoFlags,
    new_sigstruct,
    sign_sigstruct,
    verify_sigstruct,
)
from sealpod.sgx._check import signed_identity, verify_sigstruct_bytes

MRENCLAVE = bytes(range(32))
DATE = dt.date(2024, 2, 29)


@pytest.fixture(scope="module")
def key() -> EnclaveSigningKey:
    return EnclaveSigningKey.generate()


@pytest.fixture(scope="module")
def other_key() -> EnclaveSigningKey:
    return EnclaveSigningKey.generate()


@pytest.fixture(scope="module")
def signed(key: EnclaveSigningKey) -> bytes:
    unsigned = new_sigstruct(mr_enclave=MRENCLAVE, date=DATE, isv_prod_id=0x4321, isv_svn=7)
    return sign_sigstruct(unsigned, key).to_bytes()


def _flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[offset] ^= mask
    return bytes(out)


def _reason(check: object, data: bytes, **kwargs: object) -> str | None:
    try:
        check(data, **kwargs)  # type: ignore[operator]
    except VerificationError as exc:
        return exc.reason
    return None


def _le(data: bytes, start: int, size: int) -> int:
    return int.from_bytes(data[start : start + size], "little")


def _reference(data: bytes, expected_mr_signer: bytes | None = None) -> None:
    """SDM Vol. 3D 38.13 and EINIT, with the RSA check done by ``cryptography``."""

    def refuse(reason: str) -> None:
        raise VerificationError(reason, reason)

    if len(data) != 1808:
        refuse("sigstruct_bad_length")
    if data[0:16] != bytes.fromhex("06000000e10000000000010000000000") or data[
        24:40
    ] != bytes.fromhex("01010000600000006000000001000000"):
        refuse("sigstruct_bad_header")
    if _le(data, 512, 4) != 3:
        refuse("sigstruct_bad_exponent")
    if any(data[1028:1040]):
        refuse("sigstruct_bad_reserved")
    modulus, signature = _le(data, 128, 384), _le(data, 516, 384)
    if modulus.bit_length() != 3072 or modulus % 2 == 0:
        refuse("sigstruct_bad_modulus")
    if signature >= modulus:
        refuse("sigstruct_bad_signature")
    try:
        rsa.RSAPublicNumbers(3, modulus).public_key().verify(
            signature.to_bytes(384, "big"),
            data[0:128] + data[900:1028],
            padding.PKCS1v15(),
            hashes.SHA256(),
        )
    except InvalidSignature:
        refuse("sigstruct_bad_signature")
    q1 = signature * signature // modulus
    if _le(data, 1040, 384) != q1:
        refuse("sigstruct_bad_q1")
    if _le(data, 1424, 384) != (signature * signature - q1 * modulus) * signature // modulus:
        refuse("sigstruct_bad_q2")
    if expected_mr_signer is not None and hashlib.sha256(data[128:512]).digest() != (
        expected_mr_signer
    ):
        refuse("sigstruct_mrsigner_mismatch")


def _same_decision(data: bytes, **kwargs: object) -> str | None:
    expected = _reason(_reference, data, **kwargs)
    assert _reason(verify_sigstruct_bytes, data, **kwargs) == expected
    assert _reason(verify_sigstruct, data, **kwargs) == expected  # the public name: same check
    return expected


def test_valid_sigstruct_gives_the_signed_identity(signed: bytes, key: EnclaveSigningKey) -> None:
    reference = verify_sigstruct(signed)
    identity = verify_sigstruct_bytes(signed, expected_mr_signer=key.mr_signer)
    assert identity.mr_enclave == MRENCLAVE == reference.mr_enclave
    assert identity.mr_signer == key.mr_signer == reference.mr_signer
    assert (identity.isv_prod_id, identity.isv_svn, identity.debug) == (0x4321, 7, False)


def test_debug_flag_is_read(key: EnclaveSigningKey) -> None:
    unsigned = new_sigstruct(mr_enclave=MRENCLAVE, date=DATE, debug=True)
    debug = sign_sigstruct(unsigned, key).to_bytes()
    assert verify_sigstruct_bytes(debug).debug is True
    assert signed_identity(debug).debug is True


# Every byte of the header, the modulus's ends, the exponent, the signature's ends, the body,
# the reserved bytes and Q1/Q2: the attacks of test_sigstruct.py, and more.
_OFFSETS = sorted(
    {*range(0, 128, 3), 128, 129, 511, 512, 513, 516, 517, 899, *range(900, 1040, 3)}
    | {1040, 1041, 1423, 1424, 1425, 1807}
)


@pytest.mark.parametrize("offset", _OFFSETS)
def test_flipped_byte_is_refused_for_the_same_reason(signed: bytes, offset: int) -> None:
    assert _same_decision(_flip(signed, offset, 0x80)) is not None
    assert _same_decision(_flip(signed, offset, 0x01)) is not None


def test_foreign_modulus_swapped_in_is_refused(signed: bytes, other_key: EnclaveSigningKey) -> None:
    forged = signed[:128] + other_key.modulus_le + signed[512:]
    assert _same_decision(forged) == "sigstruct_bad_signature"


def test_foreign_signature_under_our_modulus_is_refused(
    key: EnclaveSigningKey, other_key: EnclaveSigningKey
) -> None:
    theirs = sign_sigstruct(new_sigstruct(mr_enclave=MRENCLAVE, date=DATE), other_key).to_bytes()
    assert _same_decision(theirs[:128] + key.modulus_le + theirs[512:]) == "sigstruct_bad_signature"


def test_resigned_by_foreign_key_is_refused_when_mrsigner_pinned(
    key: EnclaveSigningKey, other_key: EnclaveSigningKey
) -> None:
    theirs = sign_sigstruct(new_sigstruct(mr_enclave=MRENCLAVE, date=DATE), other_key).to_bytes()
    assert _same_decision(theirs) is None
    assert _same_decision(theirs, expected_mr_signer=key.mr_signer) == "sigstruct_mrsigner_mismatch"


def test_exponent_other_than_3_is_refused(signed: bytes) -> None:
    forged = signed[:512] + (65537).to_bytes(4, "little") + signed[516:]
    assert _same_decision(forged) == "sigstruct_bad_exponent"


def test_short_or_even_modulus_is_refused(signed: bytes) -> None:
    assert _same_decision(signed[:511] + b"\x00" + signed[512:]) == "sigstruct_bad_modulus"
    assert _same_decision(_flip(signed, 128)) in {
        "sigstruct_bad_modulus",
        "sigstruct_bad_signature",
    }


def test_signature_not_below_modulus_is_refused(signed: bytes) -> None:
    forged = signed[:516] + signed[128:512] + signed[900:]
    assert _same_decision(forged) == "sigstruct_bad_signature"


def test_signature_one_is_refused(signed: bytes) -> None:
    # 1^3 = 1: no PKCS#1 block; a verifier comparing only the hash at the end would accept.
    forged = signed[:516] + (1).to_bytes(384, "little") + signed[900:]
    assert _same_decision(forged) == "sigstruct_bad_signature"


@pytest.mark.parametrize("length", [0, 1807, 1809])
def test_truncated_or_extended_sigstruct_is_refused(signed: bytes, length: int) -> None:
    assert _same_decision((signed * 2)[:length]) == "sigstruct_bad_length"


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 1807), st.integers(1, 255))
def test_any_single_byte_change_gets_the_same_decision(signed: bytes, at: int, mask: int) -> None:
    assert _same_decision(_flip(signed, at, mask)) is not None


def _reference_mrenclave(data: bytes) -> bytes:
    measurement = EnclaveMeasurement()
    measurement.ecreate(1 << 30, 1)
    pages = measurement.add_pages(0, data, SecinfoFlags.R | SecinfoFlags.PT_REG)
    measurement.add_page(
        pages * 4096,
        runtime_page(len(data), SEALPOD_RUNTIME_ID),
        SecinfoFlags.R | SecinfoFlags.X | SecinfoFlags.PT_REG,
    )
    return measurement.digest()


@pytest.mark.parametrize("size", [1, 255, 256, 4095, 4096, 4097, 3 * 4096 + 17])
def test_manifest_measurement_is_the_sgx_measurement(size: int) -> None:
    data = bytes((i * 7 + size) % 251 for i in range(size))
    assert measure_manifest_bytes(data) == _reference_mrenclave(data)
