"""SGX SIGSTRUCT (the enclave signature structure, ``enclave.sig``): layout, signing, verification.

Layout: Intel SDM Vol. 3D, 38.13, Table 38-19, the same 1808 bytes Gramine writes (``sgx_arch.h``
``sgx_sigstruct_t``). Every field, reserved ones included, is in :data:`SIGSTRUCT_LAYOUT`, so
:meth:`SIGSTRUCT.from_bytes` / :meth:`SIGSTRUCT.to_bytes` round-trip byte for byte.

Invariants that :func:`verify_sigstruct` establishes before it returns anything:

* exactly 1808 bytes, HEADER and HEADER2 hold their architectural constants, EXPONENT is 3, the
  reserved bytes the signature does not cover (1028..1039) are zero;
* SIGNATURE is a valid RSASSA-PKCS1-v1_5 / SHA-256 signature by MODULUS (3072 bits) over bytes
  0..127 and 900..1027 (the only signed bytes, SDM 38.13);
* Q1 and Q2 are the values EINIT needs (Q1 = floor(s^2 / N), Q2 = floor((s^3 - Q1*s*N) / N)).

MRSIGNER is SHA-256 of MODULUS as stored (little-endian), which is what EINIT puts in SECS.
DATE is ``yyyymmdd`` in BCD, stored little-endian: day, month, year (two bytes); Gramine writes it
that way since v1.5 (older releases wrote plain binary, which still parses).
"""

from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass, replace
from typing import Any, Final, Literal

from sealpod.errors import VerificationError
from sealpod.sgx._check import q1_q2, verify_sigstruct_bytes
from sealpod.sgx.keys import (
    SGX_RSA_EXPONENT,
    SGX_RSA_KEY_BYTES,
    EnclaveSigningKey,
    mr_signer_from_modulus,
)

_logger = logging.getLogger(__name__)

SIGSTRUCT_SIZE: Final = 1808
#: SDM Table 38-19: HEADER and HEADER2 must hold these values.
SIGSTRUCT_HEADER: Final = bytes.fromhex("06000000e10000000000010000000000")
SIGSTRUCT_HEADER2: Final = bytes.fromhex("01010000600000006000000001000000")

# SECS.ATTRIBUTES.FLAGS bits (SDM Table 38-3).
SGX_FLAGS_INITTED: Final = 0x01
SGX_FLAGS_DEBUG: Final = 0x02
SGX_FLAGS_MODE64BIT: Final = 0x04
SGX_FLAGS_PROVISION_KEY: Final = 0x10
SGX_FLAGS_EINITTOKEN_KEY: Final = 0x20
SGX_FLAGS_KSS: Final = 0x80
#: XFRM bits 0 and 1 (x87, SSE) must always be set in SGX.
SGX_XFRM_LEGACY: Final = 0x03
#: Gramine's masks: EINIT checks every FLAGS bit, every MISCSELECT bit, and all XFRM bits except
#: AVX, AVX-512 and AMX (``sgx_arch.h``: SGX_FLAGS_MASK_CONST, SGX_XFRM_MASK_CONST,
#: SGX_MISCSELECT_MASK_CONST).
SGX_FLAGS_MASK_DEFAULT: Final = 0xFFFF_FFFF_FFFF_FFFF
SGX_XFRM_MASK_DEFAULT: Final = 0xFFFF_FFFF_FFF9_FF1B
SGX_MISCSELECT_MASK_DEFAULT: Final = 0xFFFF_FFFF

# The two signed regions (SDM 38.13: "signature over HEADER and BODY").
_SIGNED_REGIONS: Final = ((0, 128), (900, 1028))

FieldKind = Literal["bytes", "u8", "u16", "u32", "u64"]


@dataclass(frozen=True)
class Field:
    """One row of the SIGSTRUCT field table."""

    name: str
    offset: int
    size: int
    kind: FieldKind
    signed: bool


def _row(name: str, offset: int, size: int, kind: FieldKind) -> Field:
    signed = any(start <= offset and offset + size <= end for start, end in _SIGNED_REGIONS)
    return Field(name, offset, size, kind, signed)


