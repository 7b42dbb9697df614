"""The coordinator service: state machine, its own identity and PKI, manifest, activation.

States (issue 3 §2)::

    accepting-manifest ──POST /manifest──▶ accepting-services
    recovery: the sealed state exists but this TEE's sealing key does not open it

Invariants:

* Everything persistent lives in the sealed store (:mod:`sealpod.store`): the coordinator CA,
  the manifest (canonical JSON) and its signature, generated secrets, instance records and the
  hash-chained audit log. Every change is one store transaction together with its audit entry.
* An activation releases anything only after, in this order: the service exists, the nonce is
  fresh and now consumed, the CSR parses, the quote verifies under a pinned root with the
  package's policy from the manifest (identity, debug, TCB, simulation) and its report data is
  ``SHA-256("sealpod-activation-v1" ‖ SPKI(csr) ‖ nonce) ‖ 0³²``, and ``max_instances`` leaves
  room. Every refusal (activation or manifest) is appended to the audit log with its reason.
* The service's private key never reaches the coordinator: templates that use
  ``sealpod.private_key`` are rendered with a random placeholder, which the client replaces with
  its key (:attr:`ActivationOutcome.private_key_placeholder`).
"""

from __future__ import annotations

import base64
import datetime
import enum
import hashlib
import hmac
import ipaddress
import itertools
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import ValidationError

from sealpod import __version__
from sealpod.attestation.collateral import Collateral
from sealpod.attestation.policy import AppraisalPolicy
from sealpod.attestation.verify import VerifiedEvidence, verify_quote
from sealpod.coordinator._secrets import (
    SHARED_NAMESPACE,
    SecretResolver,
    changed_secrets,
    decode_secret,
    encode_secret,
    forget_secrets,
)
from sealpod.coordinator.auth import RequestAuthenticator
from sealpod.coordinator.binding import (
    MAX_NONCE_BYTES,
    MIN_NONCE_BYTES,
    activation_report_data,
    coordinator_report_data,
)
from sealpod.coordinator.errors import RequestRefusedError
from sealpod.coordinator.identity import coordinator_identity
from sealpod.coordinator.metrics import CoordinatorMetrics
from sealpod.coordinator.nonces import (
    USED_NAMESPACE,
    IssuedNonce,
    NonceIssuer,
    expiry_of_used_key,
    used_key,
)
from sealpod.coordinator.settings import CoordinatorSettings
from sealpod.errors import ConfigError, QuoteFormatError, SealpodError, VerificationError
from sealpod.manifest import (
    Certificate,
    CertificateChain,
    CertificateSecret,
    Manifest,
    ManifestValidationError,
    Package,
    Policy,
    PrivateKey,
    RenderContext,
    RenderedService,
    SecretBytes,
    canonical_json,
    manifest_digest,
    parse_manifest_document,
    render_service,
    secrets_referenced,
    validate_manifest,
)
from sealpod.pki import CertifiedKey, CoordinatorCA, certificates_to_pem, public_key_der
from sealpod.store import (
    AuditEntry,
    AuditHead,
    AuditLog,
    RecoveryShare,
    SealedStateStore,
    StoreSealedError,
    Transaction,
    open_store,
    recover_store,
)
from sealpod.tee import (
    SimulatedPlatform,
    SimulationBackend,
    TEEBackend,
    default_platform_dir,
    get_backend,
)

__all__ = [
    "ActivationOutcome",
    "ActivationRequestData",
    "Coordinator",
    "CoordinatorEvidence",
    "CoordinatorState",
    "ManifestAccepted",
    "ManifestInfo",
    "SecretRelease",
    "UpdateStatus",
    "UserSecretUpload",
    "package_policy",
]

_logger = logging.getLogger(__name__)
_T = TypeVar("_T")

_NS = "coordinator"
_CA_KEY = "ca"
_MANIFEST_KEY = "manifest"
_MANIFEST_SIGNATURE_KEY = "manifest-signature"
_MANIFEST_SHA_KEY = "manifest-sha256"
_PENDING_UPDATE_KEY = "pending-update"
_NONCE_KEY = "nonce-key"
#: Expired used-nonce records removed per prune, and about how many activations per prune:
#: records are removed twice as fast as they are added, so the namespace stays small.
_NONCE_PRUNE = 32
_NONCE_PRUNE_EVERY = 16
#: Subsets of received recovery shares tried per submitted share.
_MAX_RECOVERY_ATTEMPTS = 64
_COLLATERAL_CACHE_SIZE = 64
_POLICY_CACHE_SIZE = 256
# A decrypted share: "SPRS" 0x01 | store id (16) | threshold (1) | x (1) | y (32)
# (sealpod.store.sealed); checked for shape here so garbage is refused on arrival.
_SHARE_MAGIC = b"SPRS\x01"
_SHARE_SIZE = len(_SHARE_MAGIC) + 16 + 2 + 32
_SIGNATURE_ALGORITHM = "ecdsa-sha384"
# The instance ids the PKI accepts (they become a URI SAN and a store key).
_INSTANCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.~-]{0,127}$")


def _instance_namespace(service: str) -> str:
    return f"instance/{service}"


class CoordinatorState(enum.StrEnum):
    """Where the coordinator is in its life cycle."""

    ACCEPTING_MANIFEST = "accepting-manifest"
    ACCEPTING_SERVICES = "accepting-services"
    RECOVERY = "recovery"


@dataclass(frozen=True)
class CoordinatorEvidence:
    """The coordinator's answer to ``GET /api/v1/quote``."""

    root_certificate: x509.Certificate
    certificate_chain: tuple[x509.Certificate, ...]
    quote: bytes
    collateral: Mapping[str, str] | None
    simulated: bool


@dataclass(frozen=True)
class ManifestAccepted:
    """The result of setting the manifest; the recovery shares are handed out only here."""

    sha256: bytes
    recovery_shares: dict[str, bytes] = field(repr=False)


@dataclass(frozen=True)
class ManifestInfo:
    """The current manifest, its digest and the coordinator root's signature over it."""

    manifest: Manifest
    canonical: bytes
    sha256: bytes
    signature: bytes
    signature_algorithm: str = _SIGNATURE_ALGORITHM


@dataclass(frozen=True)
class ActivationRequestData:
    """What a service sends to activate (already decoded from JSON, not yet checked)."""

    service: str
    instance: str
    csr_pem: str
    nonce_hex: str
    quote_hex: str
    collateral: Mapping[str, Any] | None


@dataclass(frozen=True, repr=False)
class ActivationOutcome:
    """What an activated instance receives."""

    service: str
    instance: str
    certificate: x509.Certificate
    certificate_chain: tuple[x509.Certificate, ...]
    trust_bundle: tuple[x509.Certificate, ...]
    root_certificate: x509.Certificate
    rendered: RenderedService
    private_key_placeholder: str
    evidence: VerifiedEvidence

    def __repr__(self) -> str:
        return (
            f"ActivationOutcome(service={self.service!r}, instance={self.instance!r}, "
            f"simulated={self.evidence.simulated}, rendered={self.rendered!r})"
        )


@dataclass(frozen=True)
class UpdateStatus:
    """A proposed manifest update and its approvals (``applied`` once the threshold is met)."""

    id: str
    manifest_sha256: bytes
    proposer: str
    approvals: tuple[str, ...]
    threshold: int
    applied: bool = False
    #: New recovery shares, when the applied update changed the recovery keys (returned once).
    recovery_shares: dict[str, bytes] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, repr=False)
