"""Rendering a service's files, environment and argv from the manifest's templates.

Templates are Jinja2, run in a sandbox that is stricter than Jinja's own:

* Attribute access is an allow-list: ``sealpod.<built-in>`` and ``.cert``, ``.private_key``,
  ``.public_key`` of a certificate secret. Nothing else, not even methods of ``str``; so
  ``{{ secrets.__class__ }}`` and friends are refused, and the ``cryptography`` objects behind
  the values are out of reach.
* A template is an expression language: text, ``{{ ... }}``, ``{% if %}``, filters and tests.
  Loops, assignments, macros, calls, includes and imports are refused before anything runs,
  so rendering cost is bounded by the template's size, and the secrets a service receives are
  known statically (``secrets.NAME`` or ``secrets["NAME"]`` only): see
  :func:`secrets_referenced`. Sequence repetition and output sizes are capped.
* Undefined values are errors (``StrictUndefined``), autoescape is off, and a value that is not
  text must go through a filter: ``pem`` (certificate, chain, key), ``hex``/``base64`` (a key
  or plain secret), ``raw`` (the bytes or text as is). ``{{ secrets.db_key }}`` alone is an
  error, never ``b'...'``.

:func:`dry_run` renders every template of a manifest with stand-in values of the right types,
so a broken manifest is refused before anything runs. Error messages never contain secret
values: failures while rendering real secrets name the template and the kind of error only.
"""

from __future__ import annotations

import base64
import datetime
import functools
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import NameOID
from jinja2 import Template, TemplateError, nodes
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context, StrictUndefined, Undefined
from jinja2.sandbox import SandboxedEnvironment
from jinja2.utils import missing

from sealpod.manifest._problems import Loc, ManifestProblem, ManifestValidationError
from sealpod.manifest.models import Manifest, Secret

__all__ = [
    "BUILTIN_NAMES",
    "Certificate",
    "CertificateChain",
    "CertificateSecret",
    "PrivateKey",
    "PublicKey",
    "RenderContext",
    "RenderedService",
    "SecretBytes",
    "TemplateValueError",
    "dry_run",
    "dry_run_problems",
    "render_service",
    "secrets_referenced",
    "template_problems",
]

_logger = logging.getLogger(__name__)

#: ``sealpod.<name>`` built-ins available to every template.
BUILTIN_NAMES: Final = frozenset(
    {"cert_chain", "private_key", "mesh_root", "coordinator_root", "service", "instance"}
)
_VARIABLES: Final = frozenset({"secrets", "sealpod"})

#: Longest string/list ``*`` may produce, and most bytes one template may render.
MAX_REPEAT: Final = 4096
MAX_OUTPUT: Final = 1 << 20
_MAX_POW_BITS: Final = 4096

# Jinja filters besides ours that a template may use: all are linear in their input.
_SAFE_BUILTIN_FILTERS: Final = (
    "default",
    "d",
    "lower",
    "upper",
    "trim",
    "first",
    "last",
    "length",
    "count",
    "join",
    "tojson",
)

# The node types a template may contain: text, output, if, and expressions without calls.
_ALLOWED_NODES: Final[tuple[type[nodes.Node], ...]] = (
    nodes.Template,
    nodes.Output,
    nodes.TemplateData,
    nodes.If,
    nodes.Const,
    nodes.Name,
    nodes.Getattr,
    nodes.Getitem,
    nodes.Slice,
    nodes.Filter,
    nodes.Test,
    nodes.CondExpr,
    nodes.Compare,
    nodes.Operand,
    nodes.And,
    nodes.Or,
    nodes.Not,
    nodes.Neg,
    nodes.Pos,
    nodes.Concat,
    nodes.Add,
    nodes.Sub,
    nodes.Mul,
    nodes.Div,
    nodes.FloorDiv,
    nodes.Mod,
    nodes.Pow,
    nodes.List,
    nodes.Tuple,
    nodes.Dict,
    nodes.Pair,
    nodes.Keyword,
)

