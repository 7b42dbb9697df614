"""The coordinator's state, storage, PKI, manifest and audit (the base the feature mixins of
:class:`sealpod.coordinator.service.Coordinator` build on); see that module for the invariants."""

from __future__ import annotations

import base64
import datetime
import enum
import ipaddress
import json
import logging
import re
import secrets
import ssl
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, TypeVar, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import ValidationError

from sealpod import __version__
from sealpod.attestation.collateral import Collateral
from sealpod.attestation.pccs import PCCSClient
from sealpod.attestation.policy import AppraisalPolicy
from sealpod.attestation.verify import VerifiedEvidence
from sealpod.coordinator._secrets import SecretResolver
from sealpod.coordinator.auth import RequestAuthenticator
from sealpod.coordinator.binding import (
    MAX_NONCE_BYTES,
    MIN_NONCE_BYTES,
    coordinator_report_data,
)
from sealpod.coordinator.errors import RequestRefusedError
from sealpod.coordinator.identity import coordinator_identity
from sealpod.coordinator.metrics import CoordinatorMetrics
from sealpod.coordinator.nonces import (
    USED_NAMESPACE,
    NonceIssuer,
)
from sealpod.coordinator.settings import CoordinatorSettings
from sealpod.errors import (
    ConfigError,
    NetworkError,
    QuoteFormatError,
    SealpodError,
    VerificationError,
)
from sealpod.manifest import (
    Manifest,
    ManifestValidationError,
    Package,
    Policy,
    RenderedService,
    canonical_json,
    manifest_digest,
    parse_manifest_document,
    validate_manifest,
)
from sealpod.pki import CertifiedKey, CoordinatorCA
from sealpod.store import (
    AuditEntry,
    AuditHead,
    AuditLog,
    RecoveryShare,
    SealedStateStore,
    StoreSealedError,
    Transaction,
    open_store,
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
    "CoordinatorBase",
    "CoordinatorEvidence",
    "CoordinatorState",
    "ManifestAccepted",
    "ManifestInfo",
    "SecretRelease",
    "UpdateStatus",
    "UserSecretUpload",
    "VolumeGrant",
    "encode_files",
    "package_policy",
]

_logger = logging.getLogger(__name__)

#: Curve size of the mesh intermediate CA (the root is always P-384).
MESH_KEY_SIZE = 256
_T = TypeVar("_T")

_NS = "coordinator"
_CA_KEY = "ca"
_MANIFEST_KEY = "manifest"
_MANIFEST_SIGNATURE_KEY = "manifest-signature"
_MANIFEST_SHA_KEY = "manifest-sha256"
_PENDING_UPDATE_KEY = "pending-update"
_NONCE_KEY = "nonce-key"
#: Volume keys: ``(VOLUME_NAMESPACE, volume name) -> key``; kept across manifest updates.
VOLUME_NAMESPACE = "volume-key"
_SIGNATURE_ALGORITHM = "ecdsa-sha384"
# A PCCS URL may name the PCS API path itself (as docs/manifest.md shows); PCCSClient adds it.
_PCS_PATH_RE = re.compile(r"/(sgx|tdx)/certification/v4/?$")
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
class VolumeGrant:
    """An encrypted volume a service mounts: where, its key, whether its state is pinned."""

    mount: str
    key: bytes
    rollback_protected: bool

    def __repr__(self) -> str:
        return (
            f"VolumeGrant(mount={self.mount!r}, key=<hidden>, "
            f"rollback_protected={self.rollback_protected})"
        )


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
    volumes: Mapping[str, VolumeGrant] = field(default_factory=dict)

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


