"""The coordinator's HTTP API (FastAPI), built by :func:`create_app` from settings.

JSON everywhere; every error is ``{"error": {"code": "...", "message": "..."}}`` with a 4xx/5xx
status (manifest problems add ``"problems": [{"path", "message"}]``). Status codes: 400 for
malformed input, 403 for evidence that fails verification, 404 for unknown things, 409 when the
state does not allow the request (manifest already set, too many instances), 422 for an invalid
manifest or request body, 503 in recovery mode or when the store is unavailable.
"""

from __future__ import annotations

import base64
import functools
import inspect
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fastapi import Body, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from sealpod import __version__
from sealpod.coordinator.auth import AUTH_SCHEME, SERVICE_AUTH_SCHEME
from sealpod.coordinator.errors import RequestRefusedError
from sealpod.coordinator.metrics import CONTENT_TYPE
from sealpod.coordinator.service import (
    ActivationOutcome,
    ActivationRequestData,
    Coordinator,
    UpdateStatus,
    UserSecretUpload,
    VolumeTag,
    encode_files,
)
from sealpod.coordinator.settings import CoordinatorSettings
from sealpod.errors import (
    ConfigError,
    EnvironmentUnavailableError,
    NetworkError,
    QuoteFormatError,
    SealpodError,
    VerificationError,
)
from sealpod.manifest import ManifestValidationError
from sealpod.pki import certificates_to_pem
from sealpod.store import StoreConflictError

__all__ = ["MAX_BODY_BYTES", "create_app"]

_logger = logging.getLogger(__name__)

# VerificationError reasons that mean "your request is malformed" rather than "your evidence
# is not acceptable".
_BAD_REQUEST_REASONS = frozenset(
    {
        "malformed_quote",
        "malformed_collateral",
        "malformed_csr",
        "csr_signature_invalid",
        "csr_key_unsupported",
    }
)
_SERVICE_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
_INSTANCE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.~-]{0,127}$"
_HEX = r"^([0-9a-fA-F]{2})+$"


# -- wire models -----------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ErrorBody(_Model):
    """The inside of an error response."""

    code: str
    message: str
    kind: Literal["evidence", "request"] = Field(
        default="request",
        description="evidence: untrusted evidence failed a check; request: anything else",
    )
    problems: list[dict[str, str]] | None = None


class ErrorResponse(_Model):
    """Every error response."""

    error: ErrorBody


class StatusResponse(_Model):
    """``GET /api/v1/status``."""

    state: Literal["accepting-manifest", "accepting-services", "recovery"]
    simulated: bool
    version: str
    tee: str
    manifest_sha256: str | None
    recovery: dict[str, Any] | None = Field(
        default=None,
        description="in recovery: threshold, shares received, recovery key fingerprints",
    )


class QuoteResponse(_Model):
    """``GET /api/v1/quote``: report_data = SHA-256(root_cert_der ‖ nonce) ‖ 0³²."""

    root_certificate: str = Field(description="PEM of the coordinator root CA (pin this)")
    certificate_chain: str = Field(description="PEM: the root, then the mesh intermediates")
    quote: str = Field(description="hex")
    collateral: dict[str, str] | None = Field(
        description="dcap-qvl QuoteCollateralV3 JSON form (null: fetch it from a PCCS)"
    )
    simulated: bool


class RecoverRequest(_Model):
    """``POST /api/v1/recover``: one decrypted recovery share."""

    share: Annotated[str, Field(max_length=1024, description="base64 of the decrypted share")]


class RecoverResponse(_Model):
    """Progress of a recovery."""

    threshold: int
    received: int
    recovered: bool


class ManifestSetResponse(_Model):
    """``POST /api/v1/manifest``."""

    manifest_sha256: str
    recovery_shares: dict[str, str] = Field(
        description="recovery key name -> base64 RSA-OAEP encrypted share (returned only once)"
    )


class ManifestResponse(_Model):
    """``GET /api/v1/manifest``."""

    manifest: dict[str, Any]
    sha256: str = Field(description="SHA-256 of the canonical JSON of the manifest")
    signature: str = Field(description="base64 DER ECDSA signature by the root CA key")
    signature_algorithm: str = Field(description="ecdsa-sha384 over the canonical JSON")


class NonceResponse(_Model):
    """``POST /api/v1/activation/nonce``."""

    nonce: str = Field(description="hex; single use")
    expires_at: float = Field(description="epoch seconds")


