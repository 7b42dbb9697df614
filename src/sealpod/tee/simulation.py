"""The simulated SGX platform: a simulated Intel PKI that issues real DCAP v3 quotes.

A :class:`SimulatedPlatform` lives in one directory and holds:

* a simulated PKI shaped like Intel's: a root CA (its subject says SIMULATED and INSECURE), a
  PCK *Platform* CA, a PCK leaf certificate carrying the real Intel SGX extension (PPID, TCB
  component SVNs, PCESVN, CPUSVN, PCE-ID, FMSPC, SGX type, platform instance id, configuration)
  and a TCB signing certificate;
* the attestation (quoting) key of a simulated quoting enclave (QE);
* signed collateral in dcap-qvl's ``QuoteCollateralV3`` form: TCB info v3 (id ``SGX``, one
  ``UpToDate`` level matching the PCK certificate), QE identity v2 (id ``QE``, matching the
  simulated QE report), a root CA CRL and a PCK (platform) CRL;
* a 32-byte platform secret from which sealing keys are derived.

Invariants:

* Quotes are byte-for-byte DCAP v3 quotes (attestation key type 2, certification data type 5) and
  are checked by the very same verifier as hardware quotes; only the trust anchor differs. There
  is no "skip" path: a simulated quote verifies only under the simulated root.
* The platform directory is written all at once (a temporary directory renamed into place), so a
  crash never leaves half a platform; private keys and the platform secret are mode 0600 and the
  directory 0700.
* Collateral has a validity window (``issueDate``/``nextUpdate``, CRL ``thisUpdate``/
  ``nextUpdate``; 30 days by default) and is renewed with :meth:`SimulatedPlatform.renew_collateral`.
  Time is always a parameter (epoch seconds); ``None`` means the current time.
* Secrets (private keys, the platform secret) never appear in ``repr``, logs or error messages.

Simulation gives **no** memory isolation: the host can read everything, including the keys in
this directory. It exists so that the whole workflow runs on ordinary machines and CI.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from sealpod._internal.fsutil import fsync_dir, write_file_atomic
from sealpod.attestation.pck import PCKConfiguration, PCKExtensions
from sealpod.attestation.quote import (
    INTEL_QE_VENDOR_ID,
    CertificationData,
    CertificationDataType,
    DCAPQuote,
    ECDSASignatureData,
    QEReportCertificationData,
    QuoteHeader,
    SGXReportBody,
    TEEType,
)
from sealpod.errors import ConfigError, EnvironmentUnavailableError, QuoteFormatError
from sealpod.tee._files import PLATFORM_FORMAT, CollateralFile, FileContentError, PlatformFile

_logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_COLLATERAL_VALIDITY",
    "SEALING_KEY_SIZE",
    "SIMULATED_ROOT_CA_CN",
    "CollateralWindow",
    "SealingPolicy",
    "SimulatedPlatform",
    "default_platform_dir",
]

SealingPolicy = Literal["mrenclave", "mrsigner"]

#: Common names of the simulated PKI. The root's subject says SIMULATED and INSECURE so that no
#: one mistakes it for Intel's; the CA and leaf names keep Intel's wording ("PCK Platform CA",
#: "PCK Certificate", "TCB Signing") so tools that classify certificates by name still work.
SIMULATED_ROOT_CA_CN = "sealpod SIMULATED INSECURE SGX Root CA"
SIMULATED_PLATFORM_CA_CN = "sealpod SIMULATED INSECURE SGX PCK Platform CA"
SIMULATED_PCK_CN = "sealpod SIMULATED INSECURE SGX PCK Certificate"
SIMULATED_TCB_SIGNING_CN = "sealpod SIMULATED INSECURE SGX TCB Signing"
_ORGANIZATION = "sealpod simulation (INSECURE: no memory isolation)"

#: Default lifetime of TCB info, QE identity and the CRLs, like Intel's 30 days.
DEFAULT_COLLATERAL_VALIDITY = 30 * 24 * 3600
#: Size of derived sealing keys: 16 bytes, like SGX EGETKEY and Gramine's
#: ``/dev/attestation/keys/_sgx_mrenclave`` / ``_sgx_mrsigner``.
SEALING_KEY_SIZE = 16

_FORMAT: Final = PLATFORM_FORMAT
_CERT_LIFETIME = dt.timedelta(days=20 * 365)
_CERT_BACKDATE = dt.timedelta(days=1)
_SEALING_INFO_PREFIX = b"sealpod-sim-sealing-key-v1\x00"

# DCAP constants (Intel SGX ECDSA Quote Library API).
_QUOTE_VERSION = 3
_ATTESTATION_KEY_TYPE_ECDSA_P256 = 2
_QE_AUTH_DATA = bytes(range(32))  # Intel's QE3 puts 32 bytes of auth data here

# SGX ATTRIBUTES.FLAGS bits (Intel SDM Vol. 3D, Table 38-3).
_FLAG_INIT = 0x01
_FLAG_DEBUG = 0x02
_FLAG_MODE64BIT = 0x04
_FLAG_PROVISIONKEY = 0x10
_DEFAULT_XFRM = 0xE7  # x87, SSE, AVX, AVX-512 state: what the real vectors carry

# The simulated QE: attributes, miscselect and the masks published in its QE identity, shaped
# like Intel's QE identity (attributes 0x11 under mask FBFF..., miscselect 0 under FFFFFFFF).
_QE_ATTRIBUTES = (_FLAG_INIT | _FLAG_MODE64BIT | _FLAG_PROVISIONKEY).to_bytes(8, "little") + (
    0x03
).to_bytes(8, "little")
_QE_IDENTITY_ATTRIBUTES = "11000000000000000000000000000000"
_QE_IDENTITY_ATTRIBUTES_MASK = "FBFFFFFFFFFFFFFF0000000000000000"

# Default platform TCB: the SVN values of a real Processor-CA platform of 2024, plus
# Platform-CA style configuration (no dynamic platform, no cached keys, no SMT).
_DEFAULT_TCB_COMPONENTS = (14, 14, 3, 3, 255, 255, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0)
_DEFAULT_PCE_SVN = 13
_DEFAULT_QE_SVN = 8
_DEFAULT_QE_ISV_PROD_ID = 1
_DEFAULT_TCB_EVALUATION_DATA_NUMBER = 17
#: FMSPC of the simulated platform. Intel FMSPCs start with a family/model byte; "5EA1..." is
#: deliberately not one of them.
_DEFAULT_FMSPC = bytes.fromhex("5EA1D0000000")
_DEFAULT_PCE_ID = bytes.fromhex("0000")

_KEY_FILES = ("root_ca.key", "pck_platform_ca.key", "pck.key", "tcb_signing.key", "attestation.key")
_CERT_FILES = ("root_ca.pem", "pck_platform_ca.pem", "pck.pem", "tcb_signing.pem")
_SECRET_FILE = "platform_secret.bin"  # noqa: S105 (a file name, not a secret)
_PLATFORM_FILE = "platform.json"
_COLLATERAL_FILE = "collateral.json"


def default_platform_dir() -> Path:
    """``$SEALPOD_SIM_DIR``, else ``<user data dir>/sealpod/sim``."""
    override = os.environ.get("SEALPOD_SIM_DIR")
    if override:
        return Path(override)
    # Imported here: `sealpod run --sim-dir` (and SEALPOD_SIM_DIR) start faster without it.
    import platformdirs

    return Path(platformdirs.user_data_dir("sealpod")) / "sim"


# --------------------------------------------------------------------------------------------
# On-disk models (pydantic at the I/O boundary)
# --------------------------------------------------------------------------------------------


_PlatformFile = PlatformFile
_CollateralFile = CollateralFile


@dataclass(frozen=True)
class CollateralWindow:
    """When the current collateral is valid: ``not_before <= now <= not_after`` (epoch s)."""

    not_before: int
    not_after: int

    def contains(self, now: int) -> bool:
        """True when ``now`` falls inside the window."""
        return self.not_before <= now <= self.not_after


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _now(now: int | None) -> int:
    return int(time.time()) if now is None else int(now)


def _utc(epoch: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, tz=dt.UTC)


def _iso(epoch: int) -> str:
    return _utc(epoch).strftime("%Y-%m-%dT%H:%M:%SZ")


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
        ]
    )


def _raw_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA P-256 / SHA-256 as raw ``r || s`` (32 + 32 bytes), the DCAP encoding."""
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _raw_public_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The public key as raw ``x || y`` (64 bytes), the DCAP encoding."""
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return point[1:]


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` (it must not exist) with ``mode`` from the start, write and fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(path, mode)  # os.open's mode is filtered by the umask; make it exact


def _replace_file_atomically(path: Path, data: bytes, mode: int) -> None:
    write_file_atomic(path, data, mode=mode)


def _build_cert(
    *,
    subject: str,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    public_key: ec.EllipticCurvePublicKey,
    not_before: dt.datetime,
    ca_path_length: int | None,
    extra: list[x509.ExtensionType] | None = None,
) -> x509.Certificate:
    """One certificate with Intel's profile: SKI/AKI, critical key usage and basic constraints."""
    is_ca = ca_path_length is not None
    issuer_name = _name(subject) if issuer is None else issuer.subject
    issuer_public = issuer_key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + _CERT_LIFETIME)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public), False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not is_ca,
                content_commitment=not is_ca,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=is_ca,
                crl_sign=is_ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=ca_path_length), critical=True)
    )
    for extension in extra or []:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _build_crl(
    issuer: x509.Certificate, issuer_key: ec.EllipticCurvePrivateKey, now: int, validity: int
) -> bytes:
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(_utc(now))
        # webpki treats a CRL's nextUpdate as exclusive while dcap-qvl treats TCB info's and QE
        # identity's nextUpdate as inclusive: one extra second makes every part of the
        # collateral valid on exactly [now, now + validity].
        .next_update(_utc(now + validity + 1))
        .add_extension(x509.CRLNumber(now), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        .sign(issuer_key, hashes.SHA256())
    )
    return crl.public_bytes(serialization.Encoding.DER)


