"""The SIGSTRUCT check (what EINIT checks), on raw bytes and without ``cryptography``.

This is the one implementation: :func:`sealpod.sgx.verify_sigstruct` calls it, and ``sealpod
run`` calls it directly on every start, where importing ``cryptography`` would cost more than
the whole verification. Verifying an SGX signature needs no library: the exponent is 3, so RSA
verification is one ``pow(signature, 3, modulus)`` and a comparison with the PKCS#1 v1.5
encoding of the SHA-256 of the signed bytes (RFC 8017 §8.2.2, §9.2). The unit tests hold it to
``cryptography``'s RSA verification on mutated structures.

Offsets are those of :data:`sealpod.sgx.SIGSTRUCT_LAYOUT` (Intel SDM Vol. 3D, Table 38-19).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final, NamedTuple

from sealpod.errors import VerificationError

__all__ = ["SignedIdentity", "q1_q2", "signed_identity", "verify_sigstruct_bytes"]

SIGSTRUCT_SIZE: Final = 1808
_KEY_BITS: Final = 3072
_KEY_BYTES: Final = _KEY_BITS // 8
_EXPONENT: Final = 3
_HEADER: Final = bytes.fromhex("06000000e10000000000010000000000")
_HEADER2: Final = bytes.fromhex("01010000600000006000000001000000")
_FLAGS_DEBUG: Final = 0x02
#: RFC 8017 §9.2 note 1: the DER DigestInfo prefix of a SHA-256 hash.
_SHA256_DIGEST_INFO: Final = bytes.fromhex("3031300d060960864801650304020105000420")


class SignedIdentity(NamedTuple):
    """What a SIGSTRUCT says about the enclave (trusted only after verification)."""

    mr_enclave: bytes
    mr_signer: bytes
    isv_prod_id: int
    isv_svn: int
    debug: bool


def _le(data: bytes, start: int, size: int) -> int:
    return int.from_bytes(data[start : start + size], "little")


def signed_identity(data: bytes) -> SignedIdentity:
    """The identity fields of a SIGSTRUCT, *unverified* (``sealpod inspect``).

    Raises:
        VerificationError: ``sigstruct_bad_length``.
    """
    if len(data) != SIGSTRUCT_SIZE:
        raise VerificationError(
            "sigstruct_bad_length", f"a SIGSTRUCT is {SIGSTRUCT_SIZE} bytes, got {len(data)}"
        )
    return SignedIdentity(
        mr_enclave=bytes(data[960:992]),
        mr_signer=hashlib.sha256(data[128:512]).digest(),
        isv_prod_id=_le(data, 1024, 2),
        isv_svn=_le(data, 1026, 2),
        debug=bool(_le(data, 928, 8) & _FLAGS_DEBUG),
    )


def _pkcs1_sha256(message: bytes) -> bytes:
    # EMSA-PKCS1-v1_5 (RFC 8017 §9.2): 00 01 FF..FF 00 || DigestInfo || H.
    tail = _SHA256_DIGEST_INFO + hashlib.sha256(message).digest()
    return b"\x00\x01" + b"\xff" * (_KEY_BYTES - 3 - len(tail)) + b"\x00" + tail


def q1_q2(signature: int, modulus: int) -> tuple[int, int]:
    """SDM 38.13 (Q1, Q2): the two quotients EINIT uses to check SIGNATURE^3 mod MODULUS."""
    square = signature * signature
    q1 = square // modulus
    q2 = (square - q1 * modulus) * signature // modulus
    return q1, q2


def verify_sigstruct_bytes(
    data: bytes,
    *,
    expected_mr_enclave: bytes | None = None,
    expected_mr_signer: bytes | None = None,
) -> SignedIdentity:
    """Check an untrusted SIGSTRUCT the way EINIT would; return what it says.

    Raises:
        VerificationError: ``sigstruct_bad_length``, ``sigstruct_bad_header``,
            ``sigstruct_bad_exponent``, ``sigstruct_bad_reserved``, ``sigstruct_bad_modulus``,
            ``sigstruct_bad_signature``, ``sigstruct_bad_q1``, ``sigstruct_bad_q2``,
            ``sigstruct_mrenclave_mismatch`` or ``sigstruct_mrsigner_mismatch``.
    """
    identity = signed_identity(data)
    data = bytes(data)
    if data[0:16] != _HEADER or data[24:40] != _HEADER2:
        raise VerificationError("sigstruct_bad_header", "HEADER/HEADER2 are not the SGX constants")
    exponent = _le(data, 512, 4)
    if exponent != _EXPONENT:
        raise VerificationError("sigstruct_bad_exponent", f"EXPONENT must be 3, found {exponent}")
    if any(data[1028:1040]):
        # The only bytes neither signed nor checked by Q1/Q2: they must be zero (SDM 38.13).
        raise VerificationError("sigstruct_bad_reserved", "reserved bytes 1028..1039 are not zero")
    modulus = _le(data, 128, _KEY_BYTES)
    if modulus.bit_length() != _KEY_BITS or modulus % 2 == 0:
        raise VerificationError("sigstruct_bad_modulus", "MODULUS is not a 3072-bit odd integer")
    signature = _le(data, 516, _KEY_BYTES)
    if signature >= modulus:
        raise VerificationError("sigstruct_bad_signature", "SIGNATURE is not below MODULUS")
    # SDM 38.13: the signature covers bytes 0..127 and 900..1027.
    expected = _pkcs1_sha256(data[0:128] + data[900:1028])
    recovered = pow(signature, _EXPONENT, modulus).to_bytes(_KEY_BYTES, "big")
    if not hmac.compare_digest(recovered, expected):
        raise VerificationError(
            "sigstruct_bad_signature", "SIGNATURE does not verify under MODULUS"
        )
    q1, q2 = q1_q2(signature, modulus)
    if _le(data, 1040, _KEY_BYTES) != q1:
        raise VerificationError("sigstruct_bad_q1", "Q1 is not floor(SIGNATURE^2 / MODULUS)")
    if _le(data, 1424, _KEY_BYTES) != q2:
        raise VerificationError("sigstruct_bad_q2", "Q2 does not match SIGNATURE and MODULUS")
    if expected_mr_enclave is not None and not hmac.compare_digest(
        identity.mr_enclave, expected_mr_enclave
    ):
        raise VerificationError(
            "sigstruct_mrenclave_mismatch",
            f"SIGSTRUCT is for MRENCLAVE {identity.mr_enclave.hex()}, "
            f"expected {expected_mr_enclave.hex()}",
        )
    if expected_mr_signer is not None and not hmac.compare_digest(
        identity.mr_signer, expected_mr_signer
    ):
        raise VerificationError(
            "sigstruct_mrsigner_mismatch",
            f"SIGSTRUCT is signed by MRSIGNER {identity.mr_signer.hex()}, "
            f"expected {expected_mr_signer.hex()}",
        )
    return identity