class ActivationRequest(_Model):
    """``POST /api/v1/activation``."""

    service: Annotated[str, Field(pattern=_SERVICE_PATTERN)]
    instance: Annotated[str, Field(pattern=_INSTANCE_PATTERN)]
    csr: Annotated[str, Field(max_length=65536, description="PEM PKCS#10")]
    nonce: Annotated[str, Field(pattern=_HEX, max_length=256)]
    quote: Annotated[str, Field(pattern=_HEX, max_length=1 << 17, description="hex")]
    collateral: dict[str, Any] | None = Field(
        default=None, description="dcap-qvl QuoteCollateralV3 JSON form"
    )


class VolumeGrantModel(_Model):
    """An encrypted volume the service mounts."""

    mount: str
    key: str = Field(description="base64 of the volume's 128-bit encrypted-files key")
    rollback_protected: bool


class ActivationResponse(_Model):
    """What an activated instance receives."""

    service: str
    instance: str
    simulated: bool
    certificate: str = Field(description="PEM leaf")
    certificate_chain: str = Field(description="PEM: leaf, then the issuing mesh intermediate")
    trust_bundle: str = Field(description="PEM: current and previous mesh intermediates")
    root_certificate: str = Field(description="PEM: the coordinator root (mesh trust anchor)")
    files: dict[str, str] = Field(description="absolute path -> base64 content")
    env: dict[str, str]
    argv: list[str] | None
    private_key_placeholder: str = Field(
        description="replace this text with the instance's own PEM private key"
    )
    volumes: dict[str, VolumeGrantModel] = Field(default_factory=dict)


class SecretUploadRequest(_Model):
    """``PUT /api/v1/secrets/{name}``: ``value`` (base64) for plain and symmetric-key secrets,
    or ``certificate`` (PEM chain, leaf first) and ``private_key`` (PEM) for certificates."""

    value: Annotated[str, Field(max_length=90_000)] | None = None
    certificate: Annotated[str, Field(max_length=65536)] | None = None
    private_key: Annotated[str, Field(max_length=65536)] | None = None


class SecretResponse(_Model):
    """``GET /api/v1/secrets/{name}``."""

    name: str
    type: str
    value: str | None = Field(description="base64 (plain and symmetric-key secrets)")
    certificate: str | None = Field(description="PEM chain, leaf first (certificate secrets)")
    private_key: str | None = Field(description="PEM PKCS#8 (certificate secrets)")


class UpdateResponse(_Model):
    """A manifest update proposal and its approvals."""

    id: str
    manifest_sha256: str
    proposer: str
    approvals: list[str]
    threshold: int
    applied: bool
    recovery_shares: dict[str, str] = Field(
        description="new recovery shares when the applied update changed the recovery keys"
    )


class PackageSVNRequest(_Model):
    """``POST /api/v1/packages/{name}/min-isv-svn``."""

    min_isv_svn: Annotated[int, Field(ge=0, le=0xFFFF)]


class VolumeTagRequest(_Model):
    """``PUT /api/v1/volumes/{name}/tag``: compare-and-swap of the pin."""

    expected_version: Annotated[int, Field(ge=0)]
    tag: Annotated[str, Field(pattern=_HEX, max_length=128, description="hex, 1-64 bytes")]


class VolumeTagResponse(_Model):
    """The pinned state of a volume (version 0 and no tag until first set)."""

    volume: str
    version: int
    tag: str | None


class PendingUpdateResponse(_Model):
    """``GET /api/v1/manifest/updates``."""

    pending: UpdateResponse | None


class AuditEntryModel(_Model):
    """One hash-chained audit entry."""

    seq: int
    time: str
    event: dict[str, Any]
    prev: str
    hash: str


class AuditHeadModel(_Model):
    """The sealed audit head."""

    count: int
    hash: str


class AuditResponse(_Model):
    """``GET /api/v1/audit``."""

    entries: list[AuditEntryModel]
    head: AuditHeadModel | None


class HealthResponse(_Model):
    """``GET /healthz``."""

    status: Literal["ok"]


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 403, 404, 409, 422, 503)
}


# -- errors ------------------------------------------------------------------------------------


def _error(
    status: int, code: str, message: str, *, kind: str = "request", **extra: Any
) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message, "kind": kind}
    body.update(extra)
    return JSONResponse(status_code=status, content={"error": body})


