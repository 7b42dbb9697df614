"""Every coordinator client call except activation, on httpx (see :mod:`sealpod.coordinator.client`).

* :func:`verify_coordinator` fetches ``/api/v1/quote`` with a fresh nonce over TLS *without*
  trusting anything yet, verifies the quote (chain, collateral, identity, simulation policy) and
  that its report data is ``SHA-256(root_cert_der ‖ nonce) ‖ 0³²`` for the root it returned, and
  only then returns that root. The first connection needs no trust: an impostor cannot make a
  quote binding its own root, and every later call (:func:`pinned_client`) verifies the server's
  TLS certificate against the pinned root only.
* The operator calls (manifest, secrets, updates, recovery, audit, status, volume reset) go over
  :func:`pinned_client`. The activated instance's service-signed calls (volume tags) are on the
  start-up path of ``sealpod run`` and live in :mod:`sealpod.coordinator._activate_client`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sealpod.coordinator._activate_client import (
    DEFAULT_TIMEOUT as _DEFAULT_TIMEOUT,
)
from sealpod.coordinator._activate_client import (
    PinnedVolumeTag,
    base_url,
    check_name,
    field_value,
    json_object,
    pinned_ssl_context,
    raise_for_refusal,
    volume_tag,
)
from sealpod.coordinator.binding import coordinator_report_data
from sealpod.errors import ConfigError, NetworkError, VerificationError

if TYPE_CHECKING:
    # Imported where used: each costs start-up time (pydantic, dcap-qvl, yaml, jinja2, the
    # sealed store) that most calls do not need.
    from sealpod.attestation.collateral import Collateral
    from sealpod.attestation.verify import VerifiedEvidence
    from sealpod.coordinator.auth import UserPrivateKey
    from sealpod.store import AuditEntry, AuditHead

__all__ = [
    "ManifestUpdate",
    "SignedManifest",
    "UserSecret",
    "VerifiedCoordinator",
    "approve_update",
    "cancel_update",
    "coordinator_certificate_chain",
    "coordinator_status",
    "fetch_audit",
    "fetch_manifest",
    "get_secret",
    "pinned_client",
    "propose_update",
    "raise_package_svn",
    "reset_volume",
    "response_json",
    "set_secret",
    "submit_recovery_share",
    "verify_coordinator",
]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifiedCoordinator:
    """An attested coordinator: its pinned root and what its quote proved."""

    url: str
    root_certificate: x509.Certificate
    root_pem: bytes
    evidence: VerifiedEvidence
    simulated: bool


def _raise_for_error(response: httpx.Response) -> None:
    raise_for_refusal(response.status_code, response.reason_phrase, response.content)


def _json(response: httpx.Response) -> dict[str, Any]:
    return json_object(response.status_code, response.reason_phrase, response.content)


def response_json(response: httpx.Response) -> dict[str, Any]:
    """The JSON object of a coordinator response, or the refusal it carries as an error.

    Raises:
        VerificationError: the coordinator refused evidence (``kind: evidence``).
        RequestRefusedError: any other refusal.
        NetworkError: the body is not a JSON object.
    """
    return _json(response)


def pinned_client(url: str, root_pem: bytes, *, timeout: float = _DEFAULT_TIMEOUT) -> httpx.Client:
    """An HTTP client for ``url`` that verifies TLS against the pinned root only.

    Raises:
        ConfigError: not an https URL, or a bad root.
    """
    return httpx.Client(
        base_url=base_url(url), verify=pinned_ssl_context(root_pem), timeout=timeout
    )


@contextlib.contextmanager
def _coordinator_session(url: str, root_pem: bytes, timeout: float) -> Iterator[httpx.Client]:
    """A client pinned to ``root_pem``; transport failures become :class:`NetworkError`."""
    try:
        with pinned_client(url, root_pem, timeout=timeout) as client:
            yield client
    except httpx.HTTPError as exc:
        raise NetworkError(f"cannot reach the coordinator at {url}: {exc}") from exc


def verify_coordinator(
    url: str,
    *,
    expect_mrenclave: bytes | None = None,
    allow_simulation: bool = False,
    simulated_root_der: bytes | None = None,
    trust_root_der: bytes | None = None,
    collateral: Collateral | None = None,
    pccs_url: str | None = None,
    clock: Callable[[], float] = time.time,
    timeout: float = _DEFAULT_TIMEOUT,
) -> VerifiedCoordinator:
    """Attest the coordinator at ``url`` and return its root certificate to pin.

    Args:
        url: ``https://host:port``.
        expect_mrenclave: the coordinator's expected MRENCLAVE. May be omitted only together
            with ``allow_simulation`` (then any identity is accepted, with a warning).
        allow_simulation: accept simulated evidence (INSECURE; logs a warning).
        simulated_root_der: the simulated SGX root to accept (e.g. the local ``sealpod sim``
            platform's); needed to verify a simulated coordinator.
        trust_root_der: a root to pin instead of Intel's (tests).
        collateral: collateral to use instead of the one the coordinator sends.
        pccs_url: where to fetch collateral when the coordinator sends none.
        clock: epoch seconds now.

    Raises:
        ConfigError: bad URL or arguments.
        NetworkError: the coordinator cannot be reached.
        VerificationError: the quote, its identity or its binding to the root fails.
        QuoteFormatError: the quote does not parse.
    """
    from sealpod.attestation.collateral import Collateral
    from sealpod.attestation.pccs import PCCSClient
    from sealpod.attestation.policy import AppraisalPolicy
    from sealpod.attestation.verify import verify_quote

    base = base_url(url)
    if expect_mrenclave is None:
        if not allow_simulation:
            raise ConfigError("give the coordinator's expected MRENCLAVE (expect_mrenclave)")
        _logger.warning("INSECURE: accepting any coordinator identity (no expected MRENCLAVE)")
    elif len(expect_mrenclave) != 32:
        raise ConfigError("expect_mrenclave must be 32 bytes")
    nonce = secrets.token_bytes(32)
    try:
        # No trust yet: the quote below is what establishes it (see the module docstring).
        with httpx.Client(base_url=base, verify=False, timeout=timeout) as client:  # noqa: S501
            body = _json(client.get("/api/v1/quote", params={"nonce": nonce.hex()}))
    except httpx.HTTPError as exc:
        raise NetworkError(f"cannot reach the coordinator at {base}: {exc}") from exc
    root_pem = str(field_value(body, "root_certificate", str)).encode("ascii", "replace")
    try:
        root = x509.load_pem_x509_certificate(root_pem)
    except ValueError as exc:
        raise VerificationError(
            "malformed_response", "the root certificate does not parse"
        ) from exc
    root_der = root.public_bytes(serialization.Encoding.DER)
    try:
        quote = bytes.fromhex(field_value(body, "quote", str))
    except ValueError as exc:
        raise VerificationError("malformed_response", "the quote is not hex") from exc
    if collateral is None:
        raw_collateral = body.get("collateral")
        if isinstance(raw_collateral, dict):
            collateral = Collateral.from_mapping(raw_collateral)
        elif pccs_url is not None:
            with PCCSClient(pccs_url, clock=clock, timeout=timeout) as pccs:
                collateral = pccs.collateral_for_quote(quote)
        else:
            raise VerificationError(
                "collateral_missing", "the coordinator sent no collateral; give a PCCS URL"
            )
    policy = AppraisalPolicy(
        tee="sgx",
        mrenclave=None if expect_mrenclave is None else (expect_mrenclave,),
        allow_simulation=allow_simulation,
        expected_report_data=coordinator_report_data(root_der, nonce),
    )
    evidence = verify_quote(
        quote,
        collateral,
        at=int(clock()),
        policy=policy,
        trust_root_der=trust_root_der,
        simulated_root_der=simulated_root_der,
    )
    _logger.info(
        "coordinator at %s attested (MRENCLAVE %s, simulated=%s)",
        base,
        evidence.mr_enclave.hex() if evidence.mr_enclave else "?",
        evidence.simulated,
    )
    return VerifiedCoordinator(
        url=base,
        root_certificate=root,
        root_pem=root.public_bytes(serialization.Encoding.PEM),
        evidence=evidence,
        simulated=evidence.simulated,
    )


@dataclass(frozen=True)
class SignedManifest:
    """The coordinator's manifest, checked against the pinned root's signature."""

    manifest: dict[str, Any]
    canonical: bytes
    sha256: bytes


def fetch_manifest(
    url: str, root_pem: bytes, *, timeout: float = _DEFAULT_TIMEOUT
) -> SignedManifest:
    """Get the manifest over pinned TLS and check the root's signature and the digest.

    The canonical form is recomputed here (sorted keys, no whitespace, UTF-8), so the signature
    covers exactly the manifest returned.

    Raises:
        ConfigError: bad URL or root.
        NetworkError: the coordinator cannot be reached.
        VerificationError: ``manifest_signature_invalid`` or ``manifest_digest_mismatch``.
        RequestRefusedError: ``no_manifest`` and other refusals.
    """
    with _coordinator_session(url, root_pem, timeout) as client:
        body = _json(client.get("/api/v1/manifest"))
    manifest = field_value(body, "manifest", dict)
    canonical = json.dumps(
        manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
    digest = hashlib.sha256(canonical).digest()
    if field_value(body, "sha256", str) != digest.hex():
        raise VerificationError(
            "manifest_digest_mismatch", "the manifest does not have the stated SHA-256"
        )
    root = x509.load_pem_x509_certificate(root_pem)
    public_key = root.public_key()
    try:
        signature = base64.b64decode(field_value(body, "signature", str), validate=True)
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise InvalidSignature
        public_key.verify(signature, canonical, ec.ECDSA(hashes.SHA384()))
    except (InvalidSignature, ValueError) as exc:
        raise VerificationError(
            "manifest_signature_invalid", "the manifest is not signed by the pinned root"
        ) from exc
    return SignedManifest(manifest=manifest, canonical=canonical, sha256=digest)


@dataclass(frozen=True, repr=False)
class UserSecret:
    """A secret read by a user; its value never appears in ``repr``."""

    name: str
    type: str
    value: bytes | None
    certificate_pem: str | None
    private_key_pem: str | None

    def __repr__(self) -> str:
        return f"UserSecret(name={self.name!r}, type={self.type!r}, <hidden>)"


def _signed_request(
    url: str,
    root_pem: bytes,
    *,
    method: str,
    path: str,
    body: bytes,
    user: str,
    key: UserPrivateKey,
    clock: Callable[[], float],
    timeout: float,
) -> httpx.Response:
    from sealpod.coordinator.auth import authorization_header

    root = x509.load_pem_x509_certificate(root_pem)
    header = authorization_header(
        key,
        user=user,
        method=method,
        target=path,
        body=body,
        root_sha256=root.fingerprint(hashes.SHA256()),
        time=int(clock()),
    )
    headers = {"authorization": header}
    if body:
        headers["content-type"] = "application/json"
    with _coordinator_session(url, root_pem, timeout) as client:
        return client.request(method, path, content=body, headers=headers)


def _secret_path(name: str) -> str:
    check_name("secret", name)
    return f"/api/v1/secrets/{name}"


def set_secret(
    url: str,
    root_pem: bytes,
    name: str,
    *,
    user: str,
    key: UserPrivateKey,
    value: bytes | None = None,
    certificate_pem: str | None = None,
    private_key_pem: str | None = None,
    clock: Callable[[], float] = time.time,
    timeout: float = _DEFAULT_TIMEOUT,
) -> None:
    """Set user-defined secret ``name`` as ``user`` (request signed with ``key``).

    Raises:
        ConfigError: bad URL, root or secret name.
        NetworkError: the coordinator cannot be reached.
        RequestRefusedError: 401/403/404/409/400 refusals (``permission_denied``, ...).
    """
    document: dict[str, str] = {}
    if value is not None:
        document["value"] = base64.b64encode(value).decode("ascii")
    if certificate_pem is not None:
        document["certificate"] = certificate_pem
    if private_key_pem is not None:
        document["private_key"] = private_key_pem
    response = _signed_request(
        url,
        root_pem,
        method="PUT",
        path=_secret_path(name),
        body=json.dumps(document).encode(),
        user=user,
        key=key,
        clock=clock,
        timeout=timeout,
    )
    _raise_for_error(response)


def get_secret(
    url: str,
    root_pem: bytes,
    name: str,
    *,
    user: str,
    key: UserPrivateKey,
    clock: Callable[[], float] = time.time,
    timeout: float = _DEFAULT_TIMEOUT,
) -> UserSecret:
    """Read shared secret ``name`` as ``user``.

    Raises:
        ConfigError: bad URL, root or secret name.
        NetworkError: the coordinator cannot be reached.
        RequestRefusedError: refusals (``permission_denied``, ``secret_not_set``, ...).
    """
    body = _json(
        _signed_request(
            url,
            root_pem,
            method="GET",
            path=_secret_path(name),
            body=b"",
            user=user,
            key=key,
            clock=clock,
            timeout=timeout,
        )
    )
    raw_value = body.get("value")
    try:
        value = None if raw_value is None else base64.b64decode(str(raw_value), validate=True)
    except ValueError as exc:
        raise VerificationError("malformed_response", "the secret value is not base64") from exc
    certificate = body.get("certificate")
    private_key = body.get("private_key")
    return UserSecret(
        name=name,
        type=str(body.get("type")),
        value=value,
        certificate_pem=None if certificate is None else str(certificate),
        private_key_pem=None if private_key is None else str(private_key),
    )


@dataclass(frozen=True)
class ManifestUpdate:
    """A manifest update proposal as the coordinator reports it."""

    id: str
    manifest_sha256: bytes
    proposer: str
    approvals: tuple[str, ...]
    threshold: int
    applied: bool
    recovery_shares: dict[str, bytes] = field(default_factory=dict, repr=False)


def _update(body: Mapping[str, Any]) -> ManifestUpdate:
    try:
        return ManifestUpdate(
            id=str(body["id"]),
            manifest_sha256=bytes.fromhex(str(body["manifest_sha256"])),
            proposer=str(body["proposer"]),
            approvals=tuple(str(user) for user in body["approvals"]),
            threshold=int(body["threshold"]),
            applied=bool(body["applied"]),
            recovery_shares={
                str(name): base64.b64decode(str(share), validate=True)
                for name, share in dict(body.get("recovery_shares") or {}).items()
            },
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise VerificationError("malformed_response", "unexpected update document") from exc


_UPDATE_ID_RE = re.compile(r"^[0-9a-f]{32}$")


def propose_update(
    url: str,
    root_pem: bytes,
    document: bytes,
    *,
    user: str,
    key: UserPrivateKey,
    clock: Callable[[], float] = time.time,
    timeout: float = _DEFAULT_TIMEOUT,
) -> ManifestUpdate:
    """Propose ``document`` (a manifest, JSON or YAML) as the next manifest.

    Raises:
        NetworkError: the coordinator cannot be reached.
        RequestRefusedError: ``permission_denied``, ``update_pending``, ``manifest_invalid``...
    """
    return _update(
        _json(
            _signed_request(
                url,
                root_pem,
                method="POST",
                path="/api/v1/manifest/updates",
                body=document,
                user=user,
                key=key,
                clock=clock,
                timeout=timeout,
            )
        )
    )


def _update_action(
    action: str,
    url: str,
    root_pem: bytes,
    update_id: str,
    *,
    user: str,
    key: UserPrivateKey,
    clock: Callable[[], float],
    timeout: float,
) -> httpx.Response:
    if not _UPDATE_ID_RE.fullmatch(update_id):
        raise ConfigError(f"invalid update id {update_id!r}")
    return _signed_request(
        url,
        root_pem,
        method="POST",
        path=f"/api/v1/manifest/updates/{update_id}/{action}",
        body=b"",
        user=user,
        key=key,
        clock=clock,
        timeout=timeout,
    )


def approve_update(
    url: str,
    root_pem: bytes,
    update_id: str,
    *,
    user: str,
    key: UserPrivateKey,
    clock: Callable[[], float] = time.time,
    timeout: float = _DEFAULT_TIMEOUT,
) -> ManifestUpdate:
    """Approve the pending update ``update_id`` as ``user``.

    Raises:
        ConfigError: a malformed update id.
        NetworkError: the coordinator cannot be reached.
        RequestRefusedError: ``no_such_update``, ``already_approved``, ``permission_denied``...
    """
    response = _update_action(
        "approve", url, root_pem, update_id, user=user, key=key, clock=clock, timeout=timeout
    )
    return _update(_json(response))


def cancel_update(
    url: str,
    root_pem: bytes,
    update_id: str,
    *,
    user: str,
    key: UserPrivateKey,
    clock: Callable[[], float] = time.time,
    timeout: float = _DEFAULT_TIMEOUT,
) -> None:
    """Withdraw the pending update ``update_id``.

    Raises:
        ConfigError: a malformed update id.
        NetworkError: the coordinator cannot be reached.
        RequestRefusedError: ``no_such_update``, ``permission_denied``...
    """
    response = _update_action(
        "cancel", url, root_pem, update_id, user=user, key=key, clock=clock, timeout=timeout
    )
    _raise_for_error(response)


def submit_recovery_share(
    url: str, pinned_pem: bytes, share: bytes, *, timeout: float = _DEFAULT_TIMEOUT
) -> dict[str, Any]:
    """Send one *decrypted* recovery share to a coordinator in recovery.

    ``pinned_pem`` must come from :func:`verify_coordinator` run against the coordinator in
    recovery (its quote then binds the ephemeral TLS certificate): never send a share to a
    coordinator you have not attested. Returns ``{"threshold", "received", "recovered"}``.

    Raises:
        NetworkError: the coordinator cannot be reached.
        VerificationError: the shares do not rebuild the state's key.
        RequestRefusedError: ``not_in_recovery``, ``duplicate_share``...
    """
    with _coordinator_session(url, pinned_pem, timeout) as client:
        return _json(
            client.post("/api/v1/recover", json={"share": base64.b64encode(share).decode("ascii")})
        )


def raise_package_svn(
    url: str,
    root_pem: bytes,
    package: str,
    min_isv_svn: int,
    *,
    user: str,
    key: UserPrivateKey,
    clock: Callable[[], float] = time.time,
    timeout: float = _DEFAULT_TIMEOUT,
) -> ManifestUpdate:
    """Raise ``package``'s ``min_isv_svn`` as ``user`` (role ``packages``/``update``).

    Raises:
        ConfigError: a malformed package name.
        NetworkError: the coordinator cannot be reached.
        RequestRefusedError: ``svn_not_raised``, ``permission_denied``, ``update_pending``...
    """
    check_name("package", package)
    return _update(
        _json(
            _signed_request(
                url,
                root_pem,
                method="POST",
                path=f"/api/v1/packages/{package}/min-isv-svn",
                body=json.dumps({"min_isv_svn": min_isv_svn}).encode(),
                user=user,
                key=key,
                clock=clock,
                timeout=timeout,
            )
        )
    )


def reset_volume(
    url: str,
    root_pem: bytes,
    volume: str,
    *,
    user: str,
    key: UserPrivateKey,
    clock: Callable[[], float] = time.time,
    timeout: float = _DEFAULT_TIMEOUT,
) -> PinnedVolumeTag:
    """Clear ``volume``'s pin as ``user`` (role ``volumes``/``reset``).

    Raises:
        ConfigError: a malformed volume name.
        NetworkError: the coordinator cannot be reached.
        RequestRefusedError: ``permission_denied``, ``unknown_volume``...
    """
    check_name("volume", volume)
    response = _signed_request(
        url, root_pem, method="POST", path=f"/api/v1/volumes/{volume}/reset", body=b"",
        user=user, key=key, clock=clock, timeout=timeout,
    )  # fmt: skip
    return volume_tag(_json(response))


_AUDIT_PAGE = 1000


def fetch_audit(
    url: str, root_pem: bytes, *, timeout: float = _DEFAULT_TIMEOUT
) -> tuple[list[AuditEntry], AuditHead | None]:
    """Download the whole audit log over pinned TLS and check its hash chain against the head.

    The head is read first and entries are fetched up to it, so entries appended meanwhile do
    not count as an extension; a log shorter than its head, an edited or reordered entry, a
    broken chain are refused.

    Raises:
        NetworkError: the coordinator cannot be reached.
        VerificationError: the chain does not verify (``audit_log_truncated``,
            ``audit_chain_broken``, ``audit_entry_hash_mismatch``, ...) or the answer is malformed.
        RequestRefusedError: ``recovery_mode`` and other refusals.
    """
    from sealpod.store import AuditEntry, AuditHead, verify_audit_entries

    entries: list[AuditEntry] = []
    head: AuditHead | None = None
    with _coordinator_session(url, root_pem, timeout) as client:
        first = _json(client.get("/api/v1/audit", params={"start": 0, "limit": 1}))
        raw_head = first.get("head")
        if raw_head is not None:
            try:
                head = AuditHead(count=int(raw_head["count"]), hash=str(raw_head["hash"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise VerificationError("malformed_response", "bad audit head") from exc
        total = head.count if head is not None else 0
        while len(entries) < total:
            page = _json(
                client.get(
                    "/api/v1/audit",
                    params={
                        "start": len(entries),
                        "limit": min(_AUDIT_PAGE, total - len(entries)),
                    },
                )
            )
            batch = page.get("entries")
            if not isinstance(batch, list) or not batch:
                break
            entries.extend(AuditEntry.from_dict(entry) for entry in batch)
    verify_audit_entries(entries[: head.count] if head else entries, head)
    return entries[: head.count] if head else entries, head


def coordinator_status(
    url: str, root_pem: bytes, *, timeout: float = _DEFAULT_TIMEOUT
) -> dict[str, Any]:
    """``GET /api/v1/status`` over pinned TLS.

    Raises:
        NetworkError: the coordinator cannot be reached (or fails TLS against the pin).
    """
    with _coordinator_session(url, root_pem, timeout) as client:
        return _json(client.get("/api/v1/status"))


def coordinator_certificate_chain(
    url: str, root_pem: bytes, *, timeout: float = _DEFAULT_TIMEOUT
) -> str:
    """The root and current mesh intermediates (PEM), over pinned TLS.

    Raises:
        NetworkError: the coordinator cannot be reached (or fails TLS against the pin).
        VerificationError: ``malformed_response``.
    """
    with _coordinator_session(url, root_pem, timeout) as client:
        body = _json(client.get("/api/v1/quote", params={"nonce": secrets.token_hex(32)}))
    return str(field_value(body, "certificate_chain", str))