_TAG_NAMES: Final[dict[type[nodes.Node], str]] = {
    nodes.For: "{% for %}",
    nodes.Assign: "{% set %}",
    nodes.AssignBlock: "{% set %}",
    nodes.With: "{% with %}",
    nodes.Macro: "{% macro %}",
    nodes.CallBlock: "{% call %}",
    nodes.FilterBlock: "{% filter %}",
    nodes.Include: "{% include %}",
    nodes.Import: "{% import %}",
    nodes.FromImport: "{% from ... import %}",
    nodes.Extends: "{% extends %}",
    nodes.Block: "{% block %}",
    nodes.Call: "a function call",
}


class TemplateValueError(TypeError):
    """A template used a value the wrong way (e.g. ``hex`` of a certificate)."""


# --- values a template sees -------------------------------------------------------------------


def _no_text(value: object) -> NoReturn:
    raise TemplateValueError(
        f"{_describe(value)} is not text: use a filter (pem, hex, base64 or raw)"
    )


@dataclass(frozen=True, slots=True, repr=False)
class SecretBytes:
    """The value of a ``symmetric-key`` or ``plain`` secret. Its repr hides the bytes."""

    data: bytes
    kind: str = "symmetric-key"

    def __repr__(self) -> str:
        return f"SecretBytes(kind={self.kind!r}, <{len(self.data)} bytes hidden>)"

    def __str__(self) -> str:
        _no_text(self)

    def __format__(self, spec: str) -> str:
        _no_text(self)


@dataclass(frozen=True, slots=True)
class Certificate:
    """An X.509 certificate; ``pem`` renders it."""

    value: x509.Certificate

    def __str__(self) -> str:
        _no_text(self)

    def __format__(self, spec: str) -> str:
        _no_text(self)


@dataclass(frozen=True, slots=True)
class CertificateChain:
    """Certificates, leaf first; ``pem`` renders all of them in order."""

    certificates: tuple[x509.Certificate, ...]

    def __str__(self) -> str:
        _no_text(self)

    def __format__(self, spec: str) -> str:
        _no_text(self)


@dataclass(frozen=True, slots=True, repr=False)
class PrivateKey:
    """A private key; ``pem`` renders it as unencrypted PKCS#8. Its repr hides it."""

    value: CertificateIssuerPrivateKeyTypes

    def __repr__(self) -> str:
        return f"PrivateKey(<{type(self.value).__name__} hidden>)"

    def __str__(self) -> str:
        _no_text(self)

    def __format__(self, spec: str) -> str:
        _no_text(self)


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A public key; ``pem`` renders it as SubjectPublicKeyInfo."""

    value: CertificatePublicKeyTypes

    def __str__(self) -> str:
        _no_text(self)

    def __format__(self, spec: str) -> str:
        _no_text(self)


@dataclass(frozen=True, slots=True, repr=False)
class CertificateSecret:
    """The value of a ``cert-*`` secret: ``.cert``, ``.private_key`` and ``.public_key``."""

    cert: Certificate
    private_key: PrivateKey

    @property
    def public_key(self) -> PublicKey:
        """The certificate's public key."""
        return PublicKey(self.cert.value.public_key())

    def __repr__(self) -> str:
        return "CertificateSecret(<hidden>)"

    def __str__(self) -> str:
        _no_text(self)

    def __format__(self, spec: str) -> str:
        _no_text(self)


SecretValue = SecretBytes | CertificateSecret


@dataclass(frozen=True, kw_only=True)
class RenderContext:
    """Everything one instance's templates may use (the coordinator fills it at activation).

    ``cert_chain`` and ``private_key`` are the instance's own activation certificate (leaf
    first, up to the mesh root) and key; ``secrets`` holds the values of this instance's
    secrets (shared ones and its own per-instance ones).
    """

    instance: str
    cert_chain: CertificateChain
    private_key: PrivateKey
    mesh_root: Certificate
    coordinator_root: Certificate
    secrets: Mapping[str, SecretValue] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, slots=True, repr=False)
class RenderedService:
    """What a service instance receives: file contents, environment and argv."""

    files: dict[str, bytes]
    env: dict[str, str]
    argv: list[str] | None

    def __repr__(self) -> str:
        # Rendered values contain secrets: show only their names.
        return (
            f"RenderedService(files={sorted(self.files)}, env={sorted(self.env)}, "
            f"argv={'None' if self.argv is None else f'<{len(self.argv)} items>'})"
        )


