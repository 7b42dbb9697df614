"""Activation at the coordinator, and the activated instance's volume-tag calls, on the standard
library's HTTP client (start-up path).

``sealpod run --coordinator`` activates before the application starts and, when the package has a
rollback-protected encrypted volume, asks for the volume's pinned tag before it starts too (and
reports new tags while it runs), so everything here is on the start-up path: this module imports
neither httpx (with httpcore, h11 and trio it costs ~200 ms to import) nor pydantic, dcap-qvl or
the attestation verifier. The two requests of an activation go over one keep-alive
:class:`http.client.HTTPSConnection` whose TLS context trusts only the pinned coordinator root
(and checks the host name); each volume-tag request (:func:`get_volume_tag`,
:func:`set_volume_tag`, signed by the activated instance's key) over one such connection. As with
httpx, an HTTP proxy in ``HTTPS_PROXY``/``ALL_PROXY`` (minus ``NO_PROXY``) is used as a CONNECT
tunnel; TLS still ends at the coordinator and is still pinned.

:mod:`sealpod.coordinator.client` re-exports the public names; the other client calls stay on
httpx and share :func:`raise_for_refusal` so that both map the coordinator's error bodies the
same way: ``kind: evidence`` -> :class:`VerificationError`, anything else ->
:class:`RequestRefusedError`; transport and TLS failures -> :class:`NetworkError`.
"""

from __future__ import annotations

import base64
import datetime
import http.client
import json
import logging
import os
import re
import ssl
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sealpod.coordinator.binding import activation_report_data
from sealpod.coordinator.errors import RequestRefusedError
from sealpod.errors import ConfigError, NetworkError, VerificationError
from sealpod.pki.certificates import public_key_der, verify_chain

if TYPE_CHECKING:
    from sealpod.attestation.collateral import Collateral
    from sealpod.tee.backend import TEEBackend

__all__ = [
    "DEFAULT_TIMEOUT",
    "ActivationResult",
    "PinnedVolumeTag",
    "VolumeKey",
    "activate",
    "base_url",
    "check_name",
    "field_value",
    "get_volume_tag",
    "json_object",
    "pinned_ssl_context",
    "raise_for_refusal",
    "set_volume_tag",
    "volume_tag",
]

_logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0
_ACTIVATION_ATTEMPTS = 3
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True, repr=False)
class VolumeKey:
    """An encrypted volume granted at activation; the key never appears in ``repr``."""

    mount: str
    key: bytes
    rollback_protected: bool

    def __repr__(self) -> str:
        return f"VolumeKey(mount={self.mount!r}, rollback_protected={self.rollback_protected})"