#: SDM Table 38-19 / Gramine ``sgx_sigstruct_t``. Multi-byte integers are little-endian.
SIGSTRUCT_LAYOUT: Final[tuple[Field, ...]] = (
    _row("header", 0, 16, "bytes"),
    _row("vendor", 16, 4, "u32"),
    _row("date_day", 20, 1, "u8"),  # BCD
    _row("date_month", 21, 1, "u8"),  # BCD
    _row("date_year", 22, 2, "u16"),  # BCD
    _row("header2", 24, 16, "bytes"),
    _row("swdefined", 40, 4, "u32"),
    _row("reserved1", 44, 84, "bytes"),
    _row("modulus", 128, 384, "bytes"),
    _row("exponent", 512, 4, "u32"),
    _row("signature", 516, 384, "bytes"),
    _row("misc_select", 900, 4, "u32"),
    _row("misc_mask", 904, 4, "u32"),
    _row("cet_attributes", 908, 1, "u8"),
    _row("cet_attributes_mask", 909, 1, "u8"),
    _row("reserved2", 910, 2, "bytes"),
    _row("isv_family_id", 912, 16, "bytes"),
    _row("attribute_flags", 928, 8, "u64"),
    _row("attribute_xfrms", 936, 8, "u64"),
    _row("attribute_flags_mask", 944, 8, "u64"),
    _row("attribute_xfrm_mask", 952, 8, "u64"),
    _row("enclave_hash", 960, 32, "bytes"),
    _row("reserved3", 992, 16, "bytes"),
    _row("isv_ext_prod_id", 1008, 16, "bytes"),
    _row("isv_prod_id", 1024, 2, "u16"),
    _row("isv_svn", 1026, 2, "u16"),
    _row("reserved4", 1028, 12, "bytes"),
    _row("q1", 1040, 384, "bytes"),
    _row("q2", 1424, 384, "bytes"),
)

_INT_SIZES: Final = {"u8": 1, "u16": 2, "u32": 4, "u64": 8}


def bcd_encode(value: int) -> int:
    """``2023`` -> ``0x2023``: each decimal digit in one nibble.

    Raises:
        ValueError: ``value`` is negative.
    """
    if value < 0:
        raise ValueError("BCD needs a non-negative value")
    return int(str(value), 16)


def bcd_decode(value: int) -> int | None:
    """``0x2023`` -> ``2023``; ``None`` when a nibble is not a decimal digit."""
    text = f"{value:x}"
    return int(text) if text.isdigit() else None