class _Secrets:
    """``secrets``: item access only, so names cannot collide with Python attributes."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, SecretValue]) -> None:
        self._values = dict(values)

    def __getitem__(self, name: str) -> SecretValue:
        return self._values[name]

    def __repr__(self) -> str:
        return f"<secrets {sorted(self._values)}>"

    def __str__(self) -> str:
        _no_text(self)


@dataclass(frozen=True, slots=True, repr=False)
class _Builtins:
    """``sealpod``: the built-in values."""

    cert_chain: CertificateChain
    private_key: PrivateKey
    mesh_root: Certificate
    coordinator_root: Certificate
    service: str
    instance: str

    def __repr__(self) -> str:
        return f"<sealpod built-ins of {self.service}/{self.instance}>"

    def __str__(self) -> str:
        _no_text(self)


_ATTRIBUTES: Final[dict[type, frozenset[str]]] = {
    _Builtins: BUILTIN_NAMES,
    CertificateSecret: frozenset({"cert", "private_key", "public_key"}),
}


def _require_defined(value: object) -> None:
    """Raise the undefined value's own error (unknown name, or a refused attribute)."""
    if isinstance(value, Undefined):
        str(value)  # StrictUndefined raises here, with the right exception class


def _describe(value: object) -> str:
    if isinstance(value, SecretBytes):
        return f"a {value.kind} secret"
    if isinstance(value, CertificateSecret):
        return "a certificate secret (use .cert, .private_key or .public_key)"
    if isinstance(value, Certificate):
        return "a certificate"
    if isinstance(value, CertificateChain):
        return "a certificate chain"
    if isinstance(value, PrivateKey):
        return "a private key"
    if isinstance(value, PublicKey):
        return "a public key"
    if isinstance(value, _Secrets):
        return "the secrets namespace"
    if isinstance(value, _Builtins):
        return "the sealpod namespace"
    if isinstance(value, str):
        return "text"
    if isinstance(value, bytes):
        return "bytes"
    return f"a value of type {type(value).__name__}"


# --- filters ----------------------------------------------------------------------------------


def _filter_pem(value: object) -> str:
    _require_defined(value)
    if isinstance(value, Certificate):
        return value.value.public_bytes(serialization.Encoding.PEM).decode("ascii")
    if isinstance(value, CertificateChain):
        return "".join(
            cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
            for cert in value.certificates
        )
    if isinstance(value, PrivateKey):
        return value.value.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii")
    if isinstance(value, PublicKey):
        return value.value.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")
    raise TemplateValueError(
        f'filter "pem" needs a certificate, a chain or a key, not {_describe(value)}'
    )


def _secret_bytes(value: object, name: str) -> bytes:
    _require_defined(value)
    if isinstance(value, SecretBytes):
        return value.data
    if isinstance(value, bytes):
        return value
    raise TemplateValueError(
        f'filter "{name}" needs a key or plain secret, not {_describe(value)}'
        + (" (use pem)" if isinstance(value, Certificate | CertificateChain | PrivateKey) else "")
    )


def _filter_hex(value: object) -> str:
    return _secret_bytes(value, "hex").hex()


def _filter_base64(value: object) -> str:
    return base64.b64encode(_secret_bytes(value, "base64")).decode("ascii")


def _filter_raw(value: object) -> str:
    _require_defined(value)
    if isinstance(value, str):
        return value
    # Bytes travel through the template as text with surrogate escapes, so binary content
    # reaches a file byte for byte; env/argv refuse it (see _text_value).
    return _secret_bytes(value, "raw").decode("utf-8", "surrogateescape")


# --- the sandbox -------------------------------------------------------------------------------


class _Undefined(StrictUndefined):
    """StrictUndefined with messages in manifest terms."""

    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        if self._undefined_hint:
            return self._undefined_hint
        obj, name = self._undefined_obj, self._undefined_name
        if obj is missing:
            return f'unknown variable "{name}"'
        if isinstance(obj, _Secrets):
            return f'unknown secret "{name}"'
        if isinstance(obj, _Builtins):
            return f'unknown built-in "sealpod.{name}"'
        return f'{_describe(obj)} has no attribute or item "{name}"'