@dataclass(frozen=True, repr=False)
class ActivationResult:
    """What an activation delivered. Secrets (key, files, env) never appear in ``repr``."""

    service: str
    instance: str
    simulated: bool
    private_key: ec.EllipticCurvePrivateKey = field(repr=False)
    certificate: x509.Certificate
    certificate_chain: tuple[x509.Certificate, ...]
    trust_bundle: tuple[x509.Certificate, ...]
    root_certificate: x509.Certificate
    files: dict[str, bytes] = field(repr=False)
    env: dict[str, str] = field(repr=False)
    argv: list[str] | None = field(repr=False)
    volumes: dict[str, VolumeKey] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        return (
            f"ActivationResult(service={self.service!r}, instance={self.instance!r}, "
            f"simulated={self.simulated}, files={sorted(self.files)}, env={sorted(self.env)})"
        )

    def private_key_pem(self) -> bytes:
        """The instance's private key, PKCS#8 PEM."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def base_url(url: str) -> str:
    """``url`` without trailing slashes, refused unless it is ``https://``.

    Raises:
        ConfigError: not an https URL.
    """
    if not url.startswith("https://"):
        raise ConfigError(f"coordinator URL {url!r} must start with https://")
    return url.rstrip("/")


def pinned_ssl_context(root_pem: bytes) -> ssl.SSLContext:
    """A client TLS context that trusts only ``root_pem`` (and checks the host name).

    Raises:
        ConfigError: ``root_pem`` is not a PEM certificate.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_verify_locations(cadata=root_pem.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError("the pinned coordinator root is not a PEM certificate") from exc
    return context


def raise_for_refusal(status: int, reason: str, content: bytes) -> None:
    """Raise the refusal a non-2xx coordinator answer carries; return on 2xx.

    The body ``{"error": {"code", "message", "kind"}}`` names the refusal; a body without it
    (a proxy's page, say) is refused as ``http_<status>`` with the reason phrase.

    Raises:
        VerificationError: the coordinator refused evidence (``kind: evidence``).
        RequestRefusedError: any other refusal.
    """
    if 200 <= status < 300:
        return
    code = f"http_{status}"
    message = reason
    kind = "request"
    try:
        error = json.loads(content)["error"]
        code = str(error["code"])
        message = str(error["message"])
        kind = str(error.get("kind", "request"))
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    if kind == "evidence":
        # Evidence the coordinator did not accept. Its message starts with the reason already.
        raise VerificationError(code, message.removeprefix(f"{code}: "))
    raise RequestRefusedError(code, message.removeprefix(f"{code}: "), status=status)


def json_object(status: int, reason: str, content: bytes) -> dict[str, Any]:
    """The JSON object of a 2xx coordinator answer, or the refusal it carries as an error.

    Raises:
        VerificationError: the coordinator refused evidence (``kind: evidence``).
        RequestRefusedError: any other refusal.
        NetworkError: the body is not a JSON object.
    """
    raise_for_refusal(status, reason, content)
    try:
        body = json.loads(content)
    except ValueError as exc:
        raise NetworkError("the coordinator answered with something that is not JSON") from exc
    if not isinstance(body, dict):
        raise NetworkError("the coordinator answered with an unexpected JSON document")
    return body


def field_value(body: Mapping[str, Any], name: str, kind: type) -> Any:
    """``body[name]`` when it is a ``kind``.

    Raises:
        VerificationError: ``malformed_response`` when it is missing or of another type.
    """
    value = body.get(name)
    if not isinstance(value, kind):
        raise VerificationError("malformed_response", f"the coordinator's {name} is missing")
    return value


_PROXY_VARIABLES = ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


def _proxy(host: str) -> urllib.parse.SplitResult | None:
    """The HTTP proxy to tunnel to ``host`` through, from the environment (as httpx reads it).

    Raises:
        ConfigError: the proxy is not an ``http://`` URL with a host and a valid port.
    """
    if not any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return None
    # Imported only when a proxy is configured: it costs start-up time.
    import urllib.request

    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get("https") or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(host, proxies):
        return None
    parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    try:
        valid = parts.scheme == "http" and bool(parts.hostname) and parts.port != 0
    except ValueError:
        valid = False
    if not valid:
        # Never the URL itself in the message: it may carry credentials.
        raise ConfigError("the HTTPS proxy in the environment is not an http://host[:port] URL")
    return parts


class _PinnedConnection:
    """One keep-alive HTTPS connection to the coordinator, TLS pinned to its root.

    Transport, TLS and HTTP framing failures surface as :class:`OSError` or
    :class:`http.client.HTTPException`; the caller maps them to :class:`NetworkError`.
    """

    def __init__(self, url: str, root_pem: bytes, timeout: float) -> None:
        parts = urllib.parse.urlsplit(base_url(url))
        try:
            host, port = parts.hostname, parts.port
        except ValueError as exc:
            raise ConfigError(f"coordinator URL {url!r} has an invalid port") from exc
        if not host:
            raise ConfigError(f"coordinator URL {url!r} has no host")
        self._prefix = parts.path.rstrip("/")
        context = pinned_ssl_context(root_pem)
        proxy = _proxy(host)
        if proxy is None:
            self._connection = http.client.HTTPSConnection(
                host, port, timeout=timeout, context=context
            )
            return
        # TLS to the coordinator inside a CONNECT tunnel: the proxy sees only ciphertext, and
        # the certificate is checked against the pin and the coordinator's host name.
        self._connection = http.client.HTTPSConnection(
            str(proxy.hostname), proxy.port or 80, timeout=timeout, context=context
        )
        headers = {}
        if proxy.username is not None:
            credentials = (
                f"{urllib.parse.unquote(proxy.username)}:"
                f"{urllib.parse.unquote(proxy.password or '')}"
            )
            headers["Proxy-Authorization"] = "Basic " + base64.b64encode(
                credentials.encode("utf-8")
            ).decode("ascii")
        self._connection.set_tunnel(host, port or 443, headers=headers)

    def post(self, path: str, payload: Mapping[str, Any] | None = None) -> dict[str, Any]:
        body = b""
        if payload is not None:
            body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode("utf-8")
        return self.request("POST", path, body)

    def request(
        self, method: str, path: str, body: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        sent = {"Accept": "application/json", **(headers or {})}
        if body:
            sent["Content-Type"] = "application/json"
        # No body at all (rather than an empty one) keeps a GET free of Content-Length.
        self._connection.request(method, self._prefix + path, body=body or None, headers=sent)
        response = self._connection.getresponse()
        # Read the whole body before the next request so the connection can be reused.
        content = response.read()
        return json_object(response.status, response.reason, content)

    def close(self) -> None:
        self._connection.close()


def activate(
    url: str,
    root_pem: bytes,
    service: str,
    instance: str,
    backend: TEEBackend,
    *,
    collateral: Collateral | Mapping[str, Any] | None = None,
    clock: Callable[[], float] = time.time,
    timeout: float = DEFAULT_TIMEOUT,
) -> ActivationResult:
    """Activate ``service``/``instance`` at the coordinator pinned by ``root_pem``.

    ``collateral`` defaults to the simulated platform's when ``backend`` is simulated; with
    hardware it must be given (from a PCCS).

    Raises:
        ConfigError: bad URL, root or arguments; no collateral for a hardware backend.
        NetworkError: the coordinator cannot be reached (or fails TLS against the pin).
        VerificationError: the coordinator refused the evidence (``reason`` from it), or its
            answer does not check out (certificate not for our key, bad chain).
        RequestRefusedError: another refusal (unknown service, too many instances, ...).
    """
    from sealpod.tee.backend import SimulationBackend

    if collateral is None:
        if not isinstance(backend, SimulationBackend):
            raise ConfigError("collateral is needed to activate with a hardware TEE")
        collateral_json: Mapping[str, Any] = backend.platform.collateral()
    elif isinstance(collateral, Mapping):
        collateral_json = dict(collateral)
    else:
        collateral_json = collateral.to_mapping()  # a Collateral
    for attempt in range(1, _ACTIVATION_ATTEMPTS + 1):
        try:
            return _activate_once(
                url, root_pem, service, instance, backend, collateral_json, clock, timeout
            )
        except RequestRefusedError as exc:
            # A manifest update landed while we were activating: run the whole protocol again
            # (new key, new nonce) against the new manifest.
            if exc.code != "manifest_changed" or attempt == _ACTIVATION_ATTEMPTS:
                raise
            _logger.info("the manifest changed during activation; retrying")
    raise RuntimeError("unreachable")  # pragma: no cover - the loop returns or raises


def _activate_once(
    url: str,
    root_pem: bytes,
    service: str,
    instance: str,
    backend: TEEBackend,
    collateral_json: Mapping[str, Any],
    clock: Callable[[], float],
    timeout: float,
) -> ActivationResult:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service)]))
        .sign(key, hashes.SHA256())
    )
    spki = public_key_der(key.public_key())
    connection = _PinnedConnection(url, root_pem, timeout)
    try:
        nonce_body = connection.post("/api/v1/activation/nonce")
        try:
            nonce = bytes.fromhex(field_value(nonce_body, "nonce", str))
        except ValueError as exc:
            raise VerificationError("malformed_response", "the nonce is not hex") from exc
        quote = backend.quote(activation_report_data(spki, nonce))
        body = connection.post(
            "/api/v1/activation",
            {
                "service": service,
                "instance": instance,
                "csr": csr.public_bytes(serialization.Encoding.PEM).decode("ascii"),
                "nonce": nonce.hex(),
                "quote": quote.hex(),
                "collateral": dict(collateral_json),
            },
        )
    except (OSError, http.client.HTTPException) as exc:
        # OSError covers refused connections, timeouts and TLS failures (ssl.SSLError,
        # including a certificate that does not chain to the pinned root).
        raise NetworkError(f"activation at {url} failed: {_describe(exc)}") from exc
    finally:
        connection.close()
    return _check_activation(body, key, root_pem, service, instance, clock)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _certificates(pem: str, what: str) -> tuple[x509.Certificate, ...]:
    try:
        certificates = tuple(x509.load_pem_x509_certificates(pem.encode("ascii")))
    except (ValueError, UnicodeEncodeError) as exc:
        raise VerificationError("malformed_response", f"{what} does not parse") from exc
    if not certificates:
        raise VerificationError("malformed_response", f"{what} is empty")
    return certificates