@dataclass(frozen=True, kw_only=True)
class SIGSTRUCT:
    """The 1808-byte SIGSTRUCT, one attribute per row of :data:`SIGSTRUCT_LAYOUT`.

    Parsing (:meth:`from_bytes`) checks only the length; use :func:`verify_sigstruct` on anything
    untrusted. Integers are stored as they sit in the structure (the date fields stay BCD).

    Raises:
        ValueError: (on construction) a field has the wrong size or does not fit its type.
    """

    header: bytes = SIGSTRUCT_HEADER
    vendor: int = 0
    date_day: int = 0
    date_month: int = 0
    date_year: int = 0
    header2: bytes = SIGSTRUCT_HEADER2
    swdefined: int = 0
    reserved1: bytes = bytes(84)
    modulus: bytes = bytes(384)
    exponent: int = 0
    signature: bytes = bytes(384)
    misc_select: int = 0
    misc_mask: int = SGX_MISCSELECT_MASK_DEFAULT
    cet_attributes: int = 0
    cet_attributes_mask: int = 0
    reserved2: bytes = bytes(2)
    isv_family_id: bytes = bytes(16)
    attribute_flags: int = SGX_FLAGS_MODE64BIT
    attribute_xfrms: int = SGX_XFRM_LEGACY
    attribute_flags_mask: int = SGX_FLAGS_MASK_DEFAULT
    attribute_xfrm_mask: int = SGX_XFRM_MASK_DEFAULT
    enclave_hash: bytes = bytes(32)
    reserved3: bytes = bytes(16)
    isv_ext_prod_id: bytes = bytes(16)
    isv_prod_id: int = 0
    isv_svn: int = 0
    reserved4: bytes = bytes(12)
    q1: bytes = bytes(384)
    q2: bytes = bytes(384)

    def __post_init__(self) -> None:
        for row in SIGSTRUCT_LAYOUT:
            value = getattr(self, row.name)
            if row.kind == "bytes":
                if not isinstance(value, bytes) or len(value) != row.size:
                    raise ValueError(f"SIGSTRUCT.{row.name} must be {row.size} bytes")
            elif (
                not isinstance(value, int)
                or isinstance(value, bool)
                or not 0 <= value < 1 << (8 * row.size)
            ):
                raise ValueError(f"SIGSTRUCT.{row.name} must be an integer that fits {row.kind}")

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> SIGSTRUCT:
        """Split 1808 bytes into fields (no other check: see :func:`verify_sigstruct`).

        Raises:
            VerificationError: ``sigstruct_bad_length`` when ``data`` is not 1808 bytes.
        """
        if len(data) != SIGSTRUCT_SIZE:
            raise VerificationError(
                "sigstruct_bad_length",
                f"a SIGSTRUCT is {SIGSTRUCT_SIZE} bytes, got {len(data)}",
            )
        view = memoryview(bytes(data))
        values: dict[str, Any] = {}
        for row in SIGSTRUCT_LAYOUT:
            chunk = view[row.offset : row.offset + row.size]
            values[row.name] = (
                bytes(chunk) if row.kind == "bytes" else int.from_bytes(chunk, "little")
            )
        return cls(**values)

    def to_bytes(self) -> bytes:
        """The 1808-byte encoding."""
        out = bytearray(SIGSTRUCT_SIZE)
        for row in SIGSTRUCT_LAYOUT:
            value = getattr(self, row.name)
            raw = value if row.kind == "bytes" else value.to_bytes(row.size, "little")
            out[row.offset : row.offset + row.size] = raw
        return bytes(out)

    def signing_data(self) -> bytes:
        """The 256 bytes the signature covers: bytes 0..127 and 900..1027."""
        raw = self.to_bytes()
        return b"".join(raw[start:end] for start, end in _SIGNED_REGIONS)

    @property
    def mr_enclave(self) -> bytes:
        """ENCLAVEHASH: the MRENCLAVE this SIGSTRUCT vouches for."""
        return self.enclave_hash

    @property
    def mr_signer(self) -> bytes:
        """SHA-256 of MODULUS as stored (little-endian): the enclave's MRSIGNER."""
        return mr_signer_from_modulus(self.modulus)

    @property
    def debug(self) -> bool:
        """ATTRIBUTES.DEBUG (flags bit 1): a debug enclave, readable by the host."""
        return bool(self.attribute_flags & SGX_FLAGS_DEBUG)

    @property
    def date(self) -> str:
        """DATE as ``YYYY-MM-DD`` (the BCD digits; non-BCD bytes show as hex digits)."""
        return f"{self.date_year:04x}-{self.date_month:02x}-{self.date_day:02x}"

    def date_value(self) -> _dt.date | None:
        """DATE as a :class:`datetime.date`, or ``None`` if it is not a valid BCD date."""
        parts = (bcd_decode(self.date_year), bcd_decode(self.date_month), bcd_decode(self.date_day))
        if None in parts:
            return None
        try:
            return _dt.date(*(p for p in parts if p is not None))
        except ValueError:
            return None

    def view(self) -> dict[str, Any]:
        """The fields ``gramine-sgx-sigstruct-view --verbose --output-format json`` shows.

        Same key names and value formats (hex strings for masks and attributes).
        """
        return {
            "mr_signer": self.mr_signer.hex(),
            "mr_enclave": self.enclave_hash.hex(),
            "isv_prod_id": self.isv_prod_id,
            "isv_svn": self.isv_svn,
            "attribute_flags": hex(self.attribute_flags),
            "attribute_xfrms": hex(self.attribute_xfrms),
            "misc_select": hex(self.misc_select),
            "attribute_flags_mask": hex(self.attribute_flags_mask),
            "attribute_xfrm_mask": hex(self.attribute_xfrm_mask),
            "misc_mask": hex(self.misc_mask),
            "date": self.date,
            "debug_enclave": self.debug,
        }


def _u16(name: str, value: int) -> int:
    if isinstance(value, bool) or not 0 <= value <= 0xFFFF:
        raise ValueError(f"{name} must be 0..65535, got {value}")
    return value


