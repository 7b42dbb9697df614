"""Template rendering, filters, the dry run and the template sandbox."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from sealpod.manifest import (
    Certificate,
    CertificateChain,
    CertificateSecret,
    Manifest,
    ManifestValidationError,
    PrivateKey,
    RenderContext,
    SecretBytes,
    check_manifest,
    dry_run,
    render_service,
    secrets_referenced,
    validate_manifest,
)
from sealpod.manifest.templates import dry_run_problems

MR = "c" * 64
KEY_BYTES = bytes([0x00, 0x01, 0xFE, 0xFF])
PLAIN_VALUE = b"hunter2-caf\xc3\xa9"  # "hunter2-café" in UTF-8


def _cert(
    name: str,
    key: Any,
    issuer: tuple[str, Any] | None = None,
    ca: bool = False,
) -> x509.Certificate:
    issuer_name, issuer_key = issuer if issuer else (name, key)
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    algorithm = None if isinstance(issuer_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(issuer_key, algorithm)


class PKI:
    """A coordinator root, a mesh CA, an instance leaf and a certificate secret."""

    def __init__(self) -> None:
        self.root_key = ec.generate_private_key(ec.SECP384R1())
        self.root = _cert("coordinator root", self.root_key, ca=True)
        self.mesh_key = ec.generate_private_key(ec.SECP256R1())
        self.mesh = _cert("mesh", self.mesh_key, ("coordinator root", self.root_key), ca=True)
        self.leaf_key = ec.generate_private_key(ec.SECP256R1())
        self.leaf = _cert("web", self.leaf_key, ("mesh", self.mesh_key))
        self.tls_key = ed25519.Ed25519PrivateKey.generate()
        self.tls = _cert("tls", self.tls_key, ("mesh", self.mesh_key))

    def context(self, secrets: Mapping[str, Any] | None = None) -> RenderContext:
        default = {
            "db_key": SecretBytes(KEY_BYTES, kind="symmetric-key"),
            "token": SecretBytes(PLAIN_VALUE, kind="plain"),
            "tls": CertificateSecret(
                cert=Certificate(self.tls), private_key=PrivateKey(self.tls_key)
            ),
        }
        return RenderContext(
            instance="web-7",
            cert_chain=CertificateChain((self.leaf, self.mesh)),
            private_key=PrivateKey(self.leaf_key),
            mesh_root=Certificate(self.mesh),
            coordinator_root=Certificate(self.root),
            secrets=default if secrets is None else secrets,
        )


@pytest.fixture(scope="module")
def pki() -> PKI:
    return PKI()


def _data(
    files: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    argv: list[str] | None = None,
) -> dict[str, Any]:
    service: dict[str, Any] = {"package": "web", "files": dict(files or {}), "env": dict(env or {})}
    if argv is not None:
        service["argv"] = argv
    return {
        "version": 1,
        "packages": {"web": {"mrenclave": [MR]}},
        "services": {"web": service},
        "secrets": {
            "db_key": {"type": "symmetric-key", "size": 256},
            "token": {"type": "plain", "user_defined": True},
            "tls": {"type": "cert-ed25519", "certificate": {"common_name": "tls"}},
        },
    }


def _render_env(pki: PKI, template: str) -> str:
    manifest = validate_manifest(_data(env={"V": template}))
    return render_service(manifest, "web", pki.context()).env["V"]


def _render_file(pki: PKI, template: str) -> bytes:
    manifest = validate_manifest(_data(files={"/f": template}))
    return render_service(manifest, "web", pki.context()).files["/f"]


def _unchecked(**kwargs: Any) -> Manifest:
    """A manifest that skipped the static checks and dry run: exercises the runtime sandbox."""
    return Manifest.model_validate(_data(**kwargs))


def _problem(template: str) -> tuple[str, str]:
    problems = check_manifest(_data(env={"V": template})).problems
    assert len(problems) == 1, problems
    return problems[0].path, problems[0].message


# --- filters ---------------------------------------------------------------------------------


def test_pem_of_certificate_is_that_certificate(pki: PKI) -> None:
    text = _render_env(pki, "{{ sealpod.mesh_root | pem }}")
    assert text.startswith("-----BEGIN CERTIFICATE-----\n")
    assert x509.load_pem_x509_certificate(text.encode()) == pki.mesh


def test_pem_of_chain_gives_every_certificate_leaf_first(pki: PKI) -> None:
    text = _render_file(pki, "{{ sealpod.cert_chain | pem }}")
    certs = x509.load_pem_x509_certificates(text)
    assert certs == [pki.leaf, pki.mesh]


def test_pem_of_private_key_is_pkcs8(pki: PKI) -> None:
    text = _render_file(pki, "{{ sealpod.private_key | pem }}")
    assert text.startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS#8, RFC 7468 section 10
    key = serialization.load_pem_private_key(text, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.private_numbers() == pki.leaf_key.private_numbers()


def test_pem_of_certificate_secret_parts(pki: PKI) -> None:
    cert = _render_env(pki, "{{ secrets.tls.cert | pem }}")
    key = _render_env(pki, "{{ secrets.tls.private_key | pem }}")
    public = _render_env(pki, "{{ secrets.tls.public_key | pem }}")
    assert x509.load_pem_x509_certificate(cert.encode()) == pki.tls
    loaded = serialization.load_pem_private_key(key.encode(), password=None)
    assert isinstance(loaded, ed25519.Ed25519PrivateKey)
    assert public.startswith("-----BEGIN PUBLIC KEY-----\n")
    raw_public = pki.tls_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    loaded_public = serialization.load_pem_public_key(public.encode())
    assert isinstance(loaded_public, ed25519.Ed25519PublicKey)
    assert (
        loaded_public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        == raw_public
    )


def test_coordinator_root_is_the_coordinator_root(pki: PKI) -> None:
    text = _render_env(pki, "{{ sealpod.coordinator_root | pem }}")
    assert x509.load_pem_x509_certificate(text.encode()) == pki.root


def test_hex_filter(pki: PKI) -> None:
    assert _render_env(pki, "{{ secrets.db_key | hex }}") == "0001feff"


def test_base64_filter(pki: PKI) -> None:
    assert _render_env(pki, "{{ secrets.db_key | base64 }}") == "AAH+/w=="


def test_raw_filter_of_plain_secret_gives_its_text(pki: PKI) -> None:
    assert _render_env(pki, "{{ secrets.token | raw }}") == "hunter2-café"


def test_raw_filter_of_text_is_identity(pki: PKI) -> None:
    assert _render_env(pki, "{{ sealpod.service | raw }}") == "web"


def test_raw_binary_key_reaches_a_file_byte_for_byte(pki: PKI) -> None:
    assert _render_file(pki, "{{ secrets.db_key | raw }}") == KEY_BYTES


def test_raw_binary_key_in_env_is_refused_at_render(pki: PKI) -> None:
    manifest = _unchecked(env={"K": "{{ secrets.db_key | raw }}"})
    with pytest.raises(ManifestValidationError) as info:
        render_service(manifest, "web", pki.context())
    assert info.value.problems[0].path == "services.web.env.K"
    assert "not UTF-8 text" in info.value.problems[0].message


def test_plain_secret_with_nul_in_env_is_refused_at_render(pki: PKI) -> None:
    manifest = validate_manifest(_data(env={"T": "{{ secrets.token | raw }}"}))
    context = pki.context({"token": SecretBytes(b"a\x00b", kind="plain")})
    with pytest.raises(ManifestValidationError) as info:
        render_service(manifest, "web", context)
    assert str(info.value) == "services.web.env.T: value contains a NUL character"


def test_builtins_service_and_instance(pki: PKI) -> None:
    assert _render_env(pki, "{{ sealpod.service }}/{{ sealpod.instance }}") == "web/web-7"


def test_safe_builtin_filters_work(pki: PKI) -> None:
    assert _render_env(pki, '{{ sealpod.service | upper }}{{ "" | default("x", true) }}') == "WEBx"
    assert _render_env(pki, "{{ secrets.token | raw | tojson }}") == '"hunter2-caf\\u00e9"'


def test_if_block_renders(pki: PKI) -> None:
    template = '{% if sealpod.instance == "web-7" %}seven{% else %}other{% endif %}'
    assert _render_env(pki, template) == "seven"


# --- render_service --------------------------------------------------------------------------


def test_render_service_gives_files_env_and_argv(pki: PKI) -> None:
    manifest = validate_manifest(
        _data(
            files={"/etc/key.hex": "{{ secrets.db_key | hex }}\n"},
            env={"TOKEN": "{{ secrets.token | raw }}", "PLAIN": "literal"},
            argv=["/bin/app", "--instance={{ sealpod.instance }}"],
        )
    )
    rendered = render_service(manifest, "web", pki.context())
    assert rendered.files == {"/etc/key.hex": b"0001feff\n"}  # trailing newline kept
    assert rendered.env == {"TOKEN": "hunter2-café", "PLAIN": "literal"}
    assert rendered.argv == ["/bin/app", "--instance=web-7"]


def test_no_argv_means_the_package_argv(pki: PKI) -> None:
    rendered = render_service(validate_manifest(_data()), "web", pki.context())
    assert rendered.argv is None


def test_unknown_service_is_refused(pki: PKI) -> None:
    with pytest.raises(ManifestValidationError, match='unknown service "api"'):
        render_service(validate_manifest(_data()), "api", pki.context())


def test_secrets_referenced_lists_what_templates_use() -> None:
    manifest = validate_manifest(
        _data(
            files={"/a": "{{ secrets.tls.cert | pem }}"},
            env={"B": '{{ secrets["token"] | raw }}'},
            argv=["{{ secrets.db_key | hex }}"],
        )
    )
    assert secrets_referenced(manifest, "web") == {"tls", "token", "db_key"}


def test_rendered_values_are_not_in_reprs(pki: PKI) -> None:
    manifest = validate_manifest(_data(env={"T": "{{ secrets.token | raw }}"}))
    context = pki.context()
    rendered = render_service(manifest, "web", context)
    for text in (repr(rendered), repr(context), repr(context.secrets["token"])):
        assert "hunter2" not in text
    assert "hunter2" not in repr(context.private_key)


def test_render_error_does_not_reveal_secret_value(pki: PKI) -> None:
    manifest = _unchecked(env={"T": "{{ (secrets.token | raw).nope }}"})
    with pytest.raises(ManifestValidationError) as info:
        render_service(manifest, "web", pki.context())
    assert "hunter2" not in str(info.value)
    assert info.value.problems[0].path == "services.web.env.T"


# --- dry run: broken templates are refused with their path -----------------------------------


def test_dry_run_accepts_a_good_manifest() -> None:
    manifest = validate_manifest(_data(env={"A": "{{ secrets.db_key | hex }}"}))
    dry_run(manifest)
    assert dry_run_problems(manifest) == []


def test_syntax_error_is_refused() -> None:
    path, message = _problem("{{ secrets.db_key | hex }")
    assert path == "services.web.env.V"
    assert message.startswith("template syntax error (line 1)")


def test_unknown_variable_is_refused() -> None:
    assert _problem("{{ password }}") == (
        "services.web.env.V",
        'unknown variable "password" (line 1)',
    )


def test_unknown_builtin_is_refused() -> None:
    assert _problem("{{ sealpod.root_key | pem }}") == (
        "services.web.env.V",
        'unknown built-in "sealpod.root_key" (line 1)',
    )


def test_unknown_filter_is_refused() -> None:
    assert _problem("{{ secrets.db_key | b64 }}") == (
        "services.web.env.V",
        'unknown filter "b64" (line 1)',
    )


def test_hex_of_a_certificate_is_refused() -> None:
    assert _problem("{{ secrets.tls.cert | hex }}") == (
        "services.web.env.V",
        'filter "hex" needs a key or plain secret, not a certificate (use pem)',
    )


def test_pem_of_a_key_secret_is_refused() -> None:
    assert _problem("{{ secrets.db_key | pem }}") == (
        "services.web.env.V",
        'filter "pem" needs a certificate, a chain or a key, not a symmetric-key secret',
    )


def test_pem_of_a_whole_certificate_secret_is_refused() -> None:
    path, message = _problem("{{ secrets.tls | pem }}")
    assert path == "services.web.env.V"
    assert "use .cert, .private_key or .public_key" in message


def test_attribute_of_a_key_secret_is_refused() -> None:
    assert _problem("{{ secrets.db_key.cert | pem }}") == (
        "services.web.env.V",
        'a symmetric-key secret has no attribute or item "cert"',
    )


def test_secret_without_filter_is_refused() -> None:
    assert _problem("{{ secrets.db_key }}") == (
        "services.web.env.V",
        "a symmetric-key secret is not text: use a filter (pem, hex, base64 or raw)",
    )


def test_secret_concatenated_without_filter_is_refused() -> None:
    path, message = _problem('{{ "key=" ~ secrets.db_key }}')
    assert path == "services.web.env.V"
    assert message == "a symmetric-key secret is not text: use a filter (pem, hex, base64 or raw)"


def test_list_without_filter_is_refused() -> None:
    assert _problem("{{ [secrets.db_key | hex] }}") == (
        "services.web.env.V",
        "a list is not text: use the tojson or join filter",
    )


def test_list_with_join_renders(pki: PKI) -> None:
    assert _render_env(pki, '{{ [sealpod.service, sealpod.instance] | join(",") }}') == "web,web-7"


def test_raw_of_binary_key_in_env_is_refused_by_dry_run() -> None:
    path, message = _problem("{{ secrets.db_key | raw }}")
    assert path == "services.web.env.V"
    assert message.startswith("value is not UTF-8 text")


def test_raw_of_binary_key_in_argv_is_refused_by_dry_run() -> None:
    problems = check_manifest(_data(argv=["/bin/app", "{{ secrets.db_key | raw }}"])).problems
    assert [p.path for p in problems] == ["services.web.argv[1]"]


def test_dynamic_secret_lookup_is_refused() -> None:
    path, message = _problem("{{ secrets[sealpod.service] | hex }}")
    assert path == "services.web.env.V"
    assert message.startswith('"secrets" must be followed by a literal name')


@pytest.mark.parametrize(
    ("template", "construct"),
    [
        ("{% for c in sealpod.cert_chain %}x{% endfor %}", "{% for %}"),
        ('{% set x = "a" %}{{ x }}', "{% set %}"),
        ("{% macro m() %}x{% endmacro %}", "{% macro %}"),
        ('{% include "x" %}', "{% include %}"),
        ('{% import "x" as y %}', "{% import %}"),
        ("{{ range(10) }}", "a function call"),
    ],
)
def test_statements_and_calls_are_refused(template: str, construct: str) -> None:
    path, message = _problem(template)
    assert path == "services.web.env.V"
    assert message == f"{construct} is not allowed in templates (line 1)"


def test_every_broken_template_is_reported() -> None:
    data = _data(
        files={"/a": "{{ secrets.db_key | pem }}", "/b": "{{ oops"},
        env={"C": "{{ secrets.nope | hex }}", "D": "{{ secrets.db_key | hex }}"},
    )
    paths = [problem.path for problem in check_manifest(data).problems]
    assert sorted(paths) == [
        "services.web.env.C",
        'services.web.files["/a"]',
        'services.web.files["/b"]',
    ]


# --- sandbox escapes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "{{ secrets.__class__ }}",
        "{{ secrets.__class__.__mro__ }}",
        '{{ secrets["__class__"] }}',
        "{{ sealpod.__class__.__init__.__globals__ }}",
        "{{ sealpod.cert_chain.__class__ }}",
        "{{ sealpod.service.__class__.__mro__ }}",
        '{{ "".__class__.__mro__[1].__subclasses__() }}',
        "{{ self.__init__.__globals__ }}",
        "{{ cycler.__init__.__globals__.os }}",
        "{{ lipsum.__globals__ }}",
        "{{ sealpod.service.upper() }}",
        "{{ secrets.tls.cert.value }}",
        "{{ secrets.tls.private_key.value.private_numbers() }}",
        "{{ sealpod.private_key.value }}",
        '{{ sealpod.service | attr("__class__") }}',
        '{{ "{0.__class__}".format(sealpod) }}',
    ],
)
def test_sandbox_escape_is_refused_by_check(template: str) -> None:
    problems = check_manifest(_data(env={"V": template})).problems
    assert problems, template
    assert all(problem.path == "services.web.env.V" for problem in problems)


@pytest.mark.parametrize(
    "template",
    [
        "{{ sealpod.cert_chain.__class__ }}",
        "{{ sealpod.private_key.value | pem }}",
        "{{ secrets.tls.cert.value }}",
        "{{ secrets.tls.private_key.value }}",
        "{{ sealpod.service.__class__ }}",
        "{{ secrets.tls.__class__ }}",
        "{{ secrets.tls.__dataclass_fields__ }}",
    ],
)
def test_sandbox_refuses_internal_attributes_at_render(pki: PKI, template: str) -> None:
    # Even a manifest that skipped the checks cannot reach Python internals when rendered.
    manifest = _unchecked(env={"V": template})
    with pytest.raises(ManifestValidationError) as info:
        render_service(manifest, "web", pki.context())
    message = info.value.problems[0].message
    assert "unsafe" in message or "no attribute" in message


def test_secrets_class_attribute_is_refused(pki: PKI) -> None:
    # Statically, "__class__" is no secret's name...
    assert _problem("{{ secrets.__class__ }}") == (
        "services.web.env.V",
        'unknown secret "__class__"',
    )
    # ...and at render time the sandbox refuses the attribute itself.
    manifest = _unchecked(env={"V": "{{ secrets.__class__ }}"})
    with pytest.raises(ManifestValidationError) as info:
        render_service(manifest, "web", pki.context())
    assert str(info.value) == (
        "services.web.env.V: refused by the template sandbox: "
        "access to attribute '__class__' of '_Secrets' object is unsafe."
    )


def test_globals_of_python_functions_are_unreachable(pki: PKI) -> None:
    manifest = _unchecked(env={"V": "{{ sealpod.cert_chain.__init__.__globals__ }}"})
    with pytest.raises(ManifestValidationError, match="unsafe"):
        render_service(manifest, "web", pki.context())


def test_loop_in_unchecked_manifest_is_refused_at_render(pki: PKI) -> None:
    manifest = _unchecked(env={"V": "{% for c in sealpod.cert_chain %}x{% endfor %}"})
    with pytest.raises(ManifestValidationError, match=r"\{% for %\} is not allowed"):
        render_service(manifest, "web", pki.context())


def test_huge_repetition_is_refused() -> None:
    path, message = _problem('{{ "x" * 100000 }}')
    assert path == "services.web.env.V"
    assert message == "refused by the template sandbox: repetition longer than 4096 items"


def test_huge_power_is_refused() -> None:
    path, message = _problem("{{ 10 ** 100000 }}")
    assert path == "services.web.env.V"
    assert message == "refused by the template sandbox: power too large"


def test_percent_string_formatting_is_refused() -> None:
    path, message = _problem('{{ "%0999999999d" % 1 }}')
    assert path == "services.web.env.V"
    assert "string formatting" in message


def test_deeply_nested_template_is_refused_not_crashing() -> None:
    assert _problem("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}") == (
        "services.web.env.V",
        "template is nested too deeply",
    )


def test_huge_output_is_refused(pki: PKI) -> None:
    piece = '{{ "' + "x" * 64 + '" * 64 }}'  # 4096 characters per expression
    template = piece * 300  # 1.2 MiB of output from a 10 KiB template
    path, message = _problem(template)
    assert path == "services.web.env.V"
    assert message == "template output exceeds 1048576 characters"