def _check_activation(
    body: Mapping[str, Any],
    key: ec.EllipticCurvePrivateKey,
    root_pem: bytes,
    service: str,
    instance: str,
    clock: Callable[[], float],
) -> ActivationResult:
    root = x509.load_pem_x509_certificate(root_pem)
    chain = _certificates(field_value(body, "certificate_chain", str), "certificate_chain")
    bundle = _certificates(field_value(body, "trust_bundle", str), "trust_bundle")
    leaf = chain[0]
    if public_key_der(leaf.public_key()) != public_key_der(key.public_key()):
        raise VerificationError(
            "certificate_key_mismatch", "the coordinator certified another key than ours"
        )
    now = datetime.datetime.fromtimestamp(clock(), datetime.UTC)
    verify_chain(leaf, chain[1:], root, now, require_client_auth=True)
    placeholder = str(field_value(body, "private_key_placeholder", str))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    files: dict[str, bytes] = {}
    for path, encoded in dict(field_value(body, "files", dict)).items():
        try:
            content = base64.b64decode(str(encoded), validate=True)
        except ValueError as exc:
            raise VerificationError("malformed_response", f"file {path} is not base64") from exc
        files[str(path)] = content.replace(placeholder.encode("ascii"), key_pem.encode("ascii"))
    env = {
        str(name): str(value).replace(placeholder, key_pem)
        for name, value in dict(field_value(body, "env", dict)).items()
    }
    raw_argv = body.get("argv")
    argv = None if raw_argv is None else [str(a).replace(placeholder, key_pem) for a in raw_argv]
    simulated = bool(body.get("simulated"))
    volumes: dict[str, VolumeKey] = {}
    for name, grant in dict(body.get("volumes") or {}).items():
        try:
            volumes[str(name)] = VolumeKey(
                mount=str(grant["mount"]),
                key=base64.b64decode(str(grant["key"]), validate=True),
                rollback_protected=bool(grant["rollback_protected"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise VerificationError("malformed_response", f"volume {name} is malformed") from exc
    return ActivationResult(
        service=service,
        instance=instance,
        simulated=simulated,
        private_key=key,
        certificate=leaf,
        certificate_chain=chain,
        trust_bundle=bundle,
        root_certificate=root,
        files=files,
        env=env,
        argv=argv,
        volumes=volumes,
    )


def check_name(kind: str, name: str) -> None:
    """Refuse a secret, package or volume name that could not be a manifest name (or a path).

    Raises:
        ConfigError: ``name`` is not 1-64 letters, digits, ``_``, ``.`` or ``-`` (not first).
    """
    if not _NAME_RE.fullmatch(name):
        raise ConfigError(f"invalid {kind} name {name!r}")


@dataclass(frozen=True)
class PinnedVolumeTag:
    """A volume's pinned state as the coordinator reports it."""

    volume: str
    version: int
    tag: bytes | None


def volume_tag(body: Mapping[str, Any]) -> PinnedVolumeTag:
    """The :class:`PinnedVolumeTag` of a coordinator answer.

    Raises:
        VerificationError: ``malformed_response`` when the document is not a volume tag.
    """
    try:
        tag = body.get("tag")
        return PinnedVolumeTag(
            volume=str(body["volume"]),
            version=int(body["version"]),
            tag=None if tag is None else bytes.fromhex(str(tag)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise VerificationError("malformed_response", "unexpected volume tag document") from exc


def _service_request(
    url: str,
    root_pem: bytes,
    activation: ActivationResult,
    *,
    method: str,
    path: str,
    body: bytes,
    clock: Callable[[], float],
    timeout: float,
) -> dict[str, Any]:
    """One request signed by the activated instance's key, over a pinned connection."""
    # Imported here: activation itself signs nothing.
    from sealpod.coordinator.auth import service_authorization_header

    connection = _PinnedConnection(url, root_pem, timeout)  # checks the URL and the root
    try:
        root = x509.load_pem_x509_certificate(root_pem)
    except ValueError as exc:
        raise ConfigError("the pinned coordinator root is not a PEM certificate") from exc
    header = service_authorization_header(
        activation.private_key,
        activation.certificate,
        method=method,
        target=path,
        body=body,
        root_sha256=root.fingerprint(hashes.SHA256()),
        time=int(clock()),
    )
    try:
        # The connection opens here (nothing was sent before).
        return connection.request(method, path, body, {"Authorization": header})
    except (OSError, http.client.HTTPException) as exc:
        raise NetworkError(f"cannot reach the coordinator at {url}: {_describe(exc)}") from exc
    finally:
        connection.close()


def get_volume_tag(
    url: str,
    root_pem: bytes,
    activation: ActivationResult,
    volume: str,
    *,
    clock: Callable[[], float] = time.time,
    timeout: float = DEFAULT_TIMEOUT,
) -> PinnedVolumeTag:
    """The pinned tag of ``volume``, asked as the activated instance ``activation``.

    Raises:
        ConfigError: a malformed volume name, URL or root.
        NetworkError: the coordinator cannot be reached (or fails TLS against the pin).
        VerificationError: ``malformed_response``.
        RequestRefusedError: ``volume_not_mounted``, ``not_rollback_protected``,
            ``certificate_invalid``...
    """
    check_name("volume", volume)
    body = _service_request(
        url, root_pem, activation, method="GET", path=f"/api/v1/volumes/{volume}/tag",
        body=b"", clock=clock, timeout=timeout,
    )  # fmt: skip
    return volume_tag(body)


def set_volume_tag(
    url: str,
    root_pem: bytes,
    activation: ActivationResult,
    volume: str,
    *,
    expected_version: int,
    tag: bytes,
    clock: Callable[[], float] = time.time,
    timeout: float = DEFAULT_TIMEOUT,
) -> PinnedVolumeTag:
    """Move ``volume``'s pin from ``expected_version`` to ``tag``.

    Raises:
        ConfigError: a malformed volume name, URL or root.
        NetworkError: the coordinator cannot be reached (or fails TLS against the pin).
        VerificationError: ``malformed_response``.
        RequestRefusedError: ``volume_tag_conflict`` (someone moved the pin: the volume here
            is not the latest), ``volume_not_mounted``, ...
    """
    check_name("volume", volume)
    body = json.dumps({"expected_version": expected_version, "tag": tag.hex()}).encode()
    answer = _service_request(
        url, root_pem, activation, method="PUT", path=f"/api/v1/volumes/{volume}/tag",
        body=body, clock=clock, timeout=timeout,
    )  # fmt: skip
    return volume_tag(answer)