def new_sigstruct(
    *,
    mr_enclave: bytes,
    date: _dt.date,
    isv_prod_id: int = 0,
    isv_svn: int = 0,
    debug: bool = False,
    attribute_flags: int | None = None,
    attribute_xfrms: int = SGX_XFRM_LEGACY,
    attribute_flags_mask: int = SGX_FLAGS_MASK_DEFAULT,
    attribute_xfrm_mask: int = SGX_XFRM_MASK_DEFAULT,
    misc_select: int = 0,
    misc_mask: int = SGX_MISCSELECT_MASK_DEFAULT,
) -> SIGSTRUCT:
    """An unsigned SIGSTRUCT with Gramine's defaults for a 64-bit enclave.

    Defaults: FLAGS = MODE64BIT (plus DEBUG if ``debug``), XFRM = x87|SSE, MISCSELECT = 0, and
    Gramine's masks. ``attribute_flags`` overrides the flags entirely (``debug`` is then ignored).

    Raises:
        ValueError: ``mr_enclave`` is not 32 bytes, or an ID/SVN is out of range.
    """
    if len(mr_enclave) != 32:
        raise ValueError(f"MRENCLAVE must be 32 bytes, got {len(mr_enclave)}")
    flags = attribute_flags
    if flags is None:
        flags = SGX_FLAGS_MODE64BIT | (SGX_FLAGS_DEBUG if debug else 0)
    if flags & SGX_FLAGS_DEBUG:
        _logger.warning(
            "SIGSTRUCT for a DEBUG enclave (MRENCLAVE %s): the host can read its memory; "
            "never use it in production",
            mr_enclave.hex(),
        )
    return SIGSTRUCT(
        date_day=bcd_encode(date.day),
        date_month=bcd_encode(date.month),
        date_year=bcd_encode(date.year),
        enclave_hash=bytes(mr_enclave),
        isv_prod_id=_u16("isv_prod_id", isv_prod_id),
        isv_svn=_u16("isv_svn", isv_svn),
        attribute_flags=flags,
        attribute_xfrms=attribute_xfrms,
        attribute_flags_mask=attribute_flags_mask,
        attribute_xfrm_mask=attribute_xfrm_mask,
        misc_select=misc_select,
        misc_mask=misc_mask,
    )


def sign_sigstruct(unsigned: SIGSTRUCT, key: EnclaveSigningKey) -> SIGSTRUCT:
    """Sign ``unsigned`` with ``key``: fills MODULUS, EXPONENT, SIGNATURE, Q1 and Q2.

    Whatever signature fields ``unsigned`` had are replaced; the signed bytes are unchanged.
    """
    signature = key.sign(unsigned.signing_data())
    modulus = key.modulus
    q1, q2 = q1_q2(signature, modulus)
    signed = replace(
        unsigned,
        modulus=modulus.to_bytes(SGX_RSA_KEY_BYTES, "little"),
        exponent=SGX_RSA_EXPONENT,
        signature=signature.to_bytes(SGX_RSA_KEY_BYTES, "little"),
        q1=q1.to_bytes(SGX_RSA_KEY_BYTES, "little"),
        q2=q2.to_bytes(SGX_RSA_KEY_BYTES, "little"),
    )
    _logger.debug(
        "signed SIGSTRUCT mr_enclave=%s mr_signer=%s",
        signed.enclave_hash.hex(),
        signed.mr_signer.hex(),
    )
    return signed


def verify_sigstruct(
    data: bytes | bytearray | memoryview | SIGSTRUCT,
    *,
    expected_mr_enclave: bytes | None = None,
    expected_mr_signer: bytes | None = None,
) -> SIGSTRUCT:
    """Check an untrusted SIGSTRUCT the way EINIT would, and return it parsed
    (:func:`sealpod.sgx._check.verify_sigstruct_bytes` does the checks).

    Raises:
        VerificationError: with one of the reasons ``sigstruct_bad_length``,
            ``sigstruct_bad_header``, ``sigstruct_bad_exponent``, ``sigstruct_bad_reserved``,
            ``sigstruct_bad_modulus``, ``sigstruct_bad_signature``, ``sigstruct_bad_q1``,
            ``sigstruct_bad_q2``, ``sigstruct_mrenclave_mismatch``,
            ``sigstruct_mrsigner_mismatch``.
    """
    sig = data if isinstance(data, SIGSTRUCT) else SIGSTRUCT.from_bytes(data)
    verify_sigstruct_bytes(
        sig.to_bytes(),
        expected_mr_enclave=expected_mr_enclave,
        expected_mr_signer=expected_mr_signer,
    )
    return sig