def _status_code_name(status: int) -> str:
    return {
        400: "bad_request",
        404: "not_found",
        405: "method_not_allowed",
        413: "too_large",
        415: "unsupported_media_type",
    }.get(status, f"http_{status}")


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestRefusedError)
    async def _refused(_request: Request, exc: RequestRefusedError) -> JSONResponse:
        response = _error(exc.status, exc.code, str(exc))
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = f"{AUTH_SCHEME}, {SERVICE_AUTH_SCHEME}"
        return response

    @app.exception_handler(VerificationError)
    async def _verification(_request: Request, exc: VerificationError) -> JSONResponse:
        status = 400 if exc.reason in _BAD_REQUEST_REASONS else 403
        return _error(status, exc.reason, str(exc), kind="evidence")

    @app.exception_handler(QuoteFormatError)
    async def _quote_format(_request: Request, exc: QuoteFormatError) -> JSONResponse:
        return _error(400, "malformed_quote", str(exc), kind="evidence")

    @app.exception_handler(ManifestValidationError)
    async def _manifest(_request: Request, exc: ManifestValidationError) -> JSONResponse:
        problems = [problem.to_json() for problem in exc.problems]
        return _error(422, "manifest_invalid", str(exc), problems=problems)

    @app.exception_handler(StoreConflictError)
    async def _conflict(_request: Request, exc: StoreConflictError) -> JSONResponse:
        return _error(503, "busy", "the state store is busy; retry")

    @app.exception_handler(NetworkError)
    async def _network(_request: Request, exc: NetworkError) -> JSONResponse:
        _logger.error("upstream unavailable: %s", exc)
        return _error(503, "upstream_unavailable", "a service the coordinator needs is down")

    @app.exception_handler(EnvironmentUnavailableError)
    async def _unavailable(_request: Request, exc: EnvironmentUnavailableError) -> JSONResponse:
        _logger.error("environment unavailable: %s", exc)
        return _error(503, "unavailable", "the coordinator cannot serve this request now")

    @app.exception_handler(ConfigError)
    async def _config(_request: Request, exc: ConfigError) -> JSONResponse:
        return _error(400, "invalid_request", str(exc))

    @app.exception_handler(SealpodError)
    async def _sealpod(_request: Request, exc: SealpodError) -> JSONResponse:
        return _error(400, "refused", str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else "invalid request"
        return _error(422, "invalid_request", message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, _status_code_name(exc.status_code), str(exc.detail))

    @app.exception_handler(Exception)
    async def _internal(_request: Request, exc: Exception) -> JSONResponse:
        _logger.exception("internal error")
        return _error(500, "internal_error", "internal error")


# -- request size limit ------------------------------------------------------------------------

#: Largest request body accepted (a manifest may be up to 4 MiB; JSON/YAML framing adds a bit).
MAX_BODY_BYTES = 5 << 20

_Scope = MutableMapping[str, Any]
_Message = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[_Message]]
_Send = Callable[[_Message], Awaitable[None]]
_ASGIApp = Callable[[_Scope, _Receive, _Send], Awaitable[None]]


class _BodyTooLargeError(Exception):
    pass


class _BodyLimit:
    """ASGI middleware: a request whose body exceeds ``limit`` bytes gets 413 before the app
    buffers it (``Content-Length`` is checked first; chunked bodies are counted as they come)."""

    def __init__(self, app: _ASGIApp, limit: int) -> None:
        self._app = app
        self._limit = limit

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self._limit:
                await self._reject(scope, receive, send)
                return
        received = 0
        started = False

        async def limited_receive() -> _Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self._limit:
                    raise _BodyTooLargeError
            return message

        async def tracking_send(message: _Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self._app(scope, limited_receive, tracking_send)
        except _BodyTooLargeError:
            if not started:
                await self._reject(scope, receive, send)

    async def _reject(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        response = _error(413, "too_large", f"request bodies are limited to {self._limit} bytes")
        await response(scope, receive, send)


# -- the app -----------------------------------------------------------------------------------


_M = TypeVar("_M", bound=BaseModel)

#: OpenAPI request body of the manifest endpoints (JSON object or YAML text).
_MANIFEST_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/yaml": {"schema": {"type": "string"}},
        },
    }
}


