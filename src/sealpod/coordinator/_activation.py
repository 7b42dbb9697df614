"""Service activation: nonces, evidence checks, certificate, secrets, rendering."""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from sealpod.attestation.collateral import Collateral
from sealpod.attestation.policy import AppraisalPolicy
from sealpod.attestation.verify import VerifiedEvidence, verify_quote
from sealpod.coordinator._base import (
    _INSTANCE_RE,
    _MANIFEST_SHA_KEY,
    _NS,
    VOLUME_NAMESPACE,
    ActivationOutcome,
    ActivationRequestData,
    CoordinatorBase,
    ManifestInfo,
    VolumeGrant,
    _instance_namespace,
    _refusal_code,
    package_policy,
)
from sealpod.coordinator._secrets import SecretResolver
from sealpod.coordinator.binding import activation_report_data
from sealpod.coordinator.errors import RequestRefusedError
from sealpod.coordinator.nonces import (
    USED_NAMESPACE,
    IssuedNonce,
    expiry_of_used_key,
    used_key,
)
from sealpod.encfs import KEY_SIZE as VOLUME_KEY_SIZE
from sealpod.errors import NetworkError, QuoteFormatError, SealpodError, VerificationError
from sealpod.manifest import (
    Certificate,
    CertificateChain,
    Manifest,
    ManifestValidationError,
    PrivateKey,
    RenderContext,
    render_service,
    secrets_referenced,
)
from sealpod.pki import CoordinatorCA, public_key_der
from sealpod.store import (
    AuditLog,
    SealedStateStore,
    Transaction,
)

_logger = logging.getLogger(__name__)

_COLLATERAL_CACHE_SIZE = 64
_POLICY_CACHE_SIZE = 256
#: Expired used-nonce records removed per prune, and about how many activations per prune:
#: records are removed twice as fast as they are added, so the namespace stays small.
_NONCE_PRUNE = 32
_NONCE_PRUNE_EVERY = 16


class _KeyPlaceholder:
    """Stands in for the service's private key while rendering (the coordinator never has it).

    The ``pem`` filter calls ``private_bytes``; we return a random token the client replaces.
    """

    def __init__(self, token: str) -> None:
        self._token = token.encode("ascii")

    def private_bytes(self, *_args: object) -> bytes:
        return self._token


class ActivationMixin(CoordinatorBase):
    """Service activation: nonces, evidence checks, certificate, secrets, rendering."""

    # -- activation -------------------------------------------------------------------------

    def new_nonce(self) -> IssuedNonce:
        """A single-use activation nonce.

        Raises:
            RequestRefusedError: ``no_manifest`` (409), ``recovery_mode``.
        """
        with self._lock:
            known = self._manifest is not None
        if not known:
            # A manifest, once set, stays set: only until then is the store asked (another
            # worker or replica may have set it).
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

    def _evidence_collateral(
        self, manifest: Manifest, request: ActivationRequestData, quote: bytes
    ) -> Collateral:
        """The collateral to verify ``quote`` with: from the manifest's PCCS when its policy
        says ``collateral_source: pccs``, else the service's, else the coordinator's PCCS."""
        pccs_url = manifest.policy.pccs_url if manifest.policy.collateral_source == "pccs" else None
        if pccs_url is None and request.collateral is not None:
            return self._collateral(request.collateral)
        pccs_url = pccs_url or self._settings.pccs_url
        if pccs_url is None:
            raise RequestRefusedError("collateral_required", "send the quote's collateral")
        try:
            return self.pccs(pccs_url).collateral_for_quote(quote)
        except NetworkError as exc:
            raise RequestRefusedError(
                "collateral_unavailable", f"the PCCS cannot be reached: {exc}", status=503
            ) from exc

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

    def _used_key_if_valid(self, nonce_hex: str, now: float) -> str | None:
        """The used-record key of a nonce we issued and that has not expired, else ``None``
        (the checks in :meth:`_activate` raise the reason in their turn)."""
        if self._nonces is None:
            return None
        try:
            nonce = bytes.fromhex(nonce_hex)
            return used_key(nonce, self._nonces.check(nonce, now))
        except (ValueError, VerificationError):
            return None

    def _activate(self, request: ActivationRequestData, spent: list[str]) -> ActivationOutcome:
        store = self._require_store()
        now = self._now()
        now_dt = datetime.datetime.fromtimestamp(now, datetime.UTC)
        # The manifest digest and the nonce's used-record are read in one snapshot (one
        # database round trip instead of two); the checks below still run, and refuse, in
        # their order. The used-record read here is an early refusal only: the write
        # transaction checks it again atomically.
        info, ca, used_record = self._deployment_and(
            USED_NAMESPACE, self._used_key_if_valid(request.nonce_hex, now)
        )
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
        if used_record is not None and used_record[0] == used:
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
        collateral = self._evidence_collateral(manifest, request, quote)
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
            volumes = {
                name: VolumeGrant(
                    mount=mount,
                    key=_volume_key(tx, name),
                    rollback_protected=(
                        manifest.volumes[name].rollback_protected
                        if name in manifest.volumes
                        else True
                    ),
                )
                for name, mount in spec.volumes.items()
            }
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
                    "volumes_released": sorted(volumes),
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
                volumes=volumes,
            )

        outcome = self._transact(
            store,
            body,
            prefetch=(
                (_NS, _MANIFEST_SHA_KEY),
                (USED_NAMESPACE, used_nonce),
                (_instance_namespace(service), instance),
                AuditLog.HEAD_RECORD,
            ),
        )
        _logger.info("activated %s/%s (simulated=%s)", service, instance, evidence.simulated)
        return outcome


def _volume_key(tx: Transaction, name: str) -> bytes:
    """The volume's key, made on first use (Gramine encrypted files: a 128-bit key)."""
    key = tx.get(VOLUME_NAMESPACE, name)
    if key is None:
        key = secrets.token_bytes(VOLUME_KEY_SIZE)
        tx.put(VOLUME_NAMESPACE, name, key)
    return key


def _prune_used_nonces(tx: Transaction, now: datetime.datetime) -> None:
    # Keys sort by expiry, so the first ones are the oldest.
    for key in tx.keys(USED_NAMESPACE, limit=_NONCE_PRUNE):
        if expiry_of_used_key(key) >= now.timestamp():
            break
        tx.delete(USED_NAMESPACE, key)


def _hex(value: bytes | None) -> str | None:
    return None if value is None else value.hex()
