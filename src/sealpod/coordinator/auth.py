"""User authentication: requests signed with the user's key (no passwords, no sessions).

A user is a key named in the manifest (``users.NAME.certificate`` or ``.public_key``). A request
acting as a user carries::

    Authorization: Sealpod-Signature user="alice", time="1767225600", nonce="<hex>", signature="<base64>"

where ``signature`` is over the UTF-8 *signing string*::

    sealpod-request-v1 \\n METHOD \\n PATH[?QUERY] \\n time \\n nonce \\n hex(SHA-256(body)) \\n
    hex(SHA-256(coordinator root certificate DER))

(lines joined by ``\\n``, no trailing newline). Algorithms by key type: ECDSA with SHA-256 (DER
signature), RSA-PSS with SHA-256, MGF1-SHA-256 and a 32-byte salt, or Ed25519.

Why this shape: the method, path, query and body hash make a signature good for one request
only; the root fingerprint binds it to one deployment (a request captured at a test coordinator
cannot be replayed at production); ``time`` must be within :data:`DEFAULT_WINDOW` seconds of the
coordinator's clock and ``nonce`` (16-64 bytes, hex) is remembered for that window, so a captured
request cannot be replayed at all. Requests travel over TLS pinned to the root anyway; the
signature adds *who*, not secrecy.

Failures are :class:`~sealpod.coordinator.errors.RequestRefusedError` with status 401 and codes
``auth_missing``, ``auth_malformed``, ``unknown_user``, ``request_expired``,
``request_replayed``, ``signature_invalid``; messages never echo the signature.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import re
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from sealpod.coordinator.errors import RequestRefusedError
from sealpod.errors import VerificationError
from sealpod.pki.certificates import verify_chain

if TYPE_CHECKING:
    # Only the coordinator side needs these, and it has them loaded: signing a request (the
    # client side, e.g. `sealpod run` asking for a volume's tag) must not pay for pydantic and
    # jinja2 (sealpod.manifest) at start-up.
    from sealpod.manifest import Manifest, User
    from sealpod.pki import CoordinatorCA

__all__ = [
    "AUTH_SCHEME",
    "DEFAULT_WINDOW",
    "SERVICE_AUTH_SCHEME",
    "RequestAuthenticator",
    "UserPrivateKey",
    "UserPublicKey",
    "authorization_header",
    "service_authorization_header",
    "signing_string",
    "user_public_key",
]

AUTH_SCHEME = "Sealpod-Signature"
#: The scheme of requests signed by a service instance with its activation key.
SERVICE_AUTH_SCHEME = "Sealpod-Service-Signature"
_SERVICE_URI_PREFIX = "sealpod://service/"
#: Seconds a signed request stays acceptable (either side of the coordinator's clock).
DEFAULT_WINDOW = 300
_LABEL = "sealpod-request-v1"
_PARAM_RE = re.compile(r'\s*([a-z]+)="([^"]*)"\s*(?:,|$)')
_NONCE_RE = re.compile(r"^([0-9a-f]{2}){16,64}$")
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)

UserPublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
UserPrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def signing_string(
    *, method: str, target: str, time: int, nonce: str, body: bytes, root_sha256: bytes
) -> bytes:
    """The bytes a user signs for one request (see the module docstring)."""
    lines = [
        _LABEL,
        method.upper(),
        target,
        str(time),
        nonce,
        hashlib.sha256(body).hexdigest(),
        root_sha256.hex(),
    ]
    return "\n".join(lines).encode("utf-8")


def _sign(key: UserPrivateKey, data: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, _PSS, hashes.SHA256())
    return key.sign(data)


def authorization_header(
    key: UserPrivateKey,
    *,
    user: str,
    method: str,
    target: str,
    body: bytes,
    root_sha256: bytes,
    time: int,
    nonce: str | None = None,
) -> str:
    """The ``Authorization`` header value for one request signed with ``key``."""
    chosen = secrets.token_hex(16) if nonce is None else nonce
    data = signing_string(
        method=method, target=target, time=time, nonce=chosen, body=body, root_sha256=root_sha256
    )
    signature = base64.b64encode(_sign(key, data)).decode("ascii")
    return f'{AUTH_SCHEME} user="{user}", time="{time}", nonce="{chosen}", signature="{signature}"'


def user_public_key(user: User) -> UserPublicKey:
    """The key a manifest user is identified by.

    Raises:
        RequestRefusedError: ``unknown_user`` when the user has no usable key.
    """
    try:
        if user.certificate is not None:
            key: object = x509.load_pem_x509_certificate(user.certificate.encode()).public_key()
        elif user.public_key is not None:
            key = serialization.load_pem_public_key(user.public_key.encode())
        else:
            key = None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise RequestRefusedError("unknown_user", "the user's key is unusable", status=401) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
        raise RequestRefusedError("unknown_user", "the user has no usable key", status=401)
    return key


def _verify(key: UserPublicKey, signature: bytes, data: bytes) -> None:
    if isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    elif isinstance(key, rsa.RSAPublicKey):
        key.verify(signature, data, _PSS, hashes.SHA256())
    else:
        key.verify(signature, data)


@dataclass(frozen=True)
class _Header:
    user: str
    time: int
    nonce: str
    signature: bytes


def _unauthorised(code: str, message: str) -> RequestRefusedError:
    return RequestRefusedError(code, message, status=401)


def _parse(header: str | None, scheme: str = AUTH_SCHEME, who: str = "user") -> _Header:
    if not header:
        raise _unauthorised("auth_missing", f"sign the request ({scheme})")
    given, _, rest = header.strip().partition(" ")
    if given != scheme:
        raise _unauthorised("auth_malformed", f"use the {scheme} scheme")
    params: dict[str, str] = {}
    position = 0
    while position < len(rest):
        match = _PARAM_RE.match(rest, position)
        if match is None or match.group(1) in params:
            raise _unauthorised("auth_malformed", "bad Authorization parameters")
        params[match.group(1)] = match.group(2)
        position = match.end()
    if set(params) != {who, "time", "nonce", "signature"}:
        raise _unauthorised("auth_malformed", f"{who}, time, nonce and signature are required")
    if not params["time"].isdigit() or len(params["time"]) > 12:
        raise _unauthorised("auth_malformed", "time must be epoch seconds")
    if not _NONCE_RE.fullmatch(params["nonce"]):
        raise _unauthorised("auth_malformed", "nonce must be 16-64 bytes of lower-case hex")
    try:
        signature = base64.b64decode(params["signature"], validate=True)
    except ValueError as exc:  # binascii.Error, or non-ASCII text
        raise _unauthorised("auth_malformed", "signature must be base64") from exc
    return _Header(
        user=params[who], time=int(params["time"]), nonce=params["nonce"], signature=signature
    )


class RequestAuthenticator:
    """Checks signed requests against the manifest's users; remembers nonces (thread-safe)."""

    def __init__(self, *, window: int = DEFAULT_WINDOW, capacity: int = 100_000) -> None:
        self._window = window
        self._capacity = capacity
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], float] = {}

    def authenticate(
        self,
        header: str | None,
        *,
        method: str,
        target: str,
        body: bytes,
        users: Mapping[str, User] | Manifest,
        root_sha256: bytes,
        now: float,
    ) -> str:
        """The name of the user who signed this request.

        Raises:
            RequestRefusedError: 401 with the codes of the module docstring.
        """
        from sealpod.manifest import Manifest

        parsed = _parse(header)
        table = users.users if isinstance(users, Manifest) else users
        user = table.get(parsed.user)
        if user is None:
            raise _unauthorised("unknown_user", "no such user in the manifest")
        self._check(parsed, user_public_key(user), method, target, body, root_sha256, now, "user")
        return parsed.user

    def authenticate_service(
        self,
        header: str | None,
        *,
        method: str,
        target: str,
        body: bytes,
        ca: CoordinatorCA,
        root_sha256: bytes,
        now: float,
    ) -> tuple[str, str]:
        """The ``(service, instance)`` whose activation key signed this request.

        The header is ``Sealpod-Service-Signature cert="<base64 DER leaf>", time, nonce,
        signature`` (same signing string as users); the leaf must chain through the mesh
        bundle to the root at ``now`` and carry a ``sealpod://service/S/I`` URI.

        Raises:
            RequestRefusedError: 401 (``auth_missing``, ``auth_malformed``,
                ``certificate_invalid``, ``signature_invalid``, ``request_expired``,
                ``request_replayed``).
        """
        parsed = _parse(header, SERVICE_AUTH_SCHEME, "cert")
        try:
            leaf = x509.load_der_x509_certificate(base64.b64decode(parsed.user, validate=True))
        except (ValueError, binascii.Error) as exc:
            raise _unauthorised("auth_malformed", "cert must be a base64 DER certificate") from exc
        moment = datetime.datetime.fromtimestamp(now, datetime.UTC)
        try:
            verify_chain(leaf, ca.trust_bundle(), ca.root_certificate, moment,
                         require_client_auth=True)  # fmt: skip
        except VerificationError as exc:
            raise _unauthorised("certificate_invalid", "not a current mesh certificate") from exc
        identity = _service_of(leaf)
        key = leaf.public_key()
        if not isinstance(
            key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
        ):
            raise _unauthorised("certificate_invalid", "unsupported key type")
        self._check(parsed, key, method, target, body, root_sha256, now, "/".join(identity))
        return identity

    def _check(
        self,
        parsed: _Header,
        key: UserPublicKey,
        method: str,
        target: str,
        body: bytes,
        root_sha256: bytes,
        now: float,
        who: str,
    ) -> None:
        if abs(now - parsed.time) > self._window:
            raise _unauthorised("request_expired", "the request time is outside the window")
        data = signing_string(
            method=method,
            target=target,
            time=parsed.time,
            nonce=parsed.nonce,
            body=body,
            root_sha256=root_sha256,
        )
        try:
            _verify(key, parsed.signature, data)
        except InvalidSignature as exc:
            raise _unauthorised("signature_invalid", "the signature does not verify") from exc
        seen_key = (who, parsed.nonce)
        with self._lock:
            expiry = self._seen.get(seen_key)
            if expiry is not None and expiry >= now:
                raise _unauthorised("request_replayed", "this signed request was already used")
            if len(self._seen) >= self._capacity:
                for old in [k for k, until in self._seen.items() if until < now]:
                    del self._seen[old]
                if len(self._seen) >= self._capacity:
                    raise RequestRefusedError(
                        "too_many_requests", "too many signed requests", status=503
                    )
            self._seen[seen_key] = parsed.time + self._window


def _service_of(leaf: x509.Certificate) -> tuple[str, str]:
    try:
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as exc:
        raise _unauthorised("certificate_invalid", "no service name in the certificate") from exc
    for uri in sans.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(_SERVICE_URI_PREFIX):
            service, _, instance = uri[len(_SERVICE_URI_PREFIX) :].partition("/")
            if service and instance:
                return service, instance
    raise _unauthorised("certificate_invalid", "no service name in the certificate")


def service_authorization_header(
    key: UserPrivateKey,
    certificate: x509.Certificate,
    *,
    method: str,
    target: str,
    body: bytes,
    root_sha256: bytes,
    time: int,
) -> str:
    """The ``Authorization`` header value of a request a service instance signs with its
    activation key (see :meth:`RequestAuthenticator.authenticate_service`)."""
    nonce = secrets.token_hex(16)
    data = signing_string(
        method=method, target=target, time=time, nonce=nonce, body=body, root_sha256=root_sha256
    )
    signature = base64.b64encode(_sign(key, data)).decode("ascii")
    cert = base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode("ascii")
    return (
        f'{SERVICE_AUTH_SCHEME} cert="{cert}", time="{time}", nonce="{nonce}", '
        f'signature="{signature}"'
    )