class UserSecretUpload:
    """A user-defined secret's new value: ``value`` (plain and symmetric-key secrets) or a
    certificate chain (leaf first) with its private key (certificate secrets)."""

    value: bytes | None = None
    certificate_pem: str | None = None
    private_key_pem: str | None = None

    def __repr__(self) -> str:
        return "UserSecretUpload(<hidden>)"


@dataclass(frozen=True, repr=False)
class SecretRelease:
    """A secret as a user with the ``read`` role receives it."""

    name: str
    type: str
    value: bytes | None = None
    certificate_pem: str | None = None
    private_key_pem: str | None = None

    def __repr__(self) -> str:
        return f"SecretRelease(name={self.name!r}, type={self.type!r}, <hidden>)"


_MAX_USER_SECRET = 64 * 1024
_CERT_KEY_TYPES: dict[str, type] = {
    "cert-ecdsa": ec.EllipticCurvePrivateKey,
    "cert-rsa": rsa.RSAPrivateKey,
    "cert-ed25519": ed25519.Ed25519PrivateKey,
}


class _KeyPlaceholder:
    """Stands in for the service's private key while rendering (the coordinator never has it).

    The ``pem`` filter calls ``private_bytes``; we return a random token the client replaces.
    """

    def __init__(self, token: str) -> None:
        self._token = token.encode("ascii")

    def private_bytes(self, *_args: object) -> bytes:
        return self._token


def package_policy(
    package: Package, policy: Policy, *, expected_report_data: bytes | None = None
) -> AppraisalPolicy:
    """The appraisal policy a package of the manifest stands for.

    Raises:
        ConfigError: the package states no identity, or the policy fields are inconsistent.
    """
    if package.mrenclave is None and package.mrsigner is None:
        raise ConfigError("the package names neither mrenclave nor mrsigner")
    data: dict[str, Any] = {
        "tee": "sgx",
        "accepted_tcb_statuses": package.accepted_tcb_statuses,
        "rejected_advisories": package.rejected_advisories,
        "allow_debug": package.debug,
        "allow_simulation": policy.allow_simulation,
    }
    if package.mrenclave is not None:
        data["mrenclave"] = package.mrenclave
    if package.mrsigner is not None:
        data["mrsigner"] = package.mrsigner
        data["isv_prod_id"] = package.isv_prod_id
    if package.min_isv_svn is not None:
        data["min_isv_svn"] = package.min_isv_svn
    if expected_report_data is not None:
        data["expected_report_data"] = expected_report_data
    try:
        return AppraisalPolicy.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"package policy: {exc.errors()[0]['msg']}") from exc


def _refusal_code(exc: SealpodError) -> str:
    if isinstance(exc, RequestRefusedError):
        return exc.code
    if isinstance(exc, VerificationError):
        return exc.reason
    if isinstance(exc, QuoteFormatError):
        return "malformed_quote"
    if isinstance(exc, ManifestValidationError):
        return "manifest_invalid"
    if isinstance(exc, ConfigError):
        return "invalid_request"
    return "refused"