def _json_request_body(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI request body for routes that read (and sign-check) their raw body themselves."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


def _parse_body(model: type[_M], body: bytes) -> _M:
    """Validate a raw JSON body, answering like FastAPI's own validation (422) on failure."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from exc


def _target(request: Request) -> str:
    """The request target as the client sent (and signed) it: raw path and query."""
    raw_path = request.scope.get("raw_path")
    target = raw_path.decode("latin-1") if isinstance(raw_path, bytes) else request.url.path
    query = request.scope.get("query_string", b"")
    if query:
        target += "?" + bytes(query).decode("latin-1")
    return target


def _pem(certificate: Any) -> str:
    return str(certificate.public_bytes(serialization.Encoding.PEM).decode("ascii"))


@functools.lru_cache(maxsize=16)
def _cached_pem(certificate: x509.Certificate) -> str:
    """PEM of a certificate served on every activation (the root); certificates are
    immutable and hash by their DER, so the cache cannot serve another's PEM."""
    return _pem(certificate)


@functools.lru_cache(maxsize=16)
def _bundle_pem(bundle: tuple[x509.Certificate, ...]) -> str:
    return certificates_to_pem(bundle).decode("ascii")


def _json_bytes_response(body: bytes) -> Response:
    return Response(content=body, media_type="application/json")


def _nonce_body(core: Coordinator) -> bytes:
    # Issuing is a MAC and, once a manifest is known, touches no store: no thread hop.
    issued = core.new_nonce()
    return (
        NonceResponse(nonce=issued.value.hex(), expires_at=issued.expires_at)
        .model_dump_json()
        .encode()
    )


def _activation_data(body: ActivationRequest) -> ActivationRequestData:
    return ActivationRequestData(
        service=body.service,
        instance=body.instance,
        csr_pem=body.csr,
        nonce_hex=body.nonce,
        quote_hex=body.quote,
        collateral=body.collateral,
    )


def _activation_body(outcome: ActivationOutcome) -> bytes:
    """The JSON of an :class:`ActivationResponse`, serialised by pydantic-core (built here
    rather than returned, which would make FastAPI validate it again)."""
    rendered = outcome.rendered
    return (
        ActivationResponse(
            service=outcome.service,
            instance=outcome.instance,
            simulated=outcome.evidence.simulated,
            certificate=_pem(outcome.certificate),
            certificate_chain=certificates_to_pem(outcome.certificate_chain).decode("ascii"),
            trust_bundle=_bundle_pem(outcome.trust_bundle),
            root_certificate=_cached_pem(outcome.root_certificate),
            files=encode_files(rendered.files),
            env=dict(rendered.env),
            argv=None if rendered.argv is None else list(rendered.argv),
            private_key_placeholder=outcome.private_key_placeholder,
            volumes={
                name: VolumeGrantModel(
                    mount=grant.mount,
                    key=base64.b64encode(grant.key).decode("ascii"),
                    rollback_protected=grant.rollback_protected,
                )
                for name, grant in outcome.volumes.items()
            },
        )
        .model_dump_json()
        .encode()
    )


_NONCE_PATH = "/api/v1/activation/nonce"
_ACTIVATION_PATH = "/api/v1/activation"
_JSON_HEADERS = (b"content-type", b"application/json")


class _HotRoutes:
    """ASGI middleware serving the two activation endpoints (the hot path: two requests per
    activation) without FastAPI's per-request dependency solving, validation and exception
    middlewares. The FastAPI routes stay declared: they describe these endpoints in the
    OpenAPI document and answer what this does not take (anything but a POST whose body is
    ``application/json`` and validates as :class:`ActivationRequest`, so malformed requests
    get FastAPI's own 422). The request is validated by the same pydantic model as the route,
    errors are answered by the app's own exception handlers, and the blocking work runs in a
    worker thread as before.
    """

    def __init__(self, app: _ASGIApp, core: Coordinator, fastapi_app: FastAPI) -> None:
        self._app = app
        self._core = core
        self._fastapi = fastapi_app

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self._app(scope, receive, send)
            return
        path = scope["path"]
        if path == _NONCE_PATH:
            try:
                body = _nonce_body(self._core)
            except Exception as exc:  # the app's handler answers it, or it is re-raised
                await self._refuse(scope, receive, send, exc)
                return
            await _send_json(send, body)
            return
        if path != _ACTIVATION_PATH or not _is_json(scope):
            await self._app(scope, receive, send)
            return
        raw = await _read_body(receive)
        try:
            request = ActivationRequest.model_validate(json.loads(raw))
        except (ValueError, ValidationError):  # JSONDecodeError and UnicodeDecodeError too
            await self._app(scope, _replay(raw, receive), send)
            return
        try:
            outcome = await run_in_threadpool(self._core.activate, _activation_data(request))
            body = _activation_body(outcome)
        except Exception as exc:  # the app's handler answers it, or it is re-raised
            await self._refuse(scope, receive, send, exc)
            return
        await _send_json(send, body)

    async def _refuse(self, scope: _Scope, receive: _Receive, send: _Send, exc: Exception) -> None:
        handlers = self._fastapi.exception_handlers
        for kind in type(exc).__mro__:
            if kind is Exception:
                break  # unexpected errors go up to the server-error middleware, as for routes
            handler = handlers.get(kind)
            if handler is not None:
                result = handler(Request(scope, receive), exc)
                response = await result if inspect.isawaitable(result) else result
                await response(scope, receive, send)
                return
        raise exc


def _is_json(scope: _Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return bool(value.split(b";", 1)[0].strip().lower() == b"application/json")
    return False


async def _read_body(receive: _Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break  # disconnected: what came is all there is
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: _Receive) -> _Receive:
    """A ``receive`` that gives ``body`` (already read) once, then defers to ``receive``."""
    pending = [body]

    async def replayed() -> _Message:
        if pending:
            return {"type": "http.request", "body": pending.pop(), "more_body": False}
        return await receive()

    return replayed


async def _send_json(send: _Send, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [_JSON_HEADERS, (b"content-length", str(len(body)).encode("ascii"))],
        }
    )
    await send({"type": "http.response.body", "body": body})


def create_app(
    settings: CoordinatorSettings | None = None, *, coordinator: Coordinator | None = None
) -> FastAPI:
    """The coordinator's FastAPI application.

    Opens a :class:`~sealpod.coordinator.service.Coordinator` from ``settings`` unless one is
    given; the app closes it on shutdown.

    Raises:
        ConfigError: neither settings nor a coordinator, or bad settings.
        EnvironmentUnavailableError: the TEE or the database is unavailable.
        VerificationError: the sealed state was tampered with.
    """
    if coordinator is None:
        if settings is None:
            raise ConfigError("create_app needs settings or a coordinator")
        coordinator = Coordinator.open(settings)
    core = coordinator

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        core.close()

    app = FastAPI(
        title="sealpod coordinator",
        version=__version__,
        description="Attested control plane: manifest, activation, PKI, audit.",
        lifespan=lifespan,
    )
    app.state.coordinator = core
    app.add_middleware(_HotRoutes, core=core, fastapi_app=app)
    app.add_middleware(_BodyLimit, limit=MAX_BODY_BYTES)
    _install_error_handlers(app)

    @app.get("/healthz", response_model=HealthResponse)
    def healthz() -> HealthResponse:
        return HealthResponse(status="ok")

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}}},
    )
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(core.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/api/v1/status", response_model=StatusResponse)
    def status() -> StatusResponse:
        return StatusResponse.model_validate(core.status())

    @app.post("/api/v1/recover", response_model=RecoverResponse, responses=_ERRORS)
    def recover(body: Annotated[RecoverRequest, Body()]) -> RecoverResponse:
        try:
            share = base64.b64decode(body.share, validate=True)
        except ValueError as exc:  # binascii.Error, or non-ASCII text
            raise RequestRefusedError("invalid_share", "the share must be base64") from exc
        return RecoverResponse.model_validate(core.submit_recovery_share(share))

    @app.get("/api/v1/quote", response_model=QuoteResponse, responses=_ERRORS)
    def quote(
        nonce: Annotated[str, Query(pattern=_HEX, max_length=128, description="hex")],
    ) -> QuoteResponse:
        evidence = core.evidence(bytes.fromhex(nonce))
        return QuoteResponse(
            root_certificate=_pem(evidence.root_certificate),
            certificate_chain=certificates_to_pem(evidence.certificate_chain).decode("ascii"),
            quote=evidence.quote.hex(),
            collateral=dict(evidence.collateral) if evidence.collateral is not None else None,
            simulated=evidence.simulated,
        )

    @app.post(
        "/api/v1/manifest",
        response_model=ManifestSetResponse,
        responses=_ERRORS,
        openapi_extra=_MANIFEST_REQUEST_BODY,
    )
    async def set_manifest(request: Request) -> ManifestSetResponse:
        document = await request.body()
        # The work (validation, dry run, key generation, store) blocks: run it off the loop.
        accepted = await run_in_threadpool(core.set_manifest, document)
        return ManifestSetResponse(
            manifest_sha256=accepted.sha256.hex(),
            recovery_shares={
                name: base64.b64encode(share).decode("ascii")
                for name, share in accepted.recovery_shares.items()
            },
        )

    @app.get("/api/v1/manifest", response_model=ManifestResponse, responses=_ERRORS)
    def get_manifest() -> ManifestResponse:
        info = core.manifest_info()
        return ManifestResponse(
            manifest=info.manifest.model_dump(mode="json"),
            sha256=info.sha256.hex(),
            signature=base64.b64encode(info.signature).decode("ascii"),
            signature_algorithm=info.signature_algorithm,
        )

    @app.post("/api/v1/activation/nonce", response_model=NonceResponse, responses=_ERRORS)
    async def activation_nonce() -> Response:
        # Normally answered by _HotRoutes; this route documents it (and is its fallback).
        return _json_bytes_response(_nonce_body(core))

    @app.post("/api/v1/activation", response_model=ActivationResponse, responses=_ERRORS)
    async def activation(body: Annotated[ActivationRequest, Body()]) -> Response:
        # Normally answered by _HotRoutes; this route documents it, and answers the requests
        # that do not validate (with FastAPI's 422) or are not application/json.
        outcome = await run_in_threadpool(core.activate, _activation_data(body))
        return _json_bytes_response(_activation_body(outcome))

    signed_description = (
        "Signed by a manifest user: Authorization: Sealpod-Signature (sealpod.coordinator.auth)."
    )
    signed_errors: dict[int | str, dict[str, Any]] = {**_ERRORS, 401: {"model": ErrorResponse}}

    async def _user(request: Request, body: bytes) -> str:
        target = _target(request)
        return await run_in_threadpool(
            core.authenticate,
            request.headers.get("authorization"),
            method=request.method,
            target=target,
            body=body,
        )

    @app.put(
        "/api/v1/secrets/{name}",
        status_code=204,
        response_class=Response,
        description=signed_description,
        responses=signed_errors,
        openapi_extra=_json_request_body(SecretUploadRequest),
    )
    async def set_secret(name: str, request: Request) -> Response:
        body = await request.body()
        user = await _user(request, body)
        upload = _parse_body(SecretUploadRequest, body)
        value = None
        if upload.value is not None:
            try:
                value = base64.b64decode(upload.value, validate=True)
            except ValueError as exc:  # binascii.Error, or non-ASCII text
                raise RequestRefusedError("invalid_secret", "value must be base64") from exc
        await run_in_threadpool(
            core.set_secret,
            user,
            name,
            UserSecretUpload(
                value=value,
                certificate_pem=upload.certificate,
                private_key_pem=upload.private_key,
            ),
        )
        return Response(status_code=204)

    @app.get(
        "/api/v1/secrets/{name}",
        response_model=SecretResponse,
        description=signed_description,
        responses=signed_errors,
    )
    async def get_secret(name: str, request: Request) -> SecretResponse:
        user = await _user(request, await request.body())
        release = await run_in_threadpool(core.get_secret, user, name)
        return SecretResponse(
            name=release.name,
            type=release.type,
            value=None
            if release.value is None
            else base64.b64encode(release.value).decode("ascii"),
            certificate=release.certificate_pem,
            private_key=release.private_key_pem,
        )

    def _update(status: UpdateStatus) -> UpdateResponse:
        return UpdateResponse(
            id=status.id,
            manifest_sha256=status.manifest_sha256.hex(),
            proposer=status.proposer,
            approvals=list(status.approvals),
            threshold=status.threshold,
            applied=status.applied,
            recovery_shares={
                name: base64.b64encode(share).decode("ascii")
                for name, share in status.recovery_shares.items()
            },
        )

    @app.post(
        "/api/v1/manifest/updates",
        response_model=UpdateResponse,
        description=signed_description + " Body: the new manifest (JSON or YAML).",
        responses=signed_errors,
        openapi_extra=_MANIFEST_REQUEST_BODY,
    )
    async def propose_update(request: Request) -> UpdateResponse:
        body = await request.body()
        user = await _user(request, body)
        return _update(await run_in_threadpool(core.propose_update, user, body))

    @app.get("/api/v1/manifest/updates", response_model=PendingUpdateResponse, responses=_ERRORS)
    def pending_update() -> PendingUpdateResponse:
        status = core.pending_update()
        return PendingUpdateResponse(pending=None if status is None else _update(status))

    @app.post(
        "/api/v1/manifest/updates/{update_id}/approve",
        response_model=UpdateResponse,
        description=signed_description,
        responses=signed_errors,
    )
    async def approve_update(update_id: str, request: Request) -> UpdateResponse:
        user = await _user(request, await request.body())
        return _update(await run_in_threadpool(core.approve_update, user, update_id))

    @app.post(
        "/api/v1/manifest/updates/{update_id}/cancel",
        status_code=204,
        response_class=Response,
        description=signed_description,
        responses=signed_errors,
    )
    async def cancel_update(update_id: str, request: Request) -> Response:
        user = await _user(request, await request.body())
        await run_in_threadpool(core.cancel_update, user, update_id)
        return Response(status_code=204)

    @app.post(
        "/api/v1/packages/{package}/min-isv-svn",
        response_model=UpdateResponse,
        description=signed_description + " Raises a package's min_isv_svn (never lowers it).",
        responses=signed_errors,
        openapi_extra=_json_request_body(PackageSVNRequest),
    )
    async def raise_package_svn(package: str, request: Request) -> UpdateResponse:
        body = await request.body()
        user = await _user(request, body)
        parsed = _parse_body(PackageSVNRequest, body)
        status = await run_in_threadpool(core.raise_min_isv_svn, user, package, parsed.min_isv_svn)
        return _update(status)

    service_description = (
        "Signed by a service instance with its activation key: Authorization: "
        "Sealpod-Service-Signature (sealpod.coordinator.auth)."
    )

    async def _service(request: Request, body: bytes) -> tuple[str, str]:
        target = _target(request)
        return await run_in_threadpool(
            core.authenticate_service,
            request.headers.get("authorization"),
            method=request.method,
            target=target,
            body=body,
        )

    def _tag(tag: VolumeTag) -> VolumeTagResponse:
        return VolumeTagResponse(
            volume=tag.volume,
            version=tag.version,
            tag=None if tag.tag is None else tag.tag.hex(),
        )

    @app.get(
        "/api/v1/volumes/{name}/tag",
        response_model=VolumeTagResponse,
        description=service_description,
        responses=signed_errors,
    )
    async def get_volume_tag(name: str, request: Request) -> VolumeTagResponse:
        service, instance = await _service(request, await request.body())
        return _tag(await run_in_threadpool(core.volume_tag, service, instance, name))

    @app.put(
        "/api/v1/volumes/{name}/tag",
        response_model=VolumeTagResponse,
        description=service_description + " Compare-and-swap: expected_version must be current.",
        responses=signed_errors,
        openapi_extra=_json_request_body(VolumeTagRequest),
    )
    async def set_volume_tag(name: str, request: Request) -> VolumeTagResponse:
        body = await request.body()
        service, instance = await _service(request, body)
        parsed = _parse_body(VolumeTagRequest, body)
        tag = await run_in_threadpool(
            lambda: core.set_volume_tag(
                service,
                instance,
                name,
                expected_version=parsed.expected_version,
                tag=bytes.fromhex(parsed.tag),
            )
        )
        return _tag(tag)

    @app.post(
        "/api/v1/volumes/{name}/reset",
        response_model=VolumeTagResponse,
        description=signed_description + " Clears the volume's pinned tag.",
        responses=signed_errors,
    )
    async def reset_volume(name: str, request: Request) -> VolumeTagResponse:
        user = await _user(request, await request.body())
        return _tag(await run_in_threadpool(core.reset_volume, user, name))

    @app.get("/api/v1/audit", response_model=AuditResponse, responses=_ERRORS)
    def audit(
        start: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> AuditResponse:
        entries, head = core.audit_entries(start=start, limit=limit)
        return AuditResponse(
            entries=[AuditEntryModel.model_validate(entry.to_dict()) for entry in entries],
            head=None if head is None else AuditHeadModel(count=head.count, hash=head.hash),
        )

    return app