class CoordinatorBase:
    """The shared state and plumbing of :class:`~sealpod.coordinator.service.Coordinator`."""

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
        self._pccs_clients: dict[str, PCCSClient] = {}
        self._policy_cache: dict[tuple[bytes, str], AppraisalPolicy] = {}
        self._recovery_credentials: CertifiedKey | None = None
        self._unsealed_callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()
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
    def open(cls, settings: CoordinatorSettings, *, backend: TEEBackend | None = None) -> Self:
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
        try:
            return cls(settings, backend, store, sealing_key=sealing_key)
        except BaseException:
            store.close()
            raise

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
            # The root is P-384 for the life of the deployment; the mesh intermediate that signs every
            # activation is P-256 (half the signing cost, the same strength as the P-256 leaves).
            ca = CoordinatorCA.create(
                now=now, name=name, simulated=simulated, mesh_key_size=MESH_KEY_SIZE
            )
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

    def _deployment_and(
        self, namespace: str, key: str | None
    ) -> tuple[ManifestInfo | None, CoordinatorCA, tuple[str, bytes] | None]:
        """:meth:`_deployment`, plus the record ``namespace/key`` (when a key is given) read in
        the same snapshot: ``(key, value)`` if it exists, else ``None``.

        Raises:
            RequestRefusedError: ``recovery_mode``.
        """
        store = self._require_store()
        with self._lock:
            info, ca = self._manifest, self._ca
        with store.snapshot() as view:
            stored = view.get(_NS, _MANIFEST_SHA_KEY)
            value = view.get(namespace, key) if key is not None else None
        record = (key, value) if key is not None and value is not None else None
        if ca is None or (stored is not None and (info is None or stored != info.sha256)):
            _logger.info("the manifest changed in the shared state; reloading")
            info, ca = self._reload(store)
        return info, ca, record

    def close(self) -> None:
        """Close the store and the PCCS clients."""
        if self._store is not None:
            self._store.close()
        with self._lock:
            clients, self._pccs_clients = list(self._pccs_clients.values()), {}
        for client in clients:
            client.close()

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

    def _transact(
        self,
        store: SealedStateStore,
        body: Callable[[Transaction], _T],
        *,
        prefetch: Sequence[tuple[str, str]] = (),
    ) -> _T:
        # The store queues concurrent writers itself and commits those that wait together as
        # one group (one fsync), each body still atomic on its own; other processes (replicas,
        # workers) serialise through the database.
        return store.transact(body, prefetch=prefetch)

    def pccs(self, url: str) -> PCCSClient:
        """The (cached) PCCS client for ``url`` (a base URL, or one ending in
        ``/sgx/certification/v4``), verifying TLS with ``settings.pccs_ca_file`` if set.

        Raises:
            ConfigError: not an http(s) URL.
        """
        base = _PCS_PATH_RE.sub("", url.strip())
        with self._lock:
            client = self._pccs_clients.get(base)
        if client is None:
            ca_file = self._settings.pccs_ca_file
            client = PCCSClient(
                base,
                self._settings.pccs_cache_dir,
                clock=self._settings.clock,
                verify=ssl.create_default_context(cafile=str(ca_file)) if ca_file else True,
            )
            with self._lock:
                client = self._pccs_clients.setdefault(base, client)
        return client

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
        elif self._settings.pccs_url is not None:
            try:
                collateral = (
                    self.pccs(self._settings.pccs_url).collateral_for_quote(quote).to_mapping()
                )
            except NetworkError as exc:
                # The quote is still useful: the client may fetch collateral itself.
                _logger.warning("no collateral for the coordinator's quote: %s", exc)
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

    def authenticate_service(
        self, header: str | None, *, method: str, target: str, body: bytes
    ) -> tuple[str, str]:
        """The ``(service, instance)`` whose activation key signed this request.

        Raises:
            RequestRefusedError: 401 (see :meth:`RequestAuthenticator.authenticate_service`),
                ``no_manifest`` (409), ``recovery_mode`` (503).
        """
        info, ca = self._deployment()
        if info is None:
            raise RequestRefusedError("no_manifest", "no manifest has been set", status=409)
        try:
            return self._auth.authenticate_service(
                header,
                method=method,
                target=target,
                body=body,
                ca=ca,
                root_sha256=ca.root_certificate.fingerprint(hashes.SHA256()),
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


def encode_files(files: Mapping[str, bytes]) -> dict[str, str]:
    """File contents as base64 text (the JSON form of a rendered service's files)."""
    return {path: base64.b64encode(data).decode("ascii") for path, data in files.items()}