def _finalize(value: object) -> object:
    _require_defined(value)
    # Every {{ ... }} result passes here: only plain values may be printed without a filter.
    if isinstance(value, str | int | float | bool | type(None)):
        return value
    if isinstance(value, list | tuple | dict):
        # Python's repr of a container is not a configuration format.
        raise TemplateValueError(
            f"a {type(value).__name__} is not text: use the tojson or join filter"
        )
    _no_text(value)


class _Sandbox(SandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%"})

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        return attr in _ATTRIBUTES.get(type(obj), frozenset())

    def is_safe_callable(self, obj: Any) -> bool:
        return False

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            _check_repeat(left, right)
            _check_repeat(right, left)
            if (
                _is_int(left)
                and _is_int(right)
                and (abs(left).bit_length() + abs(right).bit_length() > 2 * _MAX_POW_BITS)
            ):
                raise SecurityError("integer product too large")
        elif operator == "**":
            if (
                _is_int(left)
                and _is_int(right)
                and right > 0
                and (max(abs(left).bit_length(), 1) * right > _MAX_POW_BITS)
            ):
                raise SecurityError("power too large")
        elif operator == "%" and isinstance(left, str):
            raise SecurityError('string formatting with "%" is not allowed in templates')
        return super().call_binop(context, operator, left, right)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_repeat(sequence: object, count: object) -> None:
    if isinstance(sequence, str | list | tuple) and _is_int(count):
        if len(sequence) * max(int(count), 0) > MAX_REPEAT:  # type: ignore[call-overload]
            raise SecurityError(f"repetition longer than {MAX_REPEAT} items")


@functools.cache
def _environment() -> _Sandbox:
    env = _Sandbox(
        autoescape=False,
        undefined=_Undefined,
        finalize=_finalize,
        keep_trailing_newline=True,  # a file's content is exactly what the template says
        auto_reload=False,
    )
    builtin_filters = env.filters
    env.filters = {name: builtin_filters[name] for name in _SAFE_BUILTIN_FILTERS}
    env.filters.update(pem=_filter_pem, hex=_filter_hex, base64=_filter_base64, raw=_filter_raw)
    env.globals.clear()
    return env


# --- static checks ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Analysis:
    problems: tuple[str, ...]
    secrets: frozenset[str]


def _walk(node: nodes.Node) -> Iterator[nodes.Node]:
    # Iterative: a template's syntax tree can be as deep as the template is long.
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(reversed(list(current.iter_child_nodes())))


@functools.lru_cache(maxsize=1024)
def _compiled(source: str) -> Template:
    # Templates are immutable once compiled and safe to share between threads.
    return _environment().from_string(source)


@functools.lru_cache(maxsize=4096)
def _analyse(source: str) -> _Analysis:
    """Parse ``source`` and check what it may do; returns problems (messages) and secrets."""
    env = _environment()
    try:
        tree = env.parse(source)
    except TemplateError as exc:
        line = getattr(exc, "lineno", None)
        where = f" (line {line})" if line else ""
        return _Analysis((f"template syntax error{where}: {exc.message}",), frozenset())
    except RecursionError:
        return _Analysis(("template is nested too deeply",), frozenset())
    problems: list[str] = []
    for node in _walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            what = _TAG_NAMES.get(type(node), type(node).__name__)
            problems.append(f"{what} is not allowed in templates (line {node.lineno})")
    if problems:
        # Names inside a refused construct (loop variables...) would only add noise.
        return _Analysis(tuple(problems), frozenset())
    referenced: set[str] = set()
    namespace_uses: set[int] = set()  # ids of Name nodes used as secrets.X / sealpod.X
    for node in _walk(tree):
        if isinstance(node, nodes.Filter) and node.name not in env.filters:
            problems.append(f'unknown filter "{node.name}" (line {node.lineno})')
        if not isinstance(node, nodes.Getattr | nodes.Getitem):
            continue
        target = node.node
        if not isinstance(target, nodes.Name) or target.name not in _VARIABLES:
            continue
        if isinstance(node, nodes.Getattr):
            key: object = node.attr
        elif isinstance(node.arg, nodes.Const):
            key = node.arg.value
        else:
            continue
        if not isinstance(key, str):
            continue
        namespace_uses.add(id(target))
        if target.name == "secrets":
            referenced.add(key)
        elif key not in BUILTIN_NAMES:
            problems.append(f'unknown built-in "sealpod.{key}" (line {node.lineno})')
    for node in tree.find_all(nodes.Name):
        if node.name not in _VARIABLES:
            problems.append(f'unknown variable "{node.name}" (line {node.lineno})')
        elif id(node) not in namespace_uses:
            problems.append(
                f'"{node.name}" must be followed by a literal name '
                f'({node.name}.NAME or {node.name}["NAME"]) (line {node.lineno})'
            )
    return _Analysis(tuple(problems), frozenset(referenced))


def _templates(manifest: Manifest, service: str) -> Iterator[tuple[Loc, str]]:
    spec = manifest.services[service]
    base: Loc = ("services", service)
    for path, source in spec.files.items():
        yield (*base, "files", path), source
    for name, source in spec.env.items():
        yield (*base, "env", name), source
    if spec.argv is not None:
        for index, source in enumerate(spec.argv):
            yield (*base, "argv", index), source


def template_problems(manifest: Manifest) -> list[ManifestProblem]:
    """Static checks of every template: syntax, allowed constructs, names, known secrets.

    Returns:
        every problem, each at the template's path (empty when all templates are fine).
    """
    problems: list[ManifestProblem] = []
    for service in manifest.services:
        for loc, source in _templates(manifest, service):
            analysis = _analyse(source)
            problems += [ManifestProblem(loc, message) for message in analysis.problems]
            problems += [
                ManifestProblem(loc, f'unknown secret "{name}"')
                for name in sorted(analysis.secrets)
                if name not in manifest.secrets
            ]
    return problems


def secrets_referenced(manifest: Manifest, service: str) -> frozenset[str]:
    """The names of the secrets ``service``'s templates use (all of its files, env and argv).

    Raises:
        KeyError: ``service`` is not in the manifest.
    """
    names: set[str] = set()
    for _loc, source in _templates(manifest, service):
        names |= _analyse(source).secrets
    return frozenset(names)


# --- rendering -------------------------------------------------------------------------------


class _RenderError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _render(source: str, builtins: _Builtins, secrets: _Secrets, *, reveal: bool) -> str:
    """Render one template; ``reveal`` allows third-party error text (stand-in values only)."""
    analysis = _analyse(source)
    if analysis.problems:
        raise _RenderError(analysis.problems[0])
    try:
        template = _compiled(source)
        chunks: list[str] = []
        size = 0
        for chunk in template.generate(sealpod=builtins, secrets=secrets):
            size += len(chunk)
            if size > MAX_OUTPUT:
                raise _RenderError(f"template output exceeds {MAX_OUTPUT} characters")
            chunks.append(chunk)
        return "".join(chunks)
    except _RenderError:
        raise
    except TemplateValueError as exc:
        raise _RenderError(str(exc)) from exc
    except SecurityError as exc:
        raise _RenderError(f"refused by the template sandbox: {exc}") from exc
    except TemplateError as exc:
        # Jinja's own messages (undefined values, unknown filters) name variables, not values.
        raise _RenderError(str(exc.message or type(exc).__name__)) from exc
    except Exception as exc:
        detail = f"{type(exc).__name__}: {exc}" if reveal else type(exc).__name__
        raise _RenderError(f"template failed ({detail})") from exc


def _text_value(rendered: str) -> str:
    """Environment values and argv items must be UTF-8 text without NUL."""
    try:
        rendered.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _RenderError(
            "value is not UTF-8 text (binary secret rendered with raw: use hex or base64)"
        ) from exc
    if "\0" in rendered:
        raise _RenderError("value contains a NUL character")
    return rendered


def _file_bytes(rendered: str) -> bytes:
    try:
        return rendered.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise _RenderError("file content is not encodable") from exc


def _render_all(
    manifest: Manifest, service: str, builtins: _Builtins, secrets: _Secrets, *, reveal: bool
) -> tuple[RenderedService | None, list[ManifestProblem]]:
    spec = manifest.services[service]
    problems: list[ManifestProblem] = []
    files: dict[str, bytes] = {}
    env: dict[str, str] = {}
    argv: list[str] | None = None if spec.argv is None else []
    for loc, source in _templates(manifest, service):
        try:
            rendered = _render(source, builtins, secrets, reveal=reveal)
            if loc[2] == "files":
                files[str(loc[3])] = _file_bytes(rendered)
            elif loc[2] == "env":
                env[str(loc[3])] = _text_value(rendered)
            elif argv is not None:
                argv.append(_text_value(rendered))
        except _RenderError as exc:
            problems.append(ManifestProblem(loc, exc.message))
    if problems:
        return None, problems
    return RenderedService(files=files, env=env, argv=argv), []


def render_service(manifest: Manifest, service: str, context: RenderContext) -> RenderedService:
    """Render ``service``'s files, env and argv for one instance.

    Raises:
        ManifestValidationError: ``service`` is unknown, or a template failed (every failing
            template is listed with its path; messages never contain secret values).
    """
    if service not in manifest.services:
        raise ManifestValidationError(
            [ManifestProblem(("services",), f'unknown service "{service}"')]
        )
    builtins = _Builtins(
        cert_chain=context.cert_chain,
        private_key=context.private_key,
        mesh_root=context.mesh_root,
        coordinator_root=context.coordinator_root,
        service=service,
        instance=context.instance,
    )
    rendered, problems = _render_all(
        manifest, service, builtins, _Secrets(context.secrets), reveal=False
    )
    if rendered is None:
        raise ManifestValidationError(problems)
    return rendered


# --- dry run -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _StandIns:
    key: PrivateKey
    cert: Certificate


@functools.cache
def _stand_ins() -> _StandIns:
    # One throw-away P-256 key and self-signed certificate stand in for every certificate and
    # key: the filters care about the value's type, not the algorithm.
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sealpod dry-run stand-in")])
    now = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return _StandIns(key=PrivateKey(key), cert=Certificate(cert))


def _stand_in_secret(secret: Secret) -> SecretValue:
    stand_ins = _stand_ins()
    if secret.type == "symmetric-key":
        # 0xff is never valid UTF-8, so "raw" of a key in env/argv fails the dry run every time.
        return SecretBytes(b"\xff" * ((secret.effective_size or 256) // 8), kind="symmetric-key")
    if secret.type == "plain":
        return SecretBytes(b"stand-in plain secret", kind="plain")
    return CertificateSecret(cert=stand_ins.cert, private_key=stand_ins.key)


def dry_run_problems(
    manifest: Manifest, services: Iterable[str] | None = None
) -> list[ManifestProblem]:
    """Render every template with stand-in values; return every problem with its path."""
    stand_ins = _stand_ins()
    secrets = _Secrets(
        {name: _stand_in_secret(secret) for name, secret in manifest.secrets.items()}
    )
    problems: list[ManifestProblem] = []
    for service in manifest.services if services is None else services:
        builtins = _Builtins(
            cert_chain=CertificateChain((stand_ins.cert.value, stand_ins.cert.value)),
            private_key=stand_ins.key,
            mesh_root=stand_ins.cert,
            coordinator_root=stand_ins.cert,
            service=service,
            instance="dry-run-0",
        )
        problems += _render_all(manifest, service, builtins, secrets, reveal=True)[1]
    return problems


def dry_run(manifest: Manifest) -> None:
    """Render every template of every service with stand-in values of the right types.

    Raises:
        ManifestValidationError: a template has a syntax error, uses an unknown variable,
            secret or filter, applies a filter to the wrong type, touches an attribute it may
            not, or produces text where bytes cannot go (every problem, with its path).
    """
    problems = dry_run_problems(manifest)
    if problems:
        raise ManifestValidationError(problems)