class Coordinator:
    """One coordinator: its TEE, its sealed state and what it serves. Thread-safe.

    Build with :meth:`open`.
    """

    def __init__(
        self,
        settings: CoordinatorSettings,
        backend: TEEBackend,
        store: SealedStateStore | None,
        *,
        sealed_error: StoreSealedError | None = None,
        sealing_key: bytes | None = None,
    ) -> None:
        self._settings = settings
        self._backend = backend
        self._store = store
        self._sealed_error = sealed_error
        self._sealing_key = sealing_key
        self._recovery_shares: list[bytes] = []
        self._recovery_lock = threading.Lock()
        self._collateral_cache: dict[bytes, Collateral] = {}
        self._policy_cache: dict[tuple[bytes, str], AppraisalPolicy] = {}
        self._recovery_credentials: CertifiedKey | None = None
        self._unsealed_callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._nonces: NonceIssuer | None = None
        self._ca: CoordinatorCA | None = None
        self._metrics = CoordinatorMetrics()
        self._auth = RequestAuthenticator()
        self._manifest: ManifestInfo | None = None
        self._simulated_root = settings.simulated_root_der
        if self._simulated_root is None and isinstance(backend, SimulationBackend):
            self._simulated_root = backend.platform.root_certificate_der()
        if store is not None:
            self._load_or_initialise(store)

    def __repr__(self) -> str:
        return f"Coordinator(state={self.state.value}, simulated={self.simulated})"

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def open(
        cls, settings: CoordinatorSettings, *, backend: TEEBackend | None = None
    ) -> Coordinator:
        """Open the TEE backend and the sealed store; create the CA on first start.

        The simulated coordinator claims :func:`~sealpod.coordinator.identity.coordinator_identity`.
        A store that this TEE's sealing key cannot open puts the coordinator in ``recovery``.

        Raises:
            ConfigError: bad settings (state URL, ...).
            EnvironmentUnavailableError: no simulated platform / no Gramine device, or the
                database cannot be used.
            VerificationError: the sealed state was tampered with.
        """
        if backend is None:
            if settings.tee == "simulation":
                directory = settings.sim_dir or default_platform_dir()
                platform = SimulatedPlatform.load(directory)
                backend = SimulationBackend(platform, coordinator_identity())
            else:
                backend = get_backend("gramine", gramine_root=settings.gramine_root)
        if settings.state_url.startswith("sqlite:///"):
            Path(settings.state_url[len("sqlite://") :]).parent.mkdir(
                parents=True, exist_ok=True, mode=0o700
            )
        sealing_key = backend.sealing_key("mrsigner")
        try:
            store = open_store(settings.state_url, sealing_key)
        except StoreSealedError as exc:
            _logger.error("the sealed state cannot be unsealed; entering recovery: %s", exc)
            return cls(settings, backend, None, sealed_error=exc, sealing_key=sealing_key)
        return cls(settings, backend, store, sealing_key=sealing_key)

    def _load_or_initialise(self, store: SealedStateStore) -> None:
        now = self._now_datetime()
        simulated = self.simulated
        name = self._settings.name

        def body(tx: Transaction) -> CoordinatorCA:
            if tx.get(_NS, _NONCE_KEY) is None:
                tx.put(_NS, _NONCE_KEY, secrets.token_bytes(32))
            raw = tx.get(_NS, _CA_KEY)
            if raw is not None:
                return CoordinatorCA.from_bytes(raw)
            ca = CoordinatorCA.create(now=now, name=name, simulated=simulated)
            tx.put(_NS, _CA_KEY, ca.to_bytes())
            AuditLog.append(
                tx,
                {
                    "type": "coordinator_initialized",
                    "root_sha256": ca.root_certificate.fingerprint(hashes.SHA256()).hex(),
                    "simulated": simulated,
                },
                now=now,
            )
            return ca

        self._ca = self._transact(store, body)
        nonce_key = store.get(_NS, _NONCE_KEY)
        if nonce_key is None:  # pragma: no cover - written just above
            raise VerificationError("state_malformed", "the nonce key is missing")
        self._nonces = NonceIssuer(nonce_key, ttl=self._settings.nonce_ttl)
        self._reload(store)

    def _reload(self, store: SealedStateStore) -> tuple[ManifestInfo | None, CoordinatorCA]:
        """Read the manifest and CA from the store (they change together) and serve them."""
        with store.snapshot() as view:
            raw_ca = view.get(_NS, _CA_KEY)
            canonical = view.get(_NS, _MANIFEST_KEY)
            signature = view.get(_NS, _MANIFEST_SIGNATURE_KEY)
        if raw_ca is None:  # pragma: no cover - written on first start
            raise VerificationError("pki_state_malformed", "the coordinator CA is missing")
        ca = CoordinatorCA.from_bytes(raw_ca)
        info: ManifestInfo | None = None
        if canonical is not None and signature is not None:
            manifest = validate_manifest(json.loads(canonical))
            info = ManifestInfo(
                manifest=manifest,
                canonical=canonical,
                sha256=manifest_digest(manifest),
                signature=signature,
            )
        with self._lock:
            self._manifest, self._ca = info, ca
        return info, ca

    def _deployment(self) -> tuple[ManifestInfo | None, CoordinatorCA]:
        """The manifest and CA to serve, reloaded if another replica (sharing the database)
        changed them: one small record read per call.

        Raises:
            RequestRefusedError: ``recovery_mode``.
        """
        store = self._require_store()
        with self._lock:
            info, ca = self._manifest, self._ca
        stored = store.get(_NS, _MANIFEST_SHA_KEY)
        if ca is None or (stored is not None and (info is None or stored != info.sha256)):
            _logger.info("the manifest changed in the shared state; reloading")
            return self._reload(store)
        return info, ca

    def close(self) -> None:
        """Close the store."""
        if self._store is not None:
            self._store.close()

    # -- properties -------------------------------------------------------------------------

    @property
    def settings(self) -> CoordinatorSettings:
        """The settings it runs with."""
        return self._settings

    @property
    def metrics(self) -> CoordinatorMetrics:
        """Counters and latency of this process."""
        return self._metrics

    @property
    def simulated(self) -> bool:
        """True when the coordinator runs on the simulated platform."""
        return bool(self._backend.simulated)

    @property
    def state(self) -> CoordinatorState:
        """The current state."""
        if self._store is None:
            return CoordinatorState.RECOVERY
        with self._lock:
            manifest = self._manifest
        return (
            CoordinatorState.ACCEPTING_MANIFEST
            if manifest is None
            else CoordinatorState.ACCEPTING_SERVICES
        )

    @property
    def ca(self) -> CoordinatorCA:
        """The coordinator CA.

        Raises:
            RequestRefusedError: ``recovery_mode`` (503) while the state is sealed.
        """
        if self._ca is None:
            raise RequestRefusedError(
                "recovery_mode", "the coordinator is in recovery mode", status=503
            )
        return self._ca

    def _transact(self, store: SealedStateStore, body: Callable[[Transaction], _T]) -> _T:
        # One writer at a time inside this process: waiting on a Python lock is fair and
        # immediate, whereas SQLite's busy handler backs off by sleeping (tens of ms), which
        # collapses throughput when many activations arrive together. Other processes
        # (replicas) still serialise through the database.
        with self._write_lock:
            return store.transact(body)

    def _require_store(self) -> SealedStateStore:
        if self._store is None:
            raise RequestRefusedError(
                "recovery_mode", "the coordinator is in recovery mode", status=503
            )
        return self._store

    def _now(self) -> float:
        return float(self._settings.clock())

    def _now_datetime(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self._now(), datetime.UTC)

    def status(self) -> dict[str, Any]:
        """State, ``simulated``, version and the manifest digest (if any)."""
        if self._store is not None:
            self._deployment()
        with self._lock:
            manifest = self._manifest
        return {
            "state": self.state.value,
            "simulated": self.simulated,
            "version": __version__,
            "tee": self._settings.tee,
            "manifest_sha256": manifest.sha256.hex() if manifest else None,
            "recovery": self.recovery_status(),
        }

    # -- the coordinator's own evidence -----------------------------------------------------

    def evidence(self, nonce: bytes) -> CoordinatorEvidence:
        """A quote binding the root certificate to ``nonce``, with chain and collateral.

        Raises:
            RequestRefusedError: ``invalid_nonce`` (400) or ``recovery_mode`` (503).
            EnvironmentUnavailableError: the TEE cannot produce a quote.
        """
        if not MIN_NONCE_BYTES <= len(nonce) <= MAX_NONCE_BYTES:
            raise RequestRefusedError(
                "invalid_nonce",
                f"the nonce must be {MIN_NONCE_BYTES}..{MAX_NONCE_BYTES} bytes",
            )
        with self._lock:
            ca, recovery = self._ca, self._recovery_credentials
        if ca is not None:
            root = ca.root_certificate
            chain: tuple[x509.Certificate, ...] = (root, *ca.trust_bundle())
        elif recovery is not None:
            # Sealed: bind the ephemeral TLS certificate instead, for the share holders.
            root = recovery.certificate
            chain = (root,)
        else:
            raise RequestRefusedError(
                "recovery_mode", "the coordinator is in recovery mode", status=503
            )
        quote = self._backend.quote(
            coordinator_report_data(root.public_bytes(serialization.Encoding.DER), nonce)
        )
        collateral: Mapping[str, str] | None = None
        if isinstance(self._backend, SimulationBackend):
            collateral = self._backend.platform.collateral()
        return CoordinatorEvidence(
            root_certificate=root,
            certificate_chain=chain,
            quote=quote,
            collateral=collateral,
            simulated=self.simulated,
        )

    def issue_server_certificate(
        self,
        *,
        dns_names: Sequence[str],
        ip_addresses: Sequence[str],
        validity: datetime.timedelta = datetime.timedelta(days=365),
    ) -> CertifiedKey:
        """A TLS server certificate issued directly by the root (clients pin the root).

        In recovery the root is sealed away: the certificate is then an ephemeral self-signed
        one, which the coordinator's quote binds instead of the root (so share holders can
        attest the coordinator before sending their shares).

        Raises:
            ConfigError: a bad DNS name or IP address.
        """
        common_name = (list(dns_names) + list(ip_addresses) + [self._settings.name])[0][:64]
        if self._ca is None:
            return self._recovery_certificate(common_name, dns_names, ip_addresses)
        ca = self._ca
        return ca.issue_secret_cert(
            key_type="ecdsa",
            key_size=256,
            common_name=common_name,
            dns_names=dns_names,
            ips=ip_addresses,
            key_usage=("digital_signature", "server_auth"),
            validity=validity,
            issuer=ca.root,
            simulated=ca.simulated,
            now=self._now_datetime(),
        )

    def _recovery_certificate(
        self, common_name: str, dns_names: Sequence[str], ip_addresses: Sequence[str]
    ) -> CertifiedKey:
        now = self._now_datetime()
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sealpod"),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "RECOVERY"),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            ]
        )
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
        try:
            names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
        except ValueError as exc:
            raise ConfigError(f"invalid IP address: {exc}") from exc
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), False)
        certificate = builder.sign(key, hashes.SHA256())
        credentials = CertifiedKey(certificate=certificate, private_key=key)
        with self._lock:
            self._recovery_credentials = credentials
        return credentials

    # -- recovery ---------------------------------------------------------------------------

    def on_unsealed(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the state has been recovered (e.g. to switch TLS to the root)."""
        self._unsealed_callbacks.append(callback)

    def recovery_status(self) -> dict[str, Any] | None:
        """``{"threshold", "received", "recovery_keys"}`` in recovery, else ``None``."""
        with self._lock:
            error = self._sealed_error
            received = len(self._recovery_shares)
        if error is None:
            return None
        return {
            "threshold": error.threshold,
            "received": received,
            "recovery_keys": list(error.recovery_keys),
        }

    def submit_recovery_share(self, share: bytes) -> dict[str, Any]:
        """Take one decrypted recovery share; once ``threshold`` good ones are in, unseal.

        Shares are checked for shape on arrival (size, magic, threshold).
        When enough have arrived, every ``threshold``-subset that includes the newest share is
        tried (at most :data:`_MAX_RECOVERY_ATTEMPTS`), so a bad share sent by someone else
        cannot block the good ones: it only stays unused. At most twice as many shares as
        there are recovery keys are kept.

        Returns ``{"threshold", "received", "recovered"}``.

        Raises:
            RequestRefusedError: ``not_in_recovery`` (409), ``no_recovery_keys`` (409: the
                state is lost), ``duplicate_share`` (409), ``too_many_shares`` (409),
                ``invalid_share`` (400).
            VerificationError: enough shares arrived but no subset rebuilds the data key
                (``recovery_shares_invalid``, ``recovery_share_foreign``, ...); they are kept.
        """
        raw = bytes(share)
        with self._recovery_lock:
            with self._lock:
                error = self._sealed_error
                if error is None or self._store is not None:
                    raise RequestRefusedError(
                        "not_in_recovery", "the coordinator is not in recovery", status=409
                    )
            threshold = error.threshold
            if threshold < 1:
                raise RequestRefusedError(
                    "no_recovery_keys", "no recovery keys were configured", status=409
                )
            _check_share_shape(raw, threshold)
            # Equal bytes only: refusing a second share with the same x would let whoever
            # sends a forged share first shut out the genuine one.
            if any(hmac.compare_digest(raw, known) for known in self._recovery_shares):
                raise RequestRefusedError(
                    "duplicate_share", "this share was received already", status=409
                )
            if len(self._recovery_shares) >= 2 * max(len(error.recovery_keys), threshold):
                raise RequestRefusedError(
                    "too_many_shares", "too many shares received; restart to clear", status=409
                )
            self._recovery_shares.append(raw)
            received = len(self._recovery_shares)
            if received < threshold:
                return {"threshold": threshold, "received": received, "recovered": False}
            store, used = self._try_recovery(raw, threshold)
            self._recovery_shares = []
        self._load_or_initialise(store)
        with self._lock:
            self._store = store
            self._sealed_error = None
        now = self._now_datetime()
        self._transact(
            store,
            lambda tx: AuditLog.append(
                tx, {"type": "state_recovered", "shares": used, "received": received}, now=now
            ),
        )
        _logger.warning("sealed state recovered with %d of %d shares", used, received)
        for callback in self._unsealed_callbacks:
            callback()
        return {"threshold": threshold, "received": received, "recovered": True}

    def _try_recovery(self, newest: bytes, threshold: int) -> tuple[SealedStateStore, int]:
        if self._sealing_key is None:
            raise RequestRefusedError("no_sealing_key", "this TEE has no sealing key", status=409)
        others = [known for known in self._recovery_shares if known is not newest]
        last_error: VerificationError | None = None
        for attempt, subset in enumerate(itertools.combinations(others, threshold - 1)):
            if attempt >= _MAX_RECOVERY_ATTEMPTS:
                break
            try:
                store = recover_store(
                    self._settings.state_url, self._sealing_key, [*subset, newest]
                )
            except VerificationError as exc:
                last_error = exc
                continue
            return store, threshold
        _logger.warning("no subset of %d received shares opens the state", len(others) + 1)
        if last_error is None:  # pragma: no cover - at least one subset is tried
            raise VerificationError("recovery_shares_invalid", "no subset could be tried")
        raise last_error

    # -- manifest ---------------------------------------------------------------------------

    def manifest_info(self) -> ManifestInfo:
        """The current manifest with digest and signature.

        Raises:
            RequestRefusedError: ``no_manifest`` (404) before one is set; ``recovery_mode``.
        """
        manifest, _ = self._deployment()
        if manifest is None:
            raise RequestRefusedError("no_manifest", "no manifest has been set", status=404)
        return manifest

    def set_manifest(self, document: bytes) -> ManifestAccepted:
        """Validate (schema, references, dry run), store and activate the first manifest.

        Generates the shared secrets and, when the manifest has ``recovery`` keys, splits the
        state's data key to them (the encrypted shares are returned once, here).

        Raises:
            RequestRefusedError: ``manifest_already_set`` (409), ``recovery_mode`` (503).
            ManifestValidationError: the manifest is invalid (every problem).
        """
        store = self._require_store()
        try:
            if self.state is not CoordinatorState.ACCEPTING_MANIFEST:
                raise RequestRefusedError(
                    "manifest_already_set",
                    "a manifest is already set (updates go through governance)",
                    status=409,
                )
            manifest = validate_manifest(parse_manifest_document(document))
            accepted, info = self._store_manifest(store, manifest)
        except SealpodError as exc:
            self._metrics.manifest_refused(_refusal_code(exc))
            self._audit_refusal({"type": "manifest_refused"}, exc)
            raise
        with self._lock:
            self._manifest = info
        _logger.info("manifest %s set", accepted.sha256.hex())
        return accepted

    def _store_manifest(
        self, store: SealedStateStore, manifest: Manifest
    ) -> tuple[ManifestAccepted, ManifestInfo]:
        ca = self.ca
        now = self._now_datetime()
        canonical = canonical_json(manifest)
        digest = manifest_digest(manifest)
        signature = self._sign(ca, canonical)

        def body(tx: Transaction) -> dict[str, bytes]:
            if tx.get(_NS, _MANIFEST_KEY) is not None:
                raise RequestRefusedError(
                    "manifest_already_set", "a manifest is already set", status=409
                )
            tx.put(_NS, _MANIFEST_KEY, canonical)
            tx.put(_NS, _MANIFEST_SIGNATURE_KEY, signature)
            tx.put(_NS, _MANIFEST_SHA_KEY, digest)
            generated = SecretResolver(
                tx, manifest, ca, now=now, simulated=self.simulated
            ).generate_shared()
            shares = self._split_recovery(tx, manifest)
            AuditLog.append(
                tx,
                {
                    "type": "manifest_set",
                    "sha256": digest.hex(),
                    "secrets_generated": sorted(generated),
                    "recovery_keys": sorted(shares),
                },
                now=now,
            )
            return shares

        shares = self._transact(store, body)
        info = ManifestInfo(
            manifest=manifest, canonical=canonical, sha256=digest, signature=signature
        )
        return ManifestAccepted(sha256=digest, recovery_shares=shares), info

    # -- activation -------------------------------------------------------------------------

    def new_nonce(self) -> IssuedNonce:
        """A single-use activation nonce.

        Raises:
            RequestRefusedError: ``no_manifest`` (409), ``recovery_mode``.
        """
        self._current_manifest()
        if self._nonces is None:  # pragma: no cover - set whenever there is a store
            raise RequestRefusedError("recovery_mode", "the coordinator is in recovery", status=503)
        return self._nonces.issue(self._now())

    def activate(self, request: ActivationRequestData) -> ActivationOutcome:
        """Verify a service's evidence and, if everything holds, certify and provision it.

        Raises:
            VerificationError: the nonce, CSR, quote, collateral or policy check failed
                (``reason`` says which).
            QuoteFormatError: the quote does not parse.
            RequestRefusedError: ``no_manifest``, ``unknown_service``, ``too_many_instances``,
                ``secret_not_set``, ``render_failed``, ``collateral_required``,
                ``invalid_nonce``, ``recovery_mode``.
        """
        started = time.perf_counter()
        spent: list[str] = []  # the used-nonce key, once the nonce passed its checks
        try:
            outcome = self._activate(request, spent)
        except SealpodError as exc:
            self._metrics.activation_refused(_refusal_code(exc), time.perf_counter() - started)
            self._audit_refusal(
                {
                    "type": "activation_refused",
                    "service": request.service,
                    "instance": request.instance,
                },
                exc,
                spent_nonce=spent[0] if spent else None,
            )
            raise
        self._metrics.activation(request.service, time.perf_counter() - started)
        return outcome

    def _collateral(self, document: Mapping[str, Any]) -> Collateral:
        """Parse collateral, reusing the parsed object when the same document comes again
        (every service of a platform sends the same one until it is renewed). The cache key
        is the whole document, so a cached object is exactly what a fresh parse would give."""
        try:
            key = hashlib.sha256(
                json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
            ).digest()
        except (TypeError, ValueError) as exc:
            raise VerificationError("malformed_collateral", "not a JSON object") from exc
        with self._lock:
            cached = self._collateral_cache.get(key)
        if cached is not None:
            return cached
        parsed = Collateral.from_mapping(document)
        with self._lock:
            if len(self._collateral_cache) >= _COLLATERAL_CACHE_SIZE:
                self._collateral_cache.pop(next(iter(self._collateral_cache)))
            self._collateral_cache[key] = parsed
        return parsed

    def _package_policy(self, info: ManifestInfo, package: str) -> AppraisalPolicy:
        key = (info.sha256, package)
        with self._lock:
            cached = self._policy_cache.get(key)
        if cached is None:
            cached = package_policy(info.manifest.packages[package], info.manifest.policy)
            with self._lock:
                if len(self._policy_cache) >= _POLICY_CACHE_SIZE:
                    self._policy_cache.clear()
                self._policy_cache[key] = cached
        return cached

    def _activate(self, request: ActivationRequestData, spent: list[str]) -> ActivationOutcome:
        store = self._require_store()
        now = self._now()
        now_dt = datetime.datetime.fromtimestamp(now, datetime.UTC)
        info, ca = self._deployment()
        if info is None:
            raise RequestRefusedError("no_manifest", "no manifest has been set", status=409)
        manifest = info.manifest
        service_spec = manifest.services.get(request.service)
        if service_spec is None:
            raise RequestRefusedError(
                "unknown_service", "the manifest has no such service", status=404
            )
        if not _INSTANCE_RE.fullmatch(request.instance):
            raise RequestRefusedError(
                "invalid_instance", "instance ids are 1-128 letters, digits and _.~-"
            )
        try:
            nonce = bytes.fromhex(request.nonce_hex)
        except ValueError as exc:
            raise RequestRefusedError("invalid_nonce", "the nonce is not hex") from exc
        if self._nonces is None:  # pragma: no cover - set whenever there is a store
            raise RequestRefusedError("recovery_mode", "the coordinator is in recovery", status=503)
        used = used_key(nonce, self._nonces.check(nonce, now))
        if store.get(USED_NAMESPACE, used) is not None:
            raise VerificationError("nonce_reused", "the nonce was already used")
        # From here on the nonce is spent, whatever happens (checked again atomically below).
        spent.append(used)
        try:
            csr = x509.load_pem_x509_csr(request.csr_pem.encode())
            spki = public_key_der(csr.public_key())
        except (ValueError, TypeError) as exc:
            raise VerificationError(
                "malformed_csr", "the CSR is not a PEM PKCS#10 request"
            ) from exc
        try:
            quote = bytes.fromhex(request.quote_hex)
        except ValueError as exc:
            raise QuoteFormatError("the quote is not hex") from exc
        if request.collateral is None:
            raise RequestRefusedError("collateral_required", "send the quote's collateral")
        collateral = self._collateral(request.collateral)
        package = manifest.packages[service_spec.package]
        policy = self._package_policy(info, service_spec.package).model_copy(
            update={"expected_report_data": activation_report_data(spki, nonce)}
        )
        evidence = verify_quote(
            quote,
            collateral,
            at=int(now),
            policy=policy,
            simulated_root_der=self._simulated_root,
        )
        if package.accepted_advisories is not None:
            open_advisories = sorted(set(evidence.advisory_ids) - set(package.accepted_advisories))
            if open_advisories:
                raise VerificationError(
                    "advisory_not_accepted",
                    f"the platform is affected by {', '.join(open_advisories)}",
                )
        return self._provision(store, info, ca, request, csr, evidence, now_dt, used)

    def _provision(
        self,
        store: SealedStateStore,
        info: ManifestInfo,
        ca: CoordinatorCA,
        request: ActivationRequestData,
        csr: x509.CertificateSigningRequest,
        evidence: VerifiedEvidence,
        now: datetime.datetime,
        used_nonce: str,
    ) -> ActivationOutcome:
        manifest = info.manifest
        service = request.service
        instance = request.instance
        spec = manifest.services[service]
        referenced = sorted(secrets_referenced(manifest, service))
        placeholder = f"sealpod-activation-private-key-{secrets.token_hex(16)}"
        validity = datetime.timedelta(days=self._settings.leaf_validity_days)

        # Signed outside the write transaction (it needs nothing from the store); a leaf of a
        # refused activation is simply never sent.
        leaf = ca.issue_leaf(
            csr,
            service=service,
            instance=instance,
            simulated=evidence.simulated,
            validity=validity,
            now=now,
        )
        chain = (leaf, ca.mesh.certificate)
        # Expired used-nonce records are pruned now and then (each prune reads a few records).
        prune = secrets.randbelow(_NONCE_PRUNE_EVERY) == 0

        def body(tx: Transaction) -> ActivationOutcome:
            if tx.get(_NS, _MANIFEST_SHA_KEY) != info.sha256:
                # An update was applied since this activation began: everything it would
                # release must come from one manifest, so the service asks again.
                raise RequestRefusedError(
                    "manifest_changed", "the manifest was updated meanwhile; retry", status=503
                )
            if tx.get(USED_NAMESPACE, used_nonce) is not None:
                raise VerificationError("nonce_reused", "the nonce was already used")
            tx.put(USED_NAMESPACE, used_nonce, b"")
            if prune:
                _prune_used_nonces(tx, now)
            namespace = _instance_namespace(service)
            known = tx.get(namespace, instance) is not None
            if not known and spec.max_instances is not None:
                if len(tx.keys(namespace)) >= spec.max_instances:
                    raise RequestRefusedError(
                        "too_many_instances",
                        f"service {service} already has {spec.max_instances} instance(s)",
                        status=409,
                    )
            resolver = SecretResolver(
                tx,
                manifest,
                ca,
                now=now,
                simulated=self.simulated,
                service=service,
                instance=instance,
            )
            values = {}
            for name in referenced:
                value = resolver.get(name)
                if value is None:
                    raise RequestRefusedError(
                        "secret_not_set", f"secret {name} has not been set yet", status=409
                    )
                values[name] = value
            context = RenderContext(
                instance=instance,
                cert_chain=CertificateChain(chain),
                private_key=PrivateKey(
                    cast(CertificateIssuerPrivateKeyTypes, _KeyPlaceholder(placeholder))
                ),
                mesh_root=Certificate(ca.root_certificate),
                coordinator_root=Certificate(ca.root_certificate),
                secrets=values,
            )
            try:
                rendered = render_service(manifest, service, context)
            except ManifestValidationError as exc:
                raise RequestRefusedError("render_failed", str(exc), status=409) from exc
            record = {
                "service": service,
                "instance": instance,
                "activated_at": now.isoformat(),
                "certificate_serial": f"{leaf.serial_number:x}",
                "mr_enclave": _hex(evidence.mr_enclave),
                "mr_signer": _hex(evidence.mr_signer),
                "isv_svn": evidence.isv_svn,
                "simulated": evidence.simulated,
                "manifest_sha256": info.sha256.hex(),
            }
            tx.put(namespace, instance, json.dumps(record, sort_keys=True).encode())
            AuditLog.append(
                tx,
                {
                    "type": "activation",
                    **record,
                    "reactivation": known,
                    "secrets_released": referenced,
                    "tcb_status": evidence.status,
                },
                now=now,
            )
            return ActivationOutcome(
                service=service,
                instance=instance,
                certificate=leaf,
                certificate_chain=chain,
                trust_bundle=ca.trust_bundle(),
                root_certificate=ca.root_certificate,
                rendered=rendered,
                private_key_placeholder=placeholder,
                evidence=evidence,
            )

        outcome = self._transact(store, body)
        _logger.info("activated %s/%s (simulated=%s)", service, instance, evidence.simulated)
        return outcome

    # -- governance: manifest updates ---------------------------------------------------------

    @staticmethod
    def _threshold(manifest: Manifest) -> int:
        return manifest.governance.update_threshold if manifest.governance is not None else 1

    def _status_of(self, pending: Mapping[str, Any], threshold: int) -> UpdateStatus:
        return UpdateStatus(
            id=str(pending["id"]),
            manifest_sha256=bytes.fromhex(str(pending["sha256"])),
            proposer=str(pending["proposer"]),
            approvals=tuple(str(user) for user in pending["approvals"]),
            threshold=threshold,
        )

    def pending_update(self) -> UpdateStatus | None:
        """The pending manifest update, if any.

        Raises:
            RequestRefusedError: ``no_manifest`` (409), ``recovery_mode`` (503).
        """
        store = self._require_store()
        info = self._current_manifest()
        raw = store.get(_NS, _PENDING_UPDATE_KEY)
        if raw is None:
            return None
        return self._status_of(json.loads(raw), self._threshold(info.manifest))

    def propose_update(self, user: str, document: bytes) -> UpdateStatus:
        """Propose a new manifest as ``user`` (role ``manifest``/``update``); the proposal
        counts as the proposer's approval, so it applies at once when the threshold is 1.

        Raises:
            RequestRefusedError: ``permission_denied`` (403), ``update_pending`` and
                ``manifest_unchanged`` (409), ``no_manifest``, ``recovery_mode``.
            ManifestValidationError: the new manifest is invalid.
        """
        try:
            return self._propose_update(user, document)
        except SealpodError as exc:
            self._audit_refusal({"type": "update_refused", "user": user}, exc)
            raise

    def _propose_update(self, user: str, document: bytes) -> UpdateStatus:
        store = self._require_store()
        info = self._current_manifest()
        self._authorize(info.manifest, user, "manifest", "", "update")
        manifest = validate_manifest(parse_manifest_document(document))
        digest = manifest_digest(manifest)
        if digest == info.sha256:
            raise RequestRefusedError(
                "manifest_unchanged", "the proposal is the current manifest", status=409
            )
        threshold = self._threshold(info.manifest)
        pending = {
            "id": secrets.token_hex(16),
            "canonical": canonical_json(manifest).decode("utf-8"),
            "sha256": digest.hex(),
            "proposer": user,
            "approvals": [user],
            "proposed_at": self._now_datetime().isoformat(),
        }
        now = self._now_datetime()

        def body(
            tx: Transaction, applied: list[tuple[ManifestInfo, CoordinatorCA]]
        ) -> UpdateStatus:
            if tx.get(_NS, _PENDING_UPDATE_KEY) is not None:
                raise RequestRefusedError(
                    "update_pending", "another update is pending (cancel it first)", status=409
                )
            AuditLog.append(
                tx,
                {
                    "type": "update_proposed",
                    "user": user,
                    "id": pending["id"],
                    "sha256": digest.hex(),
                },
                now=now,
            )
            return self._approved(tx, info, pending, threshold, manifest, now, applied)

        return self._commit_update(store, body)

    def approve_update(self, user: str, update_id: str) -> UpdateStatus:
        """Approve the pending update as ``user``; applies it when the threshold is met.

        Raises:
            RequestRefusedError: ``no_such_update`` (404), ``permission_denied`` (403),
                ``already_approved`` (409), ``no_manifest``, ``recovery_mode``.
        """
        try:
            return self._approve_update(user, update_id)
        except SealpodError as exc:
            self._audit_refusal({"type": "update_refused", "user": user, "id": update_id}, exc)
            raise

    def _approve_update(self, user: str, update_id: str) -> UpdateStatus:
        store = self._require_store()
        info = self._current_manifest()
        self._authorize(info.manifest, user, "manifest", "", "update")
        threshold = self._threshold(info.manifest)
        now = self._now_datetime()

        def body(
            tx: Transaction, applied: list[tuple[ManifestInfo, CoordinatorCA]]
        ) -> UpdateStatus:
            pending = self._pending(tx, update_id)
            if user in pending["approvals"]:
                raise RequestRefusedError(
                    "already_approved", "you approved this update already", status=409
                )
            pending["approvals"].append(user)
            AuditLog.append(tx, {"type": "update_approved", "user": user, "id": update_id}, now=now)
            manifest = validate_manifest(json.loads(pending["canonical"]))
            return self._approved(tx, info, pending, threshold, manifest, now, applied)

        return self._commit_update(store, body)

    def cancel_update(self, user: str, update_id: str) -> None:
        """Withdraw the pending update (any user with role ``manifest``/``update``).

        Raises:
            RequestRefusedError: ``no_such_update`` (404), ``permission_denied`` (403).
        """
        try:
            store = self._require_store()
            info = self._current_manifest()
            self._authorize(info.manifest, user, "manifest", "", "update")
            now = self._now_datetime()

            def body(tx: Transaction) -> None:
                self._pending(tx, update_id)
                tx.delete(_NS, _PENDING_UPDATE_KEY)
                AuditLog.append(
                    tx, {"type": "update_cancelled", "user": user, "id": update_id}, now=now
                )

            self._transact(store, body)
        except SealpodError as exc:
            self._audit_refusal({"type": "update_refused", "user": user, "id": update_id}, exc)
            raise

    def raise_min_isv_svn(self, user: str, package: str, min_isv_svn: int) -> UpdateStatus:
        """Raise a package's ``min_isv_svn`` (role ``packages``/``update`` on ``package``),
        without the M-of-N approval of a full update: it can only shut out old enclave
        versions, never let new code in. Applied like an update (new manifest digest and
        signature, mesh rotation), audited as ``package_svn_raised``.

        Raises:
            RequestRefusedError: ``unknown_package`` (404), ``permission_denied`` (403),
                ``svn_not_raised`` and ``update_pending`` (409), ``no_manifest``.
        """
        try:
            return self._raise_min_isv_svn(user, package, min_isv_svn)
        except SealpodError as exc:
            self._audit_refusal(
                {"type": "package_update_refused", "user": user, "package": package}, exc
            )
            raise

    def _raise_min_isv_svn(self, user: str, package: str, min_isv_svn: int) -> UpdateStatus:
        store = self._require_store()
        info = self._current_manifest()
        current = info.manifest.packages.get(package)
        if current is None:
            raise RequestRefusedError(
                "unknown_package", "the manifest has no such package", status=404
            )
        self._authorize(info.manifest, user, "packages", package, "update")
        if not 0 <= min_isv_svn <= 0xFFFF or min_isv_svn <= (current.min_isv_svn or 0):
            raise RequestRefusedError(
                "svn_not_raised",
                f"min_isv_svn can only go up (now {current.min_isv_svn or 0})",
                status=409,
            )
        data = info.manifest.model_dump(mode="json")
        data["packages"][package]["min_isv_svn"] = min_isv_svn
        manifest = validate_manifest(data)
        now = self._now_datetime()
        pending = {
            "id": secrets.token_hex(16),
            "sha256": manifest_digest(manifest).hex(),
            "proposer": user,
            "approvals": [user],
        }

        def body(
            tx: Transaction, applied: list[tuple[ManifestInfo, CoordinatorCA]]
        ) -> UpdateStatus:
            if tx.get(_NS, _PENDING_UPDATE_KEY) is not None:
                raise RequestRefusedError(
                    "update_pending",
                    "a manifest update is pending: raise the SVN in it, or cancel it first",
                    status=409,
                )
            AuditLog.append(
                tx,
                {
                    "type": "package_svn_raised",
                    "user": user,
                    "package": package,
                    "min_isv_svn": min_isv_svn,
                },
                now=now,
            )
            return self._approved(tx, info, pending, 1, manifest, now, applied)

        return self._commit_update(store, body)

    @staticmethod
    def _pending(tx: Transaction, update_id: str) -> dict[str, Any]:
        raw = tx.get(_NS, _PENDING_UPDATE_KEY)
        pending: dict[str, Any] | None = None if raw is None else json.loads(raw)
        if pending is None or pending.get("id") != update_id:
            raise RequestRefusedError("no_such_update", "no pending update has this id", status=404)
        return pending

    def _commit_update(
        self,
        store: SealedStateStore,
        body: Callable[[Transaction, list[tuple[ManifestInfo, CoordinatorCA]]], UpdateStatus],
    ) -> UpdateStatus:
        # ``body`` appends the new (manifest, CA) when it applies the update; they replace the
        # served ones only once the transaction committed.
        applied: list[tuple[ManifestInfo, CoordinatorCA]] = []

        def wrapped(tx: Transaction) -> UpdateStatus:
            applied.clear()
            return body(tx, applied)

        status = self._transact(store, wrapped)
        if applied:
            info, ca = applied[-1]
            with self._lock:
                self._manifest, self._ca = info, ca
            _logger.info("manifest updated to %s", info.sha256.hex())
        return status

    def _approved(
        self,
        tx: Transaction,
        current: ManifestInfo,
        pending: dict[str, Any],
        threshold: int,
        manifest: Manifest,
        now: datetime.datetime,
        applied: list[tuple[ManifestInfo, CoordinatorCA]],
    ) -> UpdateStatus:
        status = self._status_of(pending, threshold)
        if len(pending["approvals"]) < threshold:
            tx.put(_NS, _PENDING_UPDATE_KEY, json.dumps(pending, sort_keys=True).encode())
            return status
        info, ca, shares = self._apply_update(tx, current, manifest, pending, now)
        applied.append((info, ca))
        return replace(status, applied=True, recovery_shares=shares)

    def _apply_update(
        self,
        tx: Transaction,
        current: ManifestInfo,
        manifest: Manifest,
        pending: Mapping[str, Any],
        now: datetime.datetime,
    ) -> tuple[ManifestInfo, CoordinatorCA, dict[str, bytes]]:
        if tx.get(_NS, _MANIFEST_SHA_KEY) != current.sha256:
            raise RequestRefusedError(
                "manifest_changed", "the manifest changed meanwhile; retry", status=503
            )
        raw_ca = tx.get(_NS, _CA_KEY)
        if raw_ca is None:  # pragma: no cover - written on first start
            raise VerificationError("pki_state_malformed", "the coordinator CA is missing")
        ca = CoordinatorCA.from_bytes(raw_ca).rotate_mesh(now=now)
        canonical = canonical_json(manifest)
        digest = manifest_digest(manifest)
        signature = self._sign(ca, canonical)
        changed = changed_secrets(current.manifest, manifest)
        forget_secrets(tx, changed, sorted(current.manifest.services))
        tx.put(_NS, _CA_KEY, ca.to_bytes())
        tx.put(_NS, _MANIFEST_KEY, canonical)
        tx.put(_NS, _MANIFEST_SIGNATURE_KEY, signature)
        tx.put(_NS, _MANIFEST_SHA_KEY, digest)
        tx.delete(_NS, _PENDING_UPDATE_KEY)
        generated = SecretResolver(
            tx, manifest, ca, now=now, simulated=self.simulated
        ).generate_shared()
        shares: dict[str, bytes] = {}
        if manifest.recovery is not None and manifest.recovery != current.manifest.recovery:
            shares = self._split_recovery(tx, manifest)
        AuditLog.append(
            tx,
            {
                "type": "manifest_updated",
                "id": pending["id"],
                "sha256": digest.hex(),
                "previous_sha256": current.sha256.hex(),
                "approvals": list(pending["approvals"]),
                "mesh_generation": ca.generation,
                "secrets_reset": sorted(changed),
                "secrets_generated": sorted(generated),
                "recovery_keys": sorted(shares),
            },
            now=now,
        )
        info = ManifestInfo(
            manifest=manifest, canonical=canonical, sha256=digest, signature=signature
        )
        return info, ca, shares

    @staticmethod
    def _sign(ca: CoordinatorCA, canonical: bytes) -> bytes:
        root_key = ca.root.private_key
        if not isinstance(root_key, ec.EllipticCurvePrivateKey):  # pragma: no cover
            raise ConfigError("the coordinator root key is not an ECDSA key")
        return root_key.sign(canonical, ec.ECDSA(hashes.SHA384()))

    @staticmethod
    def _split_recovery(tx: Transaction, manifest: Manifest) -> dict[str, bytes]:
        if manifest.recovery is None:
            return {}
        named = [
            (name, serialization.load_pem_public_key(pem.encode()))
            for name, pem in manifest.recovery.keys.items()
        ]
        made: list[RecoveryShare] = tx.set_recovery_keys(
            [cast(Any, key) for _, key in named], manifest.recovery.threshold
        )
        return {name: share.encrypted_share for (name, _), share in zip(named, made, strict=True)}

    # -- users and user-defined secrets ------------------------------------------------------

    def _current_manifest(self) -> ManifestInfo:
        info, _ = self._deployment()
        if info is None:
            raise RequestRefusedError("no_manifest", "no manifest has been set", status=409)
        return info

    def authenticate(self, header: str | None, *, method: str, target: str, body: bytes) -> str:
        """The manifest user who signed this request (:mod:`sealpod.coordinator.auth`).

        Raises:
            RequestRefusedError: 401 (``auth_missing``, ``signature_invalid``, ...),
                ``no_manifest`` (409), ``recovery_mode`` (503).
        """
        info = self._current_manifest()
        try:
            return self._auth.authenticate(
                header,
                method=method,
                target=target,
                body=body,
                users=info.manifest,
                root_sha256=self.ca.root_certificate.fingerprint(hashes.SHA256()),
                now=self._now(),
            )
        except RequestRefusedError as exc:
            self._audit_refusal(
                {"type": "request_refused", "method": method, "target": target[:200]}, exc
            )
            raise

    @staticmethod
    def _authorize(manifest: Manifest, user: str, resource: str, name: str, action: str) -> None:
        spec = manifest.users.get(user)
        for role_name in spec.roles if spec is not None else ():
            role = manifest.roles.get(role_name)
            if (
                role is not None
                and role.resource == resource
                and action in role.actions
                and (resource == "manifest" or name in role.names)
            ):
                return
        raise RequestRefusedError(
            "permission_denied", f"user {user} may not {action} {resource} {name}", status=403
        )

    def set_secret(self, user: str, name: str, upload: UserSecretUpload) -> None:
        """Set a user-defined secret (role ``secrets``/``write`` on ``name``).

        Raises:
            RequestRefusedError: ``unknown_secret`` (404), ``permission_denied`` (403),
                ``secret_not_user_defined`` (409), ``invalid_secret`` (400), ``no_manifest``.
        """
        try:
            self._set_secret(user, name, upload)
        except SealpodError as exc:
            self._audit_refusal({"type": "secret_set_refused", "user": user, "secret": name}, exc)
            raise

    def _set_secret(self, user: str, name: str, upload: UserSecretUpload) -> None:
        store = self._require_store()
        info = self._current_manifest()
        secret = info.manifest.secrets.get(name)
        if secret is None:
            raise RequestRefusedError(
                "unknown_secret", "the manifest has no such secret", status=404
            )
        self._authorize(info.manifest, user, "secrets", name, "write")
        if not secret.user_defined:
            raise RequestRefusedError(
                "secret_not_user_defined", "the coordinator generates this secret", status=409
            )
        resolved = _user_secret_value(secret.type, secret.effective_size, upload)
        record = encode_secret(secret, resolved)
        now = self._now_datetime()

        def body(tx: Transaction) -> None:
            tx.put(SHARED_NAMESPACE, name, record)
            AuditLog.append(tx, {"type": "secret_set", "user": user, "secret": name}, now=now)

        self._transact(store, body)
        _logger.info("user %s set secret %s", user, name)

    def get_secret(self, user: str, name: str) -> SecretRelease:
        """Read a shared secret (role ``secrets``/``read`` on ``name``); audited.

        Raises:
            RequestRefusedError: ``unknown_secret`` (404), ``permission_denied`` (403),
                ``secret_per_instance`` (409), ``secret_not_set`` (404), ``no_manifest``.
        """
        try:
            return self._get_secret(user, name)
        except SealpodError as exc:
            self._audit_refusal({"type": "secret_read_refused", "user": user, "secret": name}, exc)
            raise

    def _get_secret(self, user: str, name: str) -> SecretRelease:
        store = self._require_store()
        info = self._current_manifest()
        secret = info.manifest.secrets.get(name)
        if secret is None:
            raise RequestRefusedError(
                "unknown_secret", "the manifest has no such secret", status=404
            )
        self._authorize(info.manifest, user, "secrets", name, "read")
        if secret.scope != "shared":
            raise RequestRefusedError(
                "secret_per_instance", "a per-instance secret has no single value", status=409
            )
        now = self._now_datetime()

        def body(tx: Transaction) -> bytes | None:
            raw = tx.get(SHARED_NAMESPACE, name)
            if raw is not None:
                AuditLog.append(tx, {"type": "secret_read", "user": user, "secret": name}, now=now)
            return raw

        raw = self._transact(store, body)
        if raw is None:
            raise RequestRefusedError("secret_not_set", "the secret has no value yet", status=404)
        value, certified = decode_secret(name, raw)
        if certified is not None:
            return SecretRelease(
                name=name,
                type=secret.type,
                certificate_pem=certificates_to_pem(
                    (certified.certificate, *certified.chain)
                ).decode("ascii"),
                private_key_pem=certified.private_key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ).decode("ascii"),
            )
        if not isinstance(value, SecretBytes):  # pragma: no cover - decode_secret's contract
            raise VerificationError("secret_record_malformed", f"stored secret {name!r}")
        return SecretRelease(name=name, type=secret.type, value=value.data)

    # -- audit ------------------------------------------------------------------------------

    def _audit_refusal(
        self, event: dict[str, Any], exc: SealpodError, *, spent_nonce: str | None = None
    ) -> None:
        store = self._store
        code = _refusal_code(exc)
        _logger.warning("refused %s: %s", event.get("type"), exc)
        if store is None:
            return
        entry = {**event, "reason": code, "message": str(exc)[:500]}
        now = self._now_datetime()

        def body(tx: Transaction) -> None:
            if spent_nonce is not None and tx.get(USED_NAMESPACE, spent_nonce) is None:
                tx.put(USED_NAMESPACE, spent_nonce, b"")
            AuditLog.append(tx, entry, now=now)

        try:
            self._transact(store, body)
        except SealpodError as audit_exc:
            _logger.error("could not write the audit entry of a refusal: %s", audit_exc)

    def audit_entries(
        self, *, start: int = 0, limit: int | None = None
    ) -> tuple[list[AuditEntry], AuditHead | None]:
        """Audit entries from ``start`` and the sealed head.

        Raises:
            RequestRefusedError: ``recovery_mode``.
            VerificationError: an entry or the head fails authentication.
        """
        store = self._require_store()
        log = AuditLog(store)
        with store.snapshot():
            return log.entries(start=start, limit=limit), log.head()


def _invalid(message: str) -> RequestRefusedError:
    return RequestRefusedError("invalid_secret", message, status=400)


def _user_secret_value(
    secret_type: str, size: int | None, upload: UserSecretUpload
) -> tuple[SecretBytes | CertificateSecret, CertifiedKey | None]:
    """Check an uploaded value against the secret's type and size.

    Raises:
        RequestRefusedError: ``invalid_secret`` (400).
    """
    key_type = _CERT_KEY_TYPES.get(secret_type)
    if key_type is None:
        if upload.value is None or upload.certificate_pem or upload.private_key_pem:
            raise _invalid(f"a {secret_type} secret takes a value only")
        if len(upload.value) > _MAX_USER_SECRET:
            raise _invalid(f"the value is larger than {_MAX_USER_SECRET} bytes")
        is_key = secret_type == "symmetric-key"  # noqa: S105 (a type name, not a password)
        if is_key and size is not None and len(upload.value) * 8 != size:
            raise _invalid(f"the key must be {size} bits")
        return SecretBytes(upload.value, kind=secret_type), None
    if upload.value is not None or not upload.certificate_pem or not upload.private_key_pem:
        raise _invalid("a certificate secret takes a certificate and a private key")
    try:
        chain = x509.load_pem_x509_certificates(upload.certificate_pem.encode("ascii"))
        key = serialization.load_pem_private_key(upload.private_key_pem.encode("ascii"), None)
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise _invalid("the certificate or private key does not parse (unencrypted PEM)") from exc
    if not isinstance(key, key_type):
        raise _invalid(f"a {secret_type} secret needs a {secret_type.removeprefix('cert-')} key")
    if public_key_der(key.public_key()) != public_key_der(chain[0].public_key()):
        raise _invalid("the private key does not belong to the certificate")
    certified = CertifiedKey(
        certificate=chain[0], private_key=cast(Any, key), chain=tuple(chain[1:])
    )
    return (
        CertificateSecret(cert=Certificate(chain[0]), private_key=PrivateKey(cast(Any, key))),
        certified,
    )


def _check_share_shape(raw: bytes, threshold: int) -> None:
    """Refuse what cannot be a share of this store's recovery split.

    Raises:
        RequestRefusedError: ``invalid_share`` (400).
    """
    if len(raw) != _SHARE_SIZE or not raw.startswith(_SHARE_MAGIC):
        raise RequestRefusedError("invalid_share", "not a decrypted sealpod recovery share")
    at = len(_SHARE_MAGIC) + 16
    if raw[at] != threshold or raw[at + 1] == 0:
        raise RequestRefusedError("invalid_share", "the share is for another threshold")


def _prune_used_nonces(tx: Transaction, now: datetime.datetime) -> None:
    # Keys sort by expiry, so the first ones are the oldest.
    for key in tx.keys(USED_NAMESPACE, limit=_NONCE_PRUNE):
        if expiry_of_used_key(key) >= now.timestamp():
            break
        tx.delete(USED_NAMESPACE, key)


def _hex(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


def encode_files(files: Mapping[str, bytes]) -> dict[str, str]:
    """File contents as base64 text (the JSON form of a rendered service's files)."""
    return {path: base64.b64encode(data).decode("ascii") for path, data in files.items()}
