"""Intel DCAP quotes: SGX quote v3 and TDX quote v4/v5, parsed and built byte for byte.

Layouts follow Intel's "SGX ECDSA Quote Library API" (quote v3, appendix A) and the "TDX DCAP Quoting
Library API" (quote v4 and v5). Everything is little-endian.

Invariants of this module:

* :func:`parse_quote` reads by the *declared* lengths (the signature data length, the QE
  authentication data size, the certification data sizes), never by the length of the input: real
  quotes carry trailing bytes (e.g. zero padding) that are not part of the quote.
* Any input that does not parse raises :class:`~sealpod.errors.QuoteFormatError` naming the part
  that is wrong; no other exception escapes (the parser is fuzzed for that).
* Parsing checks *structure* only. Nothing here is trusted until
  :func:`sealpod.attestation.verify.verify_quote` has checked the signatures.
* ``DCAPQuote.to_bytes()`` of a parsed quote reproduces the quote bytes exactly (reserved fields
  included), minus any trailing bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar, cast

from sealpod._internal.fields import FieldTable, pack_fields, table_size, unpack_fields
from sealpod.errors import QuoteFormatError

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

#: QE vendor ID of Intel's quoting enclaves (939A7233-F79C-4CA9-940A-0DB3957F0607).
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")

_ATTESTATION_KEY_ECDSA_P256 = 2
_ECDSA_SIGNATURE_SIZE = 64
_ECDSA_PUBLIC_KEY_SIZE = 64
_PEM_CERT_RE = re.compile(
    rb"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\r\n]+-----END CERTIFICATE-----"
)


class TEEType(IntEnum):
    """The ``tee_type`` field of the quote header."""

    SGX = 0x00000000
    TDX = 0x00000081


class CertificationDataType(IntEnum):
    """Certification data types (Intel quote library API, "Certification Data Type")."""

    PPID_CLEARTEXT = 1
    PPID_RSA2048_ENCRYPTED = 2
    PPID_RSA3072_ENCRYPTED = 3
    PCK_CLEARTEXT = 4
    PCK_CERT_CHAIN = 5
    QE_REPORT_CERTIFICATION_DATA = 6
    PLATFORM_MANIFEST = 7


def _field_values(obj: object, table: FieldTable) -> dict[str, object]:
    # Shallow reads: dataclasses.asdict deep-copies and dominated quote building time.
    return {name: getattr(obj, name) for name, _, _ in table}


class _Struct:
    """Mixin for frozen dataclasses declared by a field table."""

    FIELDS: ClassVar[FieldTable]
    SIZE: ClassVar[int]

    @classmethod
    def _from_table(cls, data: bytes | memoryview, what: str) -> Any:
        if len(data) != cls.SIZE:
            raise QuoteFormatError(f"{what}: expected {cls.SIZE} bytes, got {len(data)}")
        return cls(**cast(dict[str, Any], unpack_fields(cls.FIELDS, data)))

    def to_bytes(self) -> bytes:
        """Serialise exactly as laid out in the quote."""
        try:
            return pack_fields(self.FIELDS, _field_values(self, self.FIELDS))
        except ValueError as exc:
            raise QuoteFormatError(f"{type(self).__name__}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class QuoteHeader(_Struct):
    """The 48-byte quote header (same layout in v3, v4 and v5)."""

    version: int
    attestation_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes

    FIELDS: ClassVar[FieldTable] = (
        ("version", 2, "u16"),
        ("attestation_key_type", 2, "u16"),
        ("tee_type", 4, "u32"),
        ("qe_svn", 2, "u16"),
        ("pce_svn", 2, "u16"),
        ("qe_vendor_id", 16, "bytes"),
        ("user_data", 20, "bytes"),
    )
    SIZE: ClassVar[int] = 48

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> QuoteHeader:
        """Parse a header.

        Raises:
            QuoteFormatError: wrong length.
        """
        return cast(QuoteHeader, cls._from_table(data, "quote header"))


@dataclass(frozen=True, slots=True)
class SGXReportBody(_Struct):
    """An SGX enclave REPORTBODY (384 bytes; Intel SDM Vol. 3D, Table 38-21)."""

    cpu_svn: bytes
    misc_select: int
    reserved1: bytes
    isv_ext_prod_id: bytes
    attributes: bytes
    mr_enclave: bytes
    reserved2: bytes
    mr_signer: bytes
    reserved3: bytes
    config_id: bytes
    isv_prod_id: int
    isv_svn: int
    config_svn: int
    reserved4: bytes
    isv_family_id: bytes
    report_data: bytes

    FIELDS: ClassVar[FieldTable] = (
        ("cpu_svn", 16, "bytes"),
        ("misc_select", 4, "u32"),
        ("reserved1", 12, "bytes"),
        ("isv_ext_prod_id", 16, "bytes"),
        ("attributes", 16, "bytes"),
        ("mr_enclave", 32, "bytes"),
        ("reserved2", 32, "bytes"),
        ("mr_signer", 32, "bytes"),
        ("reserved3", 32, "bytes"),
        ("config_id", 64, "bytes"),
        ("isv_prod_id", 2, "u16"),
        ("isv_svn", 2, "u16"),
        ("config_svn", 2, "u16"),
        ("reserved4", 42, "bytes"),
        ("isv_family_id", 16, "bytes"),
        ("report_data", 64, "bytes"),
    )
    SIZE: ClassVar[int] = 384

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> SGXReportBody:
        """Parse a report body.

        Raises:
            QuoteFormatError: wrong length.
        """
        return cast(SGXReportBody, cls._from_table(data, "SGX report body"))

    @classmethod
    def create(
        cls,
        *,
        mr_enclave: bytes,
        mr_signer: bytes,
        report_data: bytes,
        isv_prod_id: int = 0,
        isv_svn: int = 0,
        attributes: bytes = bytes(16),
        cpu_svn: bytes = bytes(16),
        misc_select: int = 0,
        config_svn: int = 0,
        config_id: bytes = bytes(64),
        isv_ext_prod_id: bytes = bytes(16),
        isv_family_id: bytes = bytes(16),
    ) -> SGXReportBody:
        """Build a report body with zeroed reserved fields (used by the simulated platform)."""
        return cls(
            cpu_svn=cpu_svn,
            misc_select=misc_select,
            reserved1=bytes(12),
            isv_ext_prod_id=isv_ext_prod_id,
            attributes=attributes,
            mr_enclave=mr_enclave,
            reserved2=bytes(32),
            mr_signer=mr_signer,
            reserved3=bytes(32),
            config_id=config_id,
            isv_prod_id=isv_prod_id,
            isv_svn=isv_svn,
            config_svn=config_svn,
            reserved4=bytes(42),
            isv_family_id=isv_family_id,
            report_data=report_data,
        )

    @property
    def attribute_flags(self) -> int:
        """The 64-bit ATTRIBUTES.FLAGS (the first 8 bytes of ``attributes``)."""
        return int.from_bytes(self.attributes[:8], "little")

    @property
    def xfrm(self) -> int:
        """The 64-bit ATTRIBUTES.XFRM."""
        return int.from_bytes(self.attributes[8:16], "little")

    @property
    def debug(self) -> bool:
        """True for a debug enclave (ATTRIBUTES.DEBUG, bit 1): its memory is readable by the host."""
        return bool(self.attribute_flags & 0x2)

    @property
    def mode64bit(self) -> bool:
        """ATTRIBUTES.MODE64BIT (bit 2)."""
        return bool(self.attribute_flags & 0x4)


_TD_REPORT_10_FIELDS: FieldTable = (
    ("tee_tcb_svn", 16, "bytes"),
    ("mr_seam", 48, "bytes"),
    ("mr_signer_seam", 48, "bytes"),
    ("seam_attributes", 8, "bytes"),
    ("td_attributes", 8, "bytes"),
    ("xfam", 8, "bytes"),
    ("mr_td", 48, "bytes"),
    ("mr_config_id", 48, "bytes"),
    ("mr_owner", 48, "bytes"),
    ("mr_owner_config", 48, "bytes"),
    ("rtmr0", 48, "bytes"),
    ("rtmr1", 48, "bytes"),
    ("rtmr2", 48, "bytes"),
    ("rtmr3", 48, "bytes"),
    ("report_data", 64, "bytes"),
)
_TD_REPORT_15_EXTRA: FieldTable = (
    ("tee_tcb_svn2", 16, "bytes"),
    ("mr_service_td", 48, "bytes"),
)


@dataclass(frozen=True, slots=True)
class TDReport:
    """A TD report as carried in a TDX quote: TD report 1.0 (584 bytes) or 1.5 (648 bytes)."""

    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmr0: bytes
    rtmr1: bytes
    rtmr2: bytes
    rtmr3: bytes
    report_data: bytes
    tee_tcb_svn2: bytes | None = None
    mr_service_td: bytes | None = None

    SIZE_10: ClassVar[int] = table_size(_TD_REPORT_10_FIELDS)
    SIZE_15: ClassVar[int] = SIZE_10 + table_size(_TD_REPORT_15_EXTRA)

    @property
    def is_v15(self) -> bool:
        """True for a TD report 1.5 (TDX 1.5 modules; quote v5 body type 3)."""
        return self.tee_tcb_svn2 is not None

    @property
    def debug(self) -> bool:
        """TDATTRIBUTES.DEBUG (bit 0): the TD is debuggable by the host VMM."""
        return bool(self.td_attributes[0] & 0x1)

    @property
    def rtmrs(self) -> tuple[bytes, bytes, bytes, bytes]:
        """RTMR0..3."""
        return (self.rtmr0, self.rtmr1, self.rtmr2, self.rtmr3)

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> TDReport:
        """Parse a TD report; the length selects 1.0 or 1.5.

        Raises:
            QuoteFormatError: neither length.
        """
        if len(data) == cls.SIZE_10:
            table = _TD_REPORT_10_FIELDS
        elif len(data) == cls.SIZE_15:
            table = (*_TD_REPORT_10_FIELDS, *_TD_REPORT_15_EXTRA)
        else:
            raise QuoteFormatError(
                f"TD report: expected {cls.SIZE_10} or {cls.SIZE_15} bytes, got {len(data)}"
            )
        return cls(**cast(dict[str, Any], unpack_fields(table, data)))

    def to_bytes(self) -> bytes:
        """Serialise exactly as laid out in the quote."""
        table = _TD_REPORT_10_FIELDS
        if self.tee_tcb_svn2 is not None or self.mr_service_td is not None:
            table = (*_TD_REPORT_10_FIELDS, *_TD_REPORT_15_EXTRA)
        try:
            return pack_fields(table, _field_values(self, table))
        except ValueError as exc:
            raise QuoteFormatError(f"TDReport: {exc}") from exc


@dataclass(frozen=True, slots=True)
class CertificationData:
    """Certification data: a type and its payload (type 5 = PEM PCK chain, type 6 = nested QE data)."""

    cert_type: int
    data: bytes

    def to_bytes(self) -> bytes:
        """``u16 type || u32 size || data``."""
        return (
            self.cert_type.to_bytes(2, "little") + len(self.data).to_bytes(4, "little") + self.data
        )

    @property
    def qe_report_certification(self) -> QEReportCertificationData | None:
        """The nested QE report certification data of a type 6 payload, else None.

        Raises:
            QuoteFormatError: a type 6 payload that does not parse.
        """
        if self.cert_type != CertificationDataType.QE_REPORT_CERTIFICATION_DATA:
            return None
        nested, end = _parse_qe_report_certification(memoryview(self.data), 0, "type 6 data")
        if end != len(self.data):
            raise QuoteFormatError(
                f"certification data type 6: {len(self.data) - end} bytes after the nested data"
            )
        return nested

    @property
    def pck_chain_pem(self) -> bytes | None:
        """The PEM PCK certificate chain (type 5, or the type 5 nested in type 6), else None."""
        if self.cert_type == CertificationDataType.PCK_CERT_CHAIN:
            return self.data.rstrip(b"\x00")
        nested = self.qe_report_certification
        if nested is not None:
            return nested.certification_data.pck_chain_pem
        return None

    def pck_chain_certificates(self) -> list[bytes]:
        """The PEM blocks of the PCK chain, leaf first (empty when there is no chain)."""
        pem = self.pck_chain_pem
        return [m.group(0) for m in _PEM_CERT_RE.finditer(pem)] if pem else []


@dataclass(frozen=True, slots=True)
class QEReportCertificationData:
    """The quoting enclave's report, its signature by the PCK key, QE auth data and the PCK data."""

    qe_report: SGXReportBody
    qe_report_signature: bytes
    qe_auth_data: bytes
    certification_data: CertificationData

    def to_bytes(self) -> bytes:
        """QE report, signature, ``u16`` auth size, auth data, certification data."""
        if len(self.qe_report_signature) != _ECDSA_SIGNATURE_SIZE:
            raise QuoteFormatError("QE report signature must be 64 bytes")
        return (
            self.qe_report.to_bytes()
            + self.qe_report_signature
            + len(self.qe_auth_data).to_bytes(2, "little")
            + self.qe_auth_data
            + self.certification_data.to_bytes()
        )