def _compact_json(value: Mapping[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"))


# --------------------------------------------------------------------------------------------
# The platform
# --------------------------------------------------------------------------------------------


class SimulatedPlatform:
    """A loaded simulated SGX platform. Build one with :meth:`init` or :meth:`load`."""

    simulated = True

    def __init__(
        self,
        directory: Path,
        *,
        keys: Mapping[str, ec.EllipticCurvePrivateKey],
        certs: Mapping[str, x509.Certificate],
        platform_secret: bytes,
        params: _PlatformFile,
        pck_extensions: PCKExtensions,
    ) -> None:
        # Private: use init()/load(). Everything here has already been validated.
        self._directory = directory
        self._keys = dict(keys)
        self._certs = dict(certs)
        self._secret = platform_secret
        self._params = params
        self._pck = pck_extensions
        self._collateral: _CollateralFile | None = None
        attestation_key = self._keys["attestation.key"]
        self._attestation_public = _raw_public_key(attestation_key)
        self._pck_chain_pem = b"".join(
            _cert_pem(self._certs[name])
            for name in ("pck.pem", "pck_platform_ca.pem", "root_ca.pem")
        )
        # The QE report certifies the attestation key, not the enclave's report, so (like the
        # real QE) it is produced once and reused in every quote: report_data =
        # SHA-256(attestation key || QE auth data) || 32 zero bytes (DCAP QVL step "QE hash").
        qe_report = SGXReportBody.create(
            mr_enclave=bytes.fromhex(params.qe_mr_enclave),
            mr_signer=bytes.fromhex(params.qe_mr_signer),
            report_data=hashlib.sha256(self._attestation_public + _QE_AUTH_DATA).digest()
            + bytes(32),
            isv_prod_id=params.qe_isv_prod_id,
            isv_svn=params.qe_svn,
            attributes=_QE_ATTRIBUTES,
            cpu_svn=self._pck.cpu_svn,
        )
        self._qe = QEReportCertificationData(
            qe_report=qe_report,
            qe_report_signature=_raw_signature(self._keys["pck.key"], qe_report.to_bytes()),
            qe_auth_data=_QE_AUTH_DATA,
            certification_data=CertificationData(
                CertificationDataType.PCK_CERT_CHAIN, self._pck_chain_pem
            ),
        )
        self._header = QuoteHeader(
            version=_QUOTE_VERSION,
            attestation_key_type=_ATTESTATION_KEY_TYPE_ECDSA_P256,
            tee_type=TEEType.SGX,
            qe_svn=params.qe_svn,
            pce_svn=self._pck.pce_svn,
            qe_vendor_id=INTEL_QE_VENDOR_ID,
            user_data=bytes.fromhex(params.qe_id) + bytes(4),
        )
        self._header_bytes = self._header.to_bytes()

    def __repr__(self) -> str:
        return f"SimulatedPlatform(directory={str(self._directory)!r}, simulated=True)"

    # ---------------------------------------------------------------- creation and loading

    @classmethod
    def init(
        cls,
        directory: str | os.PathLike[str],
        *,
        now: int | None = None,
        collateral_validity: int = DEFAULT_COLLATERAL_VALIDITY,
        force: bool = False,
    ) -> SimulatedPlatform:
        """Create a new simulated platform in ``directory`` (atomically) and load it.

        Raises:
            ConfigError: ``directory`` exists and ``force`` is false, the validity is not
                positive, or the directory cannot be written.
        """
        target = Path(directory)
        if collateral_validity <= 0:
            raise ConfigError("collateral validity must be a positive number of seconds")
        if target.exists() and not force:
            raise ConfigError(
                f"a simulated platform already exists at {target} (use --force to replace it)"
            )
        created = _now(now)
        files = cls._generate(created, collateral_validity)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
            tmp.mkdir(mode=0o700)
        except OSError as exc:
            raise ConfigError(f"cannot create {target}: {exc.strerror or exc}") from exc
        try:
            for name, (data, mode) in files.items():
                _write_file(tmp / name, data, mode)
            fsync_dir(tmp)
            if target.exists():
                # Swap: the old platform stays complete until the new one is in place.
                old = target.parent / f".{target.name}.{secrets.token_hex(4)}.old"
                os.rename(target, old)
                os.rename(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, target)
            fsync_dir(target.parent)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ConfigError(f"cannot write {target}: {exc.strerror or exc}") from exc
        _logger.info("created simulated SGX platform at %s", target)
        return cls.load(target)

    @staticmethod
    def _generate(created: int, validity: int) -> dict[str, tuple[bytes, int]]:
        """All files of a fresh platform: name -> (content, mode)."""
        not_before = _utc(created) - _CERT_BACKDATE
        root_key = ec.generate_private_key(ec.SECP256R1())
        ca_key = ec.generate_private_key(ec.SECP256R1())
        pck_key = ec.generate_private_key(ec.SECP256R1())
        tcb_key = ec.generate_private_key(ec.SECP256R1())
        attestation_key = ec.generate_private_key(ec.SECP256R1())

        root = _build_cert(
            subject=SIMULATED_ROOT_CA_CN,
            issuer=None,
            issuer_key=root_key,
            public_key=root_key.public_key(),
            not_before=not_before,
            ca_path_length=1,
        )
        platform_ca = _build_cert(
            subject=SIMULATED_PLATFORM_CA_CN,
            issuer=root,
            issuer_key=root_key,
            public_key=ca_key.public_key(),
            not_before=not_before,
            ca_path_length=0,
        )
        tcb_signing = _build_cert(
            subject=SIMULATED_TCB_SIGNING_CN,
            issuer=root,
            issuer_key=root_key,
            public_key=tcb_key.public_key(),
            not_before=not_before,
            ca_path_length=None,
        )
        extensions = PCKExtensions(
            ppid=secrets.token_bytes(16),
            tcb_component_svns=_DEFAULT_TCB_COMPONENTS,
            pce_svn=_DEFAULT_PCE_SVN,
            cpu_svn=bytes(_DEFAULT_TCB_COMPONENTS),
            pce_id=_DEFAULT_PCE_ID,
            fmspc=_DEFAULT_FMSPC,
            sgx_type=0,
            platform_instance_id=secrets.token_bytes(16),
            configuration=PCKConfiguration(
                dynamic_platform=False, cached_keys=False, smt_enabled=False
            ),
        )
        pck = _build_cert(
            subject=SIMULATED_PCK_CN,
            issuer=platform_ca,
            issuer_key=ca_key,
            public_key=pck_key.public_key(),
            not_before=not_before,
            ca_path_length=None,
            extra=[extensions.to_extension()],
        )
        params = _PlatformFile(
            format=_FORMAT,
            created_at=created,
            collateral_validity_seconds=validity,
            qe_id=secrets.token_hex(16),
            qe_svn=_DEFAULT_QE_SVN,
            qe_isv_prod_id=_DEFAULT_QE_ISV_PROD_ID,
            qe_mr_enclave=secrets.token_hex(32),
            qe_mr_signer=secrets.token_hex(32),
            tcb_evaluation_data_number=_DEFAULT_TCB_EVALUATION_DATA_NUMBER,
        )
        keys = {
            "root_ca.key": root_key,
            "pck_platform_ca.key": ca_key,
            "pck.key": pck_key,
            "tcb_signing.key": tcb_key,
            "attestation.key": attestation_key,
        }
        certs = {
            "root_ca.pem": root,
            "pck_platform_ca.pem": platform_ca,
            "pck.pem": pck,
            "tcb_signing.pem": tcb_signing,
        }
        collateral = _sign_collateral(
            keys=keys,
            certs=certs,
            params=params,
            pck_extensions=extensions,
            now=created,
            validity=validity,
        )
        files: dict[str, tuple[bytes, int]] = {
            name: (_key_pem(key), 0o600) for name, key in keys.items()
        }
        files.update({name: (_cert_pem(cert), 0o644) for name, cert in certs.items()})
        files[_SECRET_FILE] = (secrets.token_bytes(32), 0o600)
        files[_PLATFORM_FILE] = (params.to_json(), 0o644)
        files[_COLLATERAL_FILE] = (collateral.to_json(), 0o644)
        return files

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> SimulatedPlatform:
        """Load and check a simulated platform.

        Raises:
            EnvironmentUnavailableError: there is no platform at ``directory``.
            ConfigError: a platform file is missing, unreadable or corrupted (the message names
                the file, never its content).
        """
        target = Path(directory)
        if not (target / _PLATFORM_FILE).is_file():
            hint = "`sealpod sim init --force`" if target.exists() else "`sealpod sim init`"
            raise EnvironmentUnavailableError(
                f"no simulated SGX platform at {target}; run {hint} first"
            )

        def read(name: str) -> bytes:
            try:
                return (target / name).read_bytes()
            except OSError as exc:
                raise _corrupted(target, name, exc.strerror or "unreadable") from exc

        try:
            params = _PlatformFile.from_json(read(_PLATFORM_FILE))
        except FileContentError as exc:
            raise _corrupted(target, _PLATFORM_FILE, "invalid content") from exc

        keys: dict[str, ec.EllipticCurvePrivateKey] = {}
        for name in _KEY_FILES:
            data = read(name)
            try:
                key = serialization.load_pem_private_key(data, password=None)
            except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
                raise _corrupted(target, name, "not a PEM private key") from exc
            if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
                key.curve, ec.SECP256R1
            ):
                raise _corrupted(target, name, "not an ECDSA P-256 key")
            keys[name] = key

        certs: dict[str, x509.Certificate] = {}
        for name in _CERT_FILES:
            try:
                certs[name] = x509.load_pem_x509_certificate(read(name))
            except ValueError as exc:
                raise _corrupted(target, name, "not a PEM certificate") from exc

        secret = read(_SECRET_FILE)
        if len(secret) != 32:
            raise _corrupted(target, _SECRET_FILE, f"expected 32 bytes, found {len(secret)}")

        _check_pki(target, keys, certs)
        try:
            pck_extensions = PCKExtensions.from_certificate(certs["pck.pem"])
        except QuoteFormatError as exc:
            raise _corrupted(target, "pck.pem", "no valid Intel SGX extension") from exc
        _logger.info("loaded simulated SGX platform from %s", target)
        return cls(
            target,
            keys=keys,
            certs=certs,
            platform_secret=secret,
            params=params,
            pck_extensions=pck_extensions,
        )

    # ---------------------------------------------------------------- public properties

    @property
    def directory(self) -> Path:
        """Where the platform lives."""
        return self._directory

    @property
    def root_certificate(self) -> x509.Certificate:
        """The simulated root CA certificate (the trust anchor for simulated quotes)."""
        return self._certs["root_ca.pem"]

    def root_certificate_der(self) -> bytes:
        """The simulated root CA certificate, DER (what ``verify_with_root_ca`` takes)."""
        return self.root_certificate.public_bytes(serialization.Encoding.DER)

    @property
    def pck_certificate(self) -> x509.Certificate:
        """The simulated PCK leaf certificate."""
        return self._certs["pck.pem"]

    @property
    def pck_chain_pem(self) -> bytes:
        """The PCK chain embedded in quotes: leaf, platform CA, root (PEM)."""
        return self._pck_chain_pem

    @property
    def pck_extensions(self) -> PCKExtensions:
        """The SGX extension of the PCK certificate (FMSPC, TCB, PCE-ID, ...)."""
        return self._pck

    @property
    def attestation_public_key(self) -> bytes:
        """The raw (x || y) public attestation key of the simulated QE."""
        return self._attestation_public

    def describe(self, now: int | None = None) -> dict[str, Any]:
        """A JSON-ready summary of the platform (no secrets), always with ``simulated: true``.

        Raises:
            ConfigError: the collateral file is corrupted.
        """
        root = self.root_certificate
        window = self.collateral_window()
        current = _now(now)
        return {
            "simulated": True,
            "directory": str(self._directory),
            "root_ca_subject": root.subject.rfc4514_string(),
            "root_ca_sha256": root.fingerprint(hashes.SHA256()).hex(),
            "pck_ca_subject": self._certs["pck_platform_ca.pem"].subject.rfc4514_string(),
            "fmspc": self._pck.fmspc.hex().upper(),
            "pce_id": self._pck.pce_id.hex().upper(),
            "pce_svn": self._pck.pce_svn,
            "tcb_component_svns": list(self._pck.tcb_component_svns),
            "qe_svn": self._params.qe_svn,
            "qe_mr_signer": self._params.qe_mr_signer,
            "qe_isv_prod_id": self._params.qe_isv_prod_id,
            "created_at": _iso(self._params.created_at),
            "collateral_not_before": _iso(window.not_before),
            "collateral_not_after": _iso(window.not_after),
            "collateral_valid_now": window.contains(current),
        }

    # ---------------------------------------------------------------- collateral

    def _load_collateral(self) -> _CollateralFile:
        if self._collateral is None:
            path = self._directory / _COLLATERAL_FILE
            try:
                self._collateral = _CollateralFile.from_json(path.read_bytes())
            except OSError as exc:
                raise ConfigError(
                    f"simulated platform collateral {path} is unreadable "
                    f"({exc.strerror or exc}); run `sealpod sim collateral --renew`"
                ) from exc
            except FileContentError as exc:
                raise ConfigError(
                    f"simulated platform collateral {path} is corrupted; "
                    "run `sealpod sim collateral --renew`"
                ) from exc
        return self._collateral

    def collateral(self) -> dict[str, str]:
        """The signed collateral in dcap-qvl ``QuoteCollateralV3`` JSON form.

        Raises:
            ConfigError: the collateral file is missing or corrupted.
        """
        return self._load_collateral().to_dict()

    def collateral_window(self) -> CollateralWindow:
        """The validity window of the current collateral (the intersection of all its parts).

        Raises:
            ConfigError: the collateral file is missing or corrupted.
        """
        collateral = self._load_collateral()
        starts: list[int] = []
        ends: list[int] = []
        try:
            for document in (collateral.tcb_info, collateral.qe_identity):
                body = json.loads(document)
                starts.append(_parse_iso(body["issueDate"]))
                ends.append(_parse_iso(body["nextUpdate"]))
            for crl_hex in (collateral.root_ca_crl, collateral.pck_crl):
                crl = x509.load_der_x509_crl(bytes.fromhex(crl_hex))
                starts.append(int(crl.last_update_utc.timestamp()))
                if crl.next_update_utc is None:
                    raise ValueError("CRL without nextUpdate")
                ends.append(int(crl.next_update_utc.timestamp()) - 1)  # exclusive, see _build_crl
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"simulated platform collateral in {self._directory} is corrupted; "
                "run `sealpod sim collateral --renew`"
            ) from exc
        return CollateralWindow(not_before=max(starts), not_after=min(ends))

    def renew_collateral(
        self, now: int | None = None, *, validity: int | None = None
    ) -> CollateralWindow:
        """Re-sign TCB info, QE identity and both CRLs, valid from ``now`` for ``validity`` s.

        Raises:
            ConfigError: the validity is not positive or the file cannot be written.
        """
        seconds = self._params.collateral_validity_seconds if validity is None else validity
        if seconds <= 0:
            raise ConfigError("collateral validity must be a positive number of seconds")
        issued = _now(now)
        collateral = _sign_collateral(
            keys=self._keys,
            certs=self._certs,
            params=self._params,
            pck_extensions=self._pck,
            now=issued,
            validity=seconds,
        )
        path = self._directory / _COLLATERAL_FILE
        try:
            _replace_file_atomically(path, collateral.to_json(), 0o644)
        except OSError as exc:
            raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from exc
        self._collateral = collateral
        _logger.info(
            "renewed simulated collateral: valid %s .. %s", _iso(issued), _iso(issued + seconds)
        )
        return CollateralWindow(not_before=issued, not_after=issued + seconds)

    # ---------------------------------------------------------------- quotes and keys

    def quote(
        self,
        report_data: bytes,
        *,
        mr_enclave: bytes,
        mr_signer: bytes,
        isv_prod_id: int = 0,
        isv_svn: int = 0,
        debug: bool = False,
        attributes: bytes | None = None,
        cpu_svn: bytes | None = None,
    ) -> bytes:
        """A DCAP v3 quote (ECDSA P-256, PCK chain) for an enclave with this identity.

        ``report_data`` may be shorter than 64 bytes; it is padded with zeros. ``attributes``
        defaults to INIT | MODE64BIT (XFRM 0xE7); ``debug`` sets the DEBUG bit on top of it.
        ``cpu_svn`` defaults to the platform's CPUSVN from the PCK certificate.

        Raises:
            ConfigError: a field has the wrong size or range.
        """
        if len(report_data) > 64:
            raise ConfigError(f"report data is {len(report_data)} bytes; at most 64 allowed")
        for value, size, what in (
            (mr_enclave, 32, "MRENCLAVE"),
            (mr_signer, 32, "MRSIGNER"),
        ):
            if len(value) != size:
                raise ConfigError(f"{what} must be {size} bytes, got {len(value)}")
        if attributes is not None and len(attributes) != 16:
            raise ConfigError(f"attributes must be 16 bytes, got {len(attributes)}")
        if cpu_svn is not None and len(cpu_svn) != 16:
            raise ConfigError(f"CPUSVN must be 16 bytes, got {len(cpu_svn)}")
        for number, what in ((isv_prod_id, "ISVPRODID"), (isv_svn, "ISVSVN")):
            if not 0 <= number <= 0xFFFF:
                raise ConfigError(f"{what} must be in 0..65535, got {number}")
        if attributes is None:
            flags = _FLAG_INIT | _FLAG_MODE64BIT
            attributes = flags.to_bytes(8, "little") + _DEFAULT_XFRM.to_bytes(8, "little")
        if debug:
            flags = int.from_bytes(attributes[:8], "little") | _FLAG_DEBUG
            attributes = flags.to_bytes(8, "little") + attributes[8:]
        body = SGXReportBody.create(
            mr_enclave=mr_enclave,
            mr_signer=mr_signer,
            report_data=report_data.ljust(64, b"\x00"),
            isv_prod_id=isv_prod_id,
            isv_svn=isv_svn,
            attributes=attributes,
            cpu_svn=self._pck.cpu_svn if cpu_svn is None else cpu_svn,
        )
        signed = self._header_bytes + body.to_bytes()
        signature = ECDSASignatureData(
            signature=_raw_signature(self._keys["attestation.key"], signed),
            attestation_key=self._attestation_public,
            qe=self._qe,
        )
        return DCAPQuote.build(self._header, body, signature).to_bytes()

    def sealing_key(
        self,
        policy: SealingPolicy,
        *,
        mr_enclave: bytes,
        mr_signer: bytes,
        isv_prod_id: int = 0,
        debug: bool = False,
    ) -> bytes:
        """A 16-byte sealing key for an enclave identity, stable for this platform.

        HKDF-SHA256 over the platform secret with ``info = label || policy || identity``, where
        the identity is MRENCLAVE (``mrenclave``) or MRSIGNER || ISVPRODID (``mrsigner``), plus
        the DEBUG flag: as in SGX, a debug enclave never gets a production enclave's key.
        ISVSVN is deliberately not part of the key, so upgrades keep their data.

        Raises:
            ConfigError: unknown policy or malformed identity.
        """
        if len(mr_enclave) != 32 or len(mr_signer) != 32:
            raise ConfigError("MRENCLAVE and MRSIGNER must be 32 bytes")
        if not 0 <= isv_prod_id <= 0xFFFF:
            raise ConfigError(f"ISVPRODID must be in 0..65535, got {isv_prod_id}")
        if policy == "mrenclave":
            identity = mr_enclave
        elif policy == "mrsigner":
            identity = mr_signer + isv_prod_id.to_bytes(2, "little")
        else:
            raise ConfigError(f"unknown sealing policy {policy!r} (use mrenclave or mrsigner)")
        info = (
            _SEALING_INFO_PREFIX
            + policy.encode()
            + b"\x00"
            + identity
            + (b"\x01" if debug else b"\x00")
        )
        # Imported here: activation (quotes only) does not need it.
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        return HKDF(
            algorithm=hashes.SHA256(), length=SEALING_KEY_SIZE, salt=None, info=info
        ).derive(self._secret)