@dataclass(frozen=True, slots=True)
class ECDSASignatureData:
    """The ECDSA-256 quote signature data.

    ``signature`` is ECDSA P-256 (r||s) over header + body by ``attestation_key`` (raw x||y). In
    quote v3 the QE report data is inline; in v4/v5 it is wrapped in certification data type 6
    (``outer_cert_type``).
    """

    signature: bytes
    attestation_key: bytes
    qe: QEReportCertificationData
    outer_cert_type: int | None = None

    def to_bytes(self, version: int) -> bytes:
        """Serialise for a quote of ``version`` (without the leading ``u32`` length)."""
        if len(self.signature) != _ECDSA_SIGNATURE_SIZE:
            raise QuoteFormatError("quote signature must be 64 bytes")
        if len(self.attestation_key) != _ECDSA_PUBLIC_KEY_SIZE:
            raise QuoteFormatError("attestation key must be 64 bytes")
        head = self.signature + self.attestation_key
        if version == 3:
            return head + self.qe.to_bytes()
        outer = CertificationData(
            self.outer_cert_type or CertificationDataType.QE_REPORT_CERTIFICATION_DATA,
            self.qe.to_bytes(),
        )
        return head + outer.to_bytes()


@dataclass(frozen=True, slots=True)
class DCAPQuote:
    """A parsed (unverified) DCAP quote."""

    header: QuoteHeader
    body: SGXReportBody | TDReport
    signature_data: ECDSASignatureData
    #: v5 only: the body type (1 SGX, 2 TD report 1.0, 3 TD report 1.5).
    body_type: int | None = None

    @classmethod
    def build(
        cls, header: QuoteHeader, body: SGXReportBody | TDReport, signature_data: ECDSASignatureData
    ) -> DCAPQuote:
        """Assemble a quote from its parts (used by the simulated platform).

        Raises:
            QuoteFormatError: the parts do not fit together.
        """
        if header.version not in (3, 4):
            raise QuoteFormatError(f"cannot build quote version {header.version}")
        is_td = isinstance(body, TDReport)
        if is_td != (header.tee_type == TEEType.TDX):
            raise QuoteFormatError("body type does not match the header's tee_type")
        return cls(header, body, signature_data)

    @property
    def version(self) -> int:
        """The quote version (3, 4 or 5)."""
        return self.header.version

    @property
    def is_sgx(self) -> bool:
        """An SGX enclave quote."""
        return isinstance(self.body, SGXReportBody)

    @property
    def is_tdx(self) -> bool:
        """A TDX TD quote."""
        return isinstance(self.body, TDReport)

    @property
    def body_bytes(self) -> bytes:
        """The body as signed (for v5 including its type and size prefix)."""
        raw = self.body.to_bytes()
        if self.header.version == 5:
            body_type = (
                self.body_type if self.body_type is not None else _default_body_type(self.body)
            )
            return body_type.to_bytes(2, "little") + len(raw).to_bytes(4, "little") + raw
        return raw

    @property
    def signed_bytes(self) -> bytes:
        """Header + body: the bytes the attestation key signs."""
        return self.header.to_bytes() + self.body_bytes

    @property
    def certification_data(self) -> CertificationData:
        """The innermost certification data (normally type 5, the PCK chain)."""
        return self.signature_data.qe.certification_data

    @property
    def pck_chain_pem(self) -> bytes | None:
        """The PEM PCK certificate chain, leaf first, if the quote carries one."""
        return self.certification_data.pck_chain_pem

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (hex for bytes) of the fields people look at."""
        header = self.header
        out: dict[str, Any] = {
            "version": header.version,
            "tee_type": "TDX" if header.tee_type == TEEType.TDX else "SGX",
            "attestation_key_type": header.attestation_key_type,
            "qe_svn": header.qe_svn,
            "pce_svn": header.pce_svn,
            "qe_vendor_id": header.qe_vendor_id.hex(),
            "user_data": header.user_data.hex(),
        }
        body = self.body
        if isinstance(body, SGXReportBody):
            out.update(
                mr_enclave=body.mr_enclave.hex(),
                mr_signer=body.mr_signer.hex(),
                isv_prod_id=body.isv_prod_id,
                isv_svn=body.isv_svn,
                attributes=body.attributes.hex(),
                debug=body.debug,
                misc_select=body.misc_select,
                cpu_svn=body.cpu_svn.hex(),
                config_svn=body.config_svn,
                report_data=body.report_data.hex(),
            )
        else:
            out.update(
                body_type=self.body_type,
                tee_tcb_svn=body.tee_tcb_svn.hex(),
                mr_seam=body.mr_seam.hex(),
                mr_td=body.mr_td.hex(),
                mr_config_id=body.mr_config_id.hex(),
                mr_owner=body.mr_owner.hex(),
                mr_owner_config=body.mr_owner_config.hex(),
                rtmr0=body.rtmr0.hex(),
                rtmr1=body.rtmr1.hex(),
                rtmr2=body.rtmr2.hex(),
                rtmr3=body.rtmr3.hex(),
                td_attributes=body.td_attributes.hex(),
                xfam=body.xfam.hex(),
                debug=body.debug,
                report_data=body.report_data.hex(),
            )
            if body.mr_service_td is not None:
                out["mr_service_td"] = body.mr_service_td.hex()
        qe = self.signature_data.qe
        out["qe_report"] = {
            "mr_enclave": qe.qe_report.mr_enclave.hex(),
            "mr_signer": qe.qe_report.mr_signer.hex(),
            "isv_prod_id": qe.qe_report.isv_prod_id,
            "isv_svn": qe.qe_report.isv_svn,
        }
        out["certification_data_type"] = self.certification_data.cert_type
        out["quote_length"] = len(self.to_bytes())
        return out

    def to_bytes(self) -> bytes:
        """The quote as bytes (exactly the parsed bytes, without trailing data)."""
        signature = self.signature_data.to_bytes(self.header.version)
        return self.signed_bytes + len(signature).to_bytes(4, "little") + signature


def _default_body_type(body: SGXReportBody | TDReport) -> int:
    if isinstance(body, SGXReportBody):
        return 1
    return 3 if body.is_v15 else 2


class _Reader:
    """Bounds-checked cursor over a memoryview; every overrun is a QuoteFormatError."""

    def __init__(self, data: memoryview, start: int, end: int) -> None:
        self.data = data
        self.pos = start
        self.end = end

    def take(self, size: int, what: str) -> memoryview:
        if size < 0 or self.pos + size > self.end:
            raise QuoteFormatError(
                f"quote truncated: {what} needs {size} bytes at offset {self.pos}, "
                f"only {max(self.end - self.pos, 0)} left"
            )
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "little")

    def u32(self, what: str) -> int:
        return int.from_bytes(self.take(4, what), "little")


def _parse_certification_data(reader: _Reader, what: str) -> CertificationData:
    cert_type = reader.u16(f"{what} type")
    size = reader.u32(f"{what} size")
    if cert_type not in CertificationDataType.__members__.values():
        raise QuoteFormatError(f"{what}: unknown certification data type {cert_type}")
    payload = bytes(reader.take(size, f"{what} ({size} bytes declared)"))
    return CertificationData(cert_type, payload)


def _parse_qe_report_certification(
    data: memoryview, start: int, what: str
) -> tuple[QEReportCertificationData, int]:
    reader = _Reader(data, start, len(data))
    qe_report = SGXReportBody.from_bytes(reader.take(SGXReportBody.SIZE, f"{what}: QE report"))
    qe_signature = bytes(reader.take(_ECDSA_SIGNATURE_SIZE, f"{what}: QE report signature"))
    auth_size = reader.u16(f"{what}: QE auth data size")
    auth = bytes(reader.take(auth_size, f"{what}: QE auth data"))
    inner = _parse_certification_data(reader, f"{what}: certification data")
    if inner.cert_type == CertificationDataType.QE_REPORT_CERTIFICATION_DATA:
        raise QuoteFormatError(f"{what}: certification data type 6 nested in type 6")
    return QEReportCertificationData(qe_report, qe_signature, auth, inner), reader.pos


def parse_quote(data: bytes | bytearray | memoryview) -> DCAPQuote:
    """Parse an SGX (v3, v4) or TDX (v4, v5) ECDSA-P256 DCAP quote.

    Trailing bytes after the declared signature data are ignored.

    Raises:
        QuoteFormatError: the bytes are not a well-formed quote; the message names the part.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise QuoteFormatError(f"quote must be bytes, not {type(data).__name__}")
    view = memoryview(bytes(data))
    reader = _Reader(view, 0, len(view))
    header = QuoteHeader.from_bytes(reader.take(QuoteHeader.SIZE, "header"))
    if header.version not in (3, 4, 5):
        raise QuoteFormatError(f"unsupported quote version {header.version}")
    if header.attestation_key_type != _ATTESTATION_KEY_ECDSA_P256:
        raise QuoteFormatError(
            f"unsupported attestation key type {header.attestation_key_type} (only 2, ECDSA-256)"
        )
    if header.tee_type not in (TEEType.SGX, TEEType.TDX):
        raise QuoteFormatError(f"unknown tee_type {header.tee_type:#x}")
    if header.version == 3 and header.tee_type != TEEType.SGX:
        raise QuoteFormatError("quote v3 must have tee_type SGX")

    body: SGXReportBody | TDReport
    body_type: int | None = None
    if header.version == 5:
        body_type = reader.u16("body type")
        body_size = reader.u32("body size")
        raw_body = reader.take(body_size, f"body ({body_size} bytes declared)")
        expected = {1: SGXReportBody.SIZE, 2: TDReport.SIZE_10, 3: TDReport.SIZE_15}.get(body_type)
        if expected is None:
            raise QuoteFormatError(f"unknown quote v5 body type {body_type}")
        if body_size != expected:
            raise QuoteFormatError(
                f"body type {body_type} must be {expected} bytes, got {body_size}"
            )
        if (body_type == 1) != (header.tee_type == TEEType.SGX):
            raise QuoteFormatError(f"body type {body_type} does not match tee_type")
        body = (
            SGXReportBody.from_bytes(raw_body) if body_type == 1 else TDReport.from_bytes(raw_body)
        )
    elif header.tee_type == TEEType.SGX:
        body = SGXReportBody.from_bytes(reader.take(SGXReportBody.SIZE, "SGX report body"))
    else:
        body = TDReport.from_bytes(reader.take(TDReport.SIZE_10, "TD report"))

    signature_size = reader.u32("signature data length")
    sig_region = reader.take(signature_size, f"signature data ({signature_size} bytes declared)")
    sig_reader = _Reader(sig_region, 0, len(sig_region))
    signature = bytes(sig_reader.take(_ECDSA_SIGNATURE_SIZE, "quote signature"))
    attestation_key = bytes(sig_reader.take(_ECDSA_PUBLIC_KEY_SIZE, "attestation key"))
    outer_type: int | None = None
    if header.version == 3:
        qe, end = _parse_qe_report_certification(sig_region, sig_reader.pos, "signature data")
    else:
        outer = _parse_certification_data(sig_reader, "certification data")
        if outer.cert_type != CertificationDataType.QE_REPORT_CERTIFICATION_DATA:
            raise QuoteFormatError(
                f"quote v{header.version}: certification data type {outer.cert_type}, expected 6"
            )
        outer_type = outer.cert_type
        nested = outer.qe_report_certification
        if nested is None:  # pragma: no cover - type 6 always yields nested data
            raise QuoteFormatError("certification data type 6 without QE report data")
        qe, end = nested, sig_reader.pos
    if end != len(sig_region):
        raise QuoteFormatError(
            f"signature data: {len(sig_region) - end} bytes beyond its declared parts"
        )
    return DCAPQuote(
        header=header,
        body=body,
        signature_data=ECDSASignatureData(signature, attestation_key, qe, outer_type),
        body_type=body_type,
    )