def _parse_iso(text: str) -> int:
    return int(dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


def _corrupted(directory: Path, name: str, reason: str) -> ConfigError:
    return ConfigError(
        f"simulated platform at {directory} is corrupted: {name}: {reason}; "
        "re-create it with `sealpod sim init --force`"
    )


def _check_pki(
    directory: Path,
    keys: Mapping[str, ec.EllipticCurvePrivateKey],
    certs: Mapping[str, x509.Certificate],
) -> None:
    """Each key matches its certificate and each certificate is signed by its issuer."""
    pairs = (
        ("root_ca.key", "root_ca.pem"),
        ("pck_platform_ca.key", "pck_platform_ca.pem"),
        ("pck.key", "pck.pem"),
        ("tcb_signing.key", "tcb_signing.pem"),
    )
    for key_name, cert_name in pairs:
        if keys[key_name].public_key() != certs[cert_name].public_key():
            raise _corrupted(directory, key_name, f"does not match {cert_name}")
    root = certs["root_ca.pem"]
    if "SIMULATED" not in root.subject.rfc4514_string():
        raise _corrupted(directory, "root_ca.pem", "not a simulated root CA")
    chain = (
        ("root_ca.pem", "root_ca.pem"),
        ("pck_platform_ca.pem", "root_ca.pem"),
        ("tcb_signing.pem", "root_ca.pem"),
        ("pck.pem", "pck_platform_ca.pem"),
    )
    for cert_name, issuer_name in chain:
        try:
            certs[cert_name].verify_directly_issued_by(certs[issuer_name])
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise _corrupted(directory, cert_name, f"not issued by {issuer_name}") from exc


def _sign_collateral(
    *,
    keys: Mapping[str, ec.EllipticCurvePrivateKey],
    certs: Mapping[str, x509.Certificate],
    params: _PlatformFile,
    pck_extensions: PCKExtensions,
    now: int,
    validity: int,
) -> _CollateralFile:
    """TCB info, QE identity and CRLs signed for ``[now, now + validity]``."""
    issue_date = _iso(now)
    next_update = _iso(now + validity)
    tcb_date = _iso(params.created_at)
    # TCB info v3 (Intel PCS API "TCB Info" v3): one UpToDate level equal to the PCK TCB.
    tcb_info = _compact_json(
        {
            "id": "SGX",
            "version": 3,
            "issueDate": issue_date,
            "nextUpdate": next_update,
            "fmspc": pck_extensions.fmspc.hex().upper(),
            "pceId": pck_extensions.pce_id.hex().upper(),
            "tcbType": 0,
            "tcbEvaluationDataNumber": params.tcb_evaluation_data_number,
            "tcbLevels": [
                {
                    "tcb": {
                        "sgxtcbcomponents": [
                            {"svn": svn} for svn in pck_extensions.tcb_component_svns
                        ],
                        "pcesvn": pck_extensions.pce_svn,
                    },
                    "tcbDate": tcb_date,
                    "tcbStatus": "UpToDate",
                }
            ],
        }
    )
    # QE identity v2 (id "QE"): must match the simulated QE report in every quote.
    qe_identity = _compact_json(
        {
            "id": "QE",
            "version": 2,
            "issueDate": issue_date,
            "nextUpdate": next_update,
            "tcbEvaluationDataNumber": params.tcb_evaluation_data_number,
            "miscselect": "00000000",
            "miscselectMask": "FFFFFFFF",
            "attributes": _QE_IDENTITY_ATTRIBUTES,
            "attributesMask": _QE_IDENTITY_ATTRIBUTES_MASK,
            "mrsigner": params.qe_mr_signer.upper(),
            "isvprodid": params.qe_isv_prod_id,
            "tcbLevels": [
                {
                    "tcb": {"isvsvn": params.qe_svn},
                    "tcbDate": tcb_date,
                    "tcbStatus": "UpToDate",
                }
            ],
        }
    )
    tcb_key = keys["tcb_signing.key"]
    root_pem = _cert_pem(certs["root_ca.pem"]).decode()
    signing_chain = _cert_pem(certs["tcb_signing.pem"]).decode() + root_pem
    return _CollateralFile(
        pck_crl_issuer_chain=_cert_pem(certs["pck_platform_ca.pem"]).decode() + root_pem,
        root_ca_crl=_build_crl(certs["root_ca.pem"], keys["root_ca.key"], now, validity).hex(),
        pck_crl=_build_crl(
            certs["pck_platform_ca.pem"], keys["pck_platform_ca.key"], now, validity
        ).hex(),
        tcb_info_issuer_chain=signing_chain,
        tcb_info=tcb_info,
        tcb_info_signature=_raw_signature(tcb_key, tcb_info.encode()).hex(),
        qe_identity_issuer_chain=signing_chain,
        qe_identity=qe_identity,
        qe_identity_signature=_raw_signature(tcb_key, qe_identity.encode()).hex(),
    )
