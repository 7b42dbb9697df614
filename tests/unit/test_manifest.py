"""Loading, validating, canonicalising and hashing deployment manifests."""

from __future__ import annotations

import copy
import hashlib
import json
import random
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from sealpod.errors import ConfigError, ManifestError
from sealpod.manifest import (
    Manifest,
    ManifestValidationError,
    canonical_json,
    check_manifest,
    load_manifest,
    manifest_digest,
    validate_manifest,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "manifests"
MR_A = "a" * 64
MR_B = "b" * 64


def _pem(name: str) -> str:
    return (DATA / name).read_text()


def _base() -> dict[str, Any]:
    """A small valid manifest, as parsed data; each test changes a copy."""
    return {
        "version": 1,
        "packages": {"web": {"mrenclave": [MR_A]}},
        "services": {
            "web": {
                "package": "web",
                "files": {"/secrets/tls.key": "{{ sealpod.private_key | pem }}"},
                "env": {"DB_KEY": "{{ secrets.db_key | hex }}"},
            }
        },
        "secrets": {"db_key": {"type": "symmetric-key", "size": 256}},
    }


def _problems(data: Any) -> list[tuple[str, str]]:
    result = check_manifest(data)
    return [(problem.path, problem.message) for problem in result.problems]


def _only_problem(data: Any) -> tuple[str, str]:
    problems = _problems(data)
    assert len(problems) == 1, problems
    return problems[0]


# --- valid manifests -------------------------------------------------------------------------


def test_issue_example_is_valid() -> None:
    manifest = load_manifest(DATA / "issue-example.yaml")
    assert set(manifest.services) == {"web"}
    assert manifest.services["web"].max_instances == 3
    assert manifest.secrets["db_key"].size == 256
    assert manifest.secrets["api_token"].user_defined is True
    assert manifest.policy.allow_simulation is True
    assert manifest.users["alice"].roles == ("token-writer",)


def test_full_example_is_valid_and_keeps_every_field() -> None:
    manifest = load_manifest(DATA / "full.yaml")
    db = manifest.packages["db"]
    assert (db.isv_prod_id, db.min_isv_svn) == (7, 3)
    assert db.rejected_advisories == ("INTEL-SA-00334",)
    # Measurements are stored lower case whatever case the document used.
    assert manifest.packages["api"].mrenclave is not None
    assert all(m == m.lower() for m in manifest.packages["api"].mrenclave)
    cert = manifest.secrets["db_server"].certificate
    assert cert is not None
    assert cert.issuer == "internal_ca"
    assert cert.ip_addresses == ("10.0.0.5", "fd00::5")
    assert manifest.services["api"].argv == (
        "/usr/bin/api",
        "--listen",
        "0.0.0.0:8443",
        "--instance={{ sealpod.instance }}",
    )
    assert manifest.recovery is not None and manifest.recovery.threshold == 2
    assert manifest.governance is not None and manifest.governance.update_threshold == 2
    assert manifest.policy.collateral_source == "pccs"


def test_defaults_are_the_documented_ones() -> None:
    manifest = validate_manifest(_base())
    package = manifest.packages["web"]
    assert package.debug is False
    assert package.accepted_tcb_statuses == ("UpToDate", "SWHardeningNeeded")
    assert manifest.policy.allow_simulation is False
    assert manifest.secrets["db_key"].scope == "shared"
    assert manifest.secrets["db_key"].user_defined is False
    assert manifest.services["web"].argv is None


def test_models_are_frozen() -> None:
    manifest = validate_manifest(_base())
    with pytest.raises(ValueError, match="frozen"):
        manifest.packages["web"].debug = True  # type: ignore[misc]


def test_yaml_and_json_load_to_the_same_manifest() -> None:
    from_yaml = load_manifest(DATA / "full.yaml")
    from_json = load_manifest(DATA / "full-reordered.json")
    assert from_yaml == from_json
    assert canonical_json(from_yaml) == canonical_json(from_json)


def test_json_text_and_bytes_load() -> None:
    text = json.dumps(_base())
    assert load_manifest(text) == load_manifest(text.encode()) == validate_manifest(_base())


# --- canonical form and digest ---------------------------------------------------------------


def test_canonical_json_is_sorted_compact_and_fills_defaults() -> None:
    data = {
        "version": 1,
        "packages": {"web": {"mrenclave": [MR_A.upper()]}},
    }
    # Written out by hand from docs/manifest.md: every default present, keys sorted.
    expected = {
        "governance": None,
        "packages": {
            "web": {
                "accepted_advisories": None,
                "accepted_tcb_statuses": ["UpToDate", "SWHardeningNeeded"],
                "debug": False,
                "isv_prod_id": None,
                "min_isv_svn": None,
                "mrenclave": [MR_A],
                "mrsigner": None,
                "rejected_advisories": [],
            }
        },
        "policy": {"allow_simulation": False, "collateral_source": "evidence", "pccs_url": None},
        "recovery": None,
        "roles": {},
        "secrets": {},
        "services": {},
        "users": {},
        "version": 1,
        "volumes": {},
    }
    expected_bytes = json.dumps(expected, sort_keys=True, separators=(",", ":")).encode()
    manifest = validate_manifest(data)
    assert canonical_json(manifest) == expected_bytes
    assert b" " not in canonical_json(manifest)
    assert manifest_digest(manifest) == hashlib.sha256(expected_bytes).digest()


def test_digest_is_stable_across_key_order_and_format() -> None:
    data = _base()
    reordered = json.loads(json.dumps(data), object_pairs_hook=lambda p: dict(reversed(p)))
    assert list(reordered) != list(data)
    yaml_text = (
        "secrets: {db_key: {size: 256, type: symmetric-key}}\n"
        "services:\n"
        "  web:\n"
        "    env: {DB_KEY: '{{ secrets.db_key | hex }}'}\n"
        "    files: {/secrets/tls.key: '{{ sealpod.private_key | pem }}'}\n"
        "    package: web\n"
        f"packages: {{web: {{mrenclave: ['{MR_A}']}}}}\n"
        "version: 1\n"
    )
    digests = {
        manifest_digest(validate_manifest(data)),
        manifest_digest(validate_manifest(reordered)),
        manifest_digest(load_manifest(yaml_text)),
    }
    assert len(digests) == 1


def test_digest_changes_with_any_value() -> None:
    data = _base()
    changed = copy.deepcopy(data)
    changed["services"]["web"]["max_instances"] = 2
    assert manifest_digest(validate_manifest(data)) != manifest_digest(validate_manifest(changed))


def test_explicit_defaults_do_not_change_the_digest() -> None:
    data = _base()
    explicit = copy.deepcopy(data)
    explicit["policy"] = {"allow_simulation": False}
    explicit["packages"]["web"]["debug"] = False
    assert manifest_digest(validate_manifest(data)) == manifest_digest(validate_manifest(explicit))


# --- the error type --------------------------------------------------------------------------


def test_error_lists_every_problem_with_its_path() -> None:
    data = _base()
    data["services"]["web"]["package"] = "nope"
    data["services"]["web"]["env"]["DB_URL"] = "{{ secrets.db | raw }}"
    with pytest.raises(ManifestValidationError) as info:
        validate_manifest(data)
    error = info.value
    assert isinstance(error, ManifestError)
    text = str(error)
    assert 'services.web.package: unknown package "nope"' in text
    assert 'services.web.env.DB_URL: unknown secret "db"' in text
    assert [p.path for p in error.problems] == ["services.web.package", "services.web.env.DB_URL"]


def test_single_problem_error_is_path_and_message() -> None:
    data = _base()
    data["services"]["web"]["package"] = "nope"
    with pytest.raises(ManifestValidationError) as info:
        validate_manifest(data)
    assert str(info.value) == 'services.web.package: unknown package "nope"'
    assert info.value.path == "services.web.package"


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read manifest"):
        load_manifest(tmp_path / "missing.yaml")


# --- parsing ---------------------------------------------------------------------------------


def test_invalid_yaml_names_line_and_column() -> None:
    with pytest.raises(ManifestValidationError, match=r"invalid YAML \(line 2, column"):
        load_manifest("version: 1\npackages: {web: [}\n")


def test_invalid_json_names_line_and_column() -> None:
    with pytest.raises(ManifestValidationError, match=r"invalid JSON \(line 1, column 15\)"):
        load_manifest('{"version": 1,}')


def test_duplicate_yaml_key_is_refused() -> None:
    text = f"version: 1\npackages: {{web: {{mrenclave: ['{MR_A}']}}}}\nversion: 1\n"
    with pytest.raises(ManifestValidationError, match="duplicate key 'version'"):
        load_manifest(text)


def test_duplicate_json_key_is_refused() -> None:
    packages = json.dumps({"a": {"mrenclave": [MR_A]}})
    text = '{"version": 1, "packages": ' + packages + ', "version": 1}'
    with pytest.raises(ManifestValidationError, match="duplicate key 'version'"):
        load_manifest(text)


def test_yaml_alias_expansion_is_refused() -> None:
    text = (
        "a: &a ['x', 'x', 'x', 'x', 'x', 'x', 'x', 'x']\n"
        "b: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
        "c: [*b, *b, *b, *b, *b, *b, *b, *b]\n"
    )
    with pytest.raises(ManifestValidationError, match="aliases"):
        load_manifest(text)


def test_yaml_merge_key_is_refused() -> None:
    with pytest.raises(ManifestValidationError, match="merge keys"):
        load_manifest("a: {x: 1}\nb:\n  <<: {y: 2}\n")


@pytest.mark.parametrize("opener", ["a: [", '{"a": ['])
def test_deeply_nested_document_is_refused(opener: str) -> None:
    text = opener + "[" * 100_000 + "]" * 100_000 + ("]" if opener.startswith("a") else "]}")
    with pytest.raises(ManifestValidationError, match="nested too deeply"):
        load_manifest(text)


def test_non_mapping_document_is_refused() -> None:
    with pytest.raises(ManifestValidationError, match="a manifest is a mapping, not list"):
        load_manifest("- 1\n- 2\n")
    with pytest.raises(ManifestValidationError, match="not empty"):
        load_manifest("")


def test_oversized_document_is_refused() -> None:
    with pytest.raises(ManifestValidationError, match="larger than"):
        load_manifest(b"#" * (4 << 20) + b"\n")


def test_non_utf8_document_is_refused() -> None:
    with pytest.raises(ManifestValidationError, match="not UTF-8"):
        load_manifest(b"version: 1\n\xff\n")


# --- schema-level problems, one per kind, exact path -----------------------------------------


def test_unknown_field_is_refused_at_its_path() -> None:
    data = _base()
    data["services"]["web"]["enviroment"] = {}
    assert _only_problem(data) == ("services.web.enviroment", "unknown field")


def test_missing_version_is_refused() -> None:
    data = _base()
    del data["version"]
    assert _only_problem(data) == ("version", "required field is missing")


def test_other_version_is_refused() -> None:
    data = _base()
    data["version"] = 2
    assert _only_problem(data) == ("version", "expected 1")


def test_string_number_is_not_coerced() -> None:
    data = _base()
    data["services"]["web"]["max_instances"] = "3"
    path, message = _only_problem(data)
    assert path == "services.web.max_instances"
    assert "integer" in message


def test_yaml_yes_is_not_a_boolean() -> None:
    data = _base()
    data["packages"]["web"]["debug"] = "yes"
    assert _only_problem(data)[0] == "packages.web.debug"


def test_short_mrenclave_is_refused() -> None:
    data = _base()
    data["packages"]["web"]["mrenclave"] = [MR_A, "abc"]
    assert _only_problem(data) == (
        "packages.web.mrenclave[1]",
        "expected 64 hex digits (32 bytes)",
    )


def test_unknown_tcb_status_is_refused() -> None:
    data = _base()
    data["packages"]["web"]["accepted_tcb_statuses"] = ["UpToDate", "Revoked"]
    path, message = _only_problem(data)
    assert path == "packages.web.accepted_tcb_statuses[1]"
    assert "'UpToDate'" in message


def test_malformed_advisory_id_is_refused() -> None:
    data = _base()
    data["packages"]["web"]["rejected_advisories"] = ["SA-1"]
    assert _only_problem(data) == (
        "packages.web.rejected_advisories[0]",
        "expected an Intel advisory ID like INTEL-SA-00615",
    )


def test_relative_file_path_is_refused() -> None:
    data = _base()
    data["services"]["web"]["files"]["etc/app.conf"] = "x"
    assert _only_problem(data) == (
        'services.web.files["etc/app.conf"]',
        "not an absolute path",
    )


def test_file_path_with_dotdot_is_refused() -> None:
    data = _base()
    data["services"]["web"]["files"]["/etc/../shadow"] = "x"
    path, message = _only_problem(data)
    assert path == 'services.web.files["/etc/../shadow"]'
    assert "normalised" in message


def test_invalid_env_name_is_refused() -> None:
    data = _base()
    data["services"]["web"]["env"]["1BAD-NAME"] = "x"
    path, message = _only_problem(data)
    assert path == "services.web.env.1BAD-NAME"
    assert message.startswith("invalid environment variable name")


def test_service_name_must_be_a_dns_label() -> None:
    data = _base()
    data["services"]["Web_1"] = data["services"].pop("web")
    path, message = _only_problem(data)
    assert path == "services.Web_1"
    assert message.startswith("invalid service name")


def test_relative_volume_mount_is_refused() -> None:
    data = _base()
    data["volumes"] = {"data": {}}
    data["services"]["web"]["volumes"] = {"data": "data"}
    assert _only_problem(data) == ("services.web.volumes.data", "not an absolute path")


def test_unknown_secret_type_is_refused() -> None:
    data = _base()
    data["secrets"]["db_key"]["type"] = "aes"
    assert _only_problem(data)[0] == "secrets.db_key.type"


def test_invalid_ip_address_is_refused() -> None:
    data = _base()
    data["secrets"]["tls"] = {"type": "cert-ecdsa", "certificate": {"ip_addresses": ["10.0.0"]}}
    assert _only_problem(data) == (
        "secrets.tls.certificate.ip_addresses[0]",
        '"10.0.0" is not an IPv4 or IPv6 address',
    )


def test_invalid_dns_name_is_refused() -> None:
    data = _base()
    data["secrets"]["tls"] = {"type": "cert-ecdsa", "certificate": {"dns_names": ["a..b"]}}
    assert _only_problem(data) == (
        "secrets.tls.certificate.dns_names[0]",
        '"a..b" is not a DNS name',
    )


def test_user_certificate_that_does_not_parse_is_refused() -> None:
    data = _base()
    data["users"] = {"alice": {"certificate": "-----BEGIN CERTIFICATE-----..."}}
    assert _only_problem(data) == (
        "users.alice.certificate",
        "not a PEM X.509 certificate (-----BEGIN CERTIFICATE-----)",
    )


def test_user_public_key_that_does_not_parse_is_refused() -> None:
    data = _base()
    data["users"] = {"bob": {"public_key": _pem("bob.pub").replace("M", "N", 1)}}
    assert _only_problem(data)[0] == "users.bob.public_key"


def test_user_certificate_with_pasted_private_key_is_refused() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    data = _base()
    data["users"] = {"alice": {"certificate": _pem("alice.crt") + private_pem}}
    assert _only_problem(data) == (
        "users.alice.certificate",
        "contains a private key: give only the public part",
    )


def test_user_key_with_two_pem_blocks_is_refused() -> None:
    data = _base()
    data["users"] = {"bob": {"public_key": _pem("bob.pub") + _pem("carol.pub")}}
    assert _only_problem(data) == ("users.bob.public_key", "expected exactly one PEM block")


def test_small_rsa_user_key_is_refused() -> None:
    data = _base()
    data["users"] = {"bob": {"public_key": _pem("small-rsa.pub")}}
    assert _only_problem(data) == (
        "users.bob.public_key",
        "RSA key of 1024 bits is too small (at least 2048)",
    )


def test_non_rsa_recovery_key_is_refused() -> None:
    data = _base()
    data["recovery"] = {"threshold": 1, "keys": {"bob": _pem("bob.pub")}}
    path, message = _only_problem(data)
    assert path == "recovery.keys.bob"
    assert message.startswith("recovery keys must be RSA keys")


def test_http_pccs_url_is_refused() -> None:
    data = _base()
    data["policy"] = {"collateral_source": "pccs", "pccs_url": "http://pccs.example/"}
    assert _only_problem(data) == ("policy.pccs_url", "expected an https:// URL")


def test_every_schema_problem_is_reported_at_once() -> None:
    data = _base()
    data["version"] = 3
    data["services"]["web"]["files"]["etc/x"] = "x"
    data["packages"]["web"]["debug"] = 1
    paths = {path for path, _ in _problems(data)}
    assert paths == {"version", 'services.web.files["etc/x"]', "packages.web.debug"}


# --- cross-reference problems, one per kind, exact path --------------------------------------


def test_unknown_package_is_refused() -> None:
    data = _base()
    data["services"]["web"]["package"] = "api"
    assert _only_problem(data) == ("services.web.package", 'unknown package "api"')


def test_unknown_secret_in_env_template_is_refused() -> None:
    data = _base()
    data["services"]["web"]["env"]["DB_URL"] = "postgres://u:{{ secrets.db | raw }}@db/x"
    assert _only_problem(data) == ("services.web.env.DB_URL", 'unknown secret "db"')


def test_unknown_secret_in_file_template_is_refused() -> None:
    data = _base()
    data["services"]["web"]["files"]["/etc/app.conf"] = '{{ secrets["nope"] | hex }}'
    assert _only_problem(data) == ('services.web.files["/etc/app.conf"]', 'unknown secret "nope"')


def test_unknown_secret_in_argv_is_refused() -> None:
    data = _base()
    data["services"]["web"]["argv"] = ["/bin/app", "--key={{ secrets.nope | hex }}"]
    assert _only_problem(data) == ("services.web.argv[1]", 'unknown secret "nope"')


def test_unknown_role_is_refused() -> None:
    data = _base()
    data["users"] = {"bob": {"public_key": _pem("bob.pub"), "roles": ["admin"]}}
    assert _only_problem(data) == ("users.bob.roles[0]", 'unknown role "admin"')


def test_user_with_both_certificate_and_key_is_refused() -> None:
    data = _base()
    data["users"] = {"alice": {"certificate": _pem("alice.crt"), "public_key": _pem("bob.pub")}}
    assert _only_problem(data) == ("users.alice", "give exactly one of certificate or public_key")


def test_two_users_with_the_same_key_are_refused() -> None:
    data = _base()
    data["users"] = {
        "bob": {"public_key": _pem("bob.pub")},
        "bob2": {"public_key": _pem("bob.pub")},
    }
    assert _only_problem(data) == ("users.bob2.public_key", 'same key as user "bob"')


def test_unknown_volume_is_refused() -> None:
    data = _base()
    data["services"]["web"]["volumes"] = {"data": "/data"}
    assert _only_problem(data) == ("services.web.volumes.data", 'unknown volume "data"')


def test_two_volumes_on_one_mount_path_are_refused() -> None:
    data = _base()
    data["volumes"] = {"a": {}, "b": {}}
    data["services"]["web"]["volumes"] = {"a": "/data", "b": "/data"}
    assert _only_problem(data) == (
        "services.web.volumes.b",
        'mount path also used by volume "a"',
    )


def test_role_naming_unknown_secret_is_refused() -> None:
    data = _base()
    data["roles"] = {"r": {"resource": "secrets", "names": ["db_key", "x"], "actions": ["read"]}}
    assert _only_problem(data) == ("roles.r.names[1]", 'unknown secret "x"')


def test_role_naming_unknown_package_is_refused() -> None:
    data = _base()
    data["roles"] = {"r": {"resource": "packages", "names": ["api"], "actions": ["update"]}}
    assert _only_problem(data) == ("roles.r.names[0]", 'unknown package "api"')


def test_role_action_not_valid_for_resource_is_refused() -> None:
    data = _base()
    data["roles"] = {"r": {"resource": "packages", "names": ["web"], "actions": ["write"]}}
    assert _only_problem(data) == (
        "roles.r.actions[0]",
        '"write" is not an action on packages (use update)',
    )


def test_role_writing_a_generated_secret_is_refused() -> None:
    data = _base()
    data["roles"] = {"r": {"resource": "secrets", "names": ["db_key"], "actions": ["write"]}}
    assert _only_problem(data) == (
        "roles.r.names[0]",
        'secret "db_key" is generated, not user-defined: it cannot be written',
    )


def test_manifest_role_with_names_is_refused() -> None:
    data = _base()
    data["roles"] = {"r": {"resource": "manifest", "names": ["web"], "actions": ["update"]}}
    assert _only_problem(data) == ("roles.r.names", "the manifest role takes no names")


def test_package_with_both_identities_is_refused() -> None:
    data = _base()
    data["packages"]["web"].update(mrsigner=MR_B, isv_prod_id=1, min_isv_svn=0)
    paths = [path for path, _ in _problems(data)]
    assert paths == [
        "packages.web.mrsigner",
        "packages.web.isv_prod_id",
        "packages.web.min_isv_svn",
    ]


def test_package_without_identity_is_refused() -> None:
    data = _base()
    data["packages"]["web"] = {"debug": False}
    assert _only_problem(data) == ("packages.web", "give either mrenclave or mrsigner")


def test_mrsigner_without_product_id_is_refused() -> None:
    data = _base()
    data["packages"]["web"] = {"mrsigner": MR_B, "min_isv_svn": 1}
    assert _only_problem(data) == ("packages.web.isv_prod_id", "required with mrsigner")


def test_advisory_both_accepted_and_rejected_is_refused() -> None:
    data = _base()
    data["packages"]["web"]["accepted_advisories"] = ["INTEL-SA-00001"]
    data["packages"]["web"]["rejected_advisories"] = ["INTEL-SA-00001"]
    assert _only_problem(data) == (
        "packages.web.accepted_advisories[0]",
        '"INTEL-SA-00001" is also rejected',
    )


@pytest.mark.parametrize(
    ("secret_type", "size", "message"),
    [
        ("symmetric-key", 100, "symmetric-key size must be one of 128, 192, 256, 384, 512 (bits)"),
        ("cert-ecdsa", 255, "cert-ecdsa size must be one of 256, 384, 521 (bits)"),
        ("cert-rsa", 1024, "cert-rsa size must be one of 2048, 3072, 4096 (bits)"),
        ("cert-ed25519", 448, "cert-ed25519 size must be one of 256 (bits)"),
    ],
)
def test_secret_size_is_validated_per_type(secret_type: str, size: int, message: str) -> None:
    data = _base()
    data["secrets"]["s"] = {"type": secret_type, "size": size}
    path, got = _only_problem(data)
    assert path == "secrets.s.size"
    assert got == f"{message}, not {size}"


def test_plain_secret_with_size_is_refused() -> None:
    data = _base()
    data["secrets"]["p"] = {"type": "plain", "size": 128, "user_defined": True}
    assert _only_problem(data) == ("secrets.p.size", "a plain secret has no size")


def test_generated_plain_secret_is_refused() -> None:
    data = _base()
    data["secrets"]["p"] = {"type": "plain"}
    assert _only_problem(data) == (
        "secrets.p.user_defined",
        "a plain secret is set by a user: user_defined must be true",
    )


def test_certificate_template_on_a_key_is_refused() -> None:
    data = _base()
    data["secrets"]["db_key"]["certificate"] = {"common_name": "x"}
    assert _only_problem(data) == (
        "secrets.db_key.certificate",
        "only certificate secrets have this field",
    )


def test_secret_named_mesh_is_refused() -> None:
    data = _base()
    data["secrets"]["mesh"] = {"type": "cert-ecdsa"}
    assert _only_problem(data) == ("secrets.mesh", '"mesh" is reserved for the mesh CA')


def test_key_usage_impossible_for_key_type_is_refused() -> None:
    data = _base()
    data["secrets"]["tls"] = {
        "type": "cert-ed25519",
        "certificate": {"key_usage": ["digital_signature", "key_encipherment"]},
    }
    assert _only_problem(data) == (
        "secrets.tls.certificate.key_usage[1]",
        "key_encipherment is not possible with a cert-ed25519 key",
    )


def test_unknown_issuer_is_refused() -> None:
    data = _base()
    data["secrets"]["tls"] = {"type": "cert-ecdsa", "certificate": {"issuer": "ca"}}
    assert _only_problem(data) == ("secrets.tls.certificate.issuer", 'unknown secret "ca"')


def test_issuer_that_is_not_a_certificate_is_refused() -> None:
    data = _base()
    data["secrets"]["tls"] = {"type": "cert-ecdsa", "certificate": {"issuer": "db_key"}}
    assert _only_problem(data) == (
        "secrets.tls.certificate.issuer",
        '"db_key" is not a certificate secret',
    )


def test_issuer_that_is_not_a_ca_is_refused() -> None:
    data = _base()
    data["secrets"]["ca"] = {"type": "cert-ecdsa"}
    data["secrets"]["tls"] = {"type": "cert-ecdsa", "certificate": {"issuer": "ca"}}
    assert _only_problem(data) == (
        "secrets.tls.certificate.issuer",
        '"ca" is not a CA (set its certificate.ca: true)',
    )


def test_issuer_cycle_is_refused() -> None:
    data = _base()
    ca = {"ca": True, "key_usage": ["key_cert_sign"]}
    data["secrets"]["a"] = {"type": "cert-ecdsa", "certificate": {**ca, "issuer": "b"}}
    data["secrets"]["b"] = {"type": "cert-ecdsa", "certificate": {**ca, "issuer": "c"}}
    data["secrets"]["c"] = {"type": "cert-ecdsa", "certificate": {**ca, "issuer": "a"}}
    assert _problems(data) == [
        ("secrets.a.certificate.issuer", "issuer cycle: a -> b -> c -> a"),
        ("secrets.b.certificate.issuer", "issuer cycle: b -> c -> a -> b"),
        ("secrets.c.certificate.issuer", "issuer cycle: c -> a -> b -> c"),
    ]


def test_self_issued_secret_is_refused() -> None:
    data = _base()
    data["secrets"]["a"] = {"type": "cert-ecdsa", "certificate": {"ca": True, "issuer": "a"}}
    assert _only_problem(data) == (
        "secrets.a.certificate.issuer",
        "a certificate cannot issue itself (issuer cycle)",
    )


def test_shared_certificate_from_per_instance_issuer_is_refused() -> None:
    data = _base()
    data["secrets"]["ca"] = {
        "type": "cert-ecdsa",
        "scope": "per-instance",
        "certificate": {"ca": True},
    }
    data["secrets"]["tls"] = {"type": "cert-ecdsa", "certificate": {"issuer": "ca"}}
    assert _only_problem(data) == (
        "secrets.tls.certificate.issuer",
        'a shared certificate cannot be issued by per-instance "ca"',
    )


def test_recovery_threshold_above_key_count_is_refused() -> None:
    data = _base()
    data["recovery"] = {"threshold": 2, "keys": {"k1": _pem("recovery-rsa2048.pub")}}
    assert _only_problem(data) == (
        "recovery.threshold",
        "threshold 2 exceeds the 1 recovery keys",
    )


def test_same_recovery_key_twice_is_refused() -> None:
    data = _base()
    data["recovery"] = {
        "threshold": 2,
        "keys": {"k1": _pem("recovery-rsa2048.pub"), "k2": _pem("recovery-rsa2048.pub")},
    }
    assert _only_problem(data) == ("recovery.keys.k2", 'same key as "k1"')


def test_update_threshold_above_updater_count_is_refused() -> None:
    data = _base()
    data["users"] = {
        "alice": {"certificate": _pem("alice.crt"), "roles": ["ops"]},
        "bob": {"public_key": _pem("bob.pub")},
    }
    data["roles"] = {"ops": {"resource": "manifest", "actions": ["update"]}}
    data["governance"] = {"update_threshold": 2}
    assert _only_problem(data) == (
        "governance.update_threshold",
        "threshold 2 exceeds the 1 users holding a role with update on the manifest",
    )


def test_pccs_without_url_is_refused() -> None:
    data = _base()
    data["policy"] = {"collateral_source": "pccs"}
    assert _only_problem(data) == ("policy.pccs_url", "required when collateral_source is pccs")


def test_every_reference_problem_is_reported_at_once() -> None:
    data = _base()
    data["services"]["web"]["package"] = "nope"
    data["services"]["web"]["volumes"] = {"v": "/v"}
    data["users"] = {"bob": {"public_key": _pem("bob.pub"), "roles": ["r"]}}
    data["services"]["web"]["env"]["X"] = "{{ secrets.x | hex }}"
    assert {path for path, _ in _problems(data)} == {
        "services.web.package",
        "services.web.volumes.v",
        "users.bob.roles[0]",
        "services.web.env.X",
    }


def test_reference_problems_are_reported_with_schema_problems() -> None:
    data = _base()
    data["users"] = {"alice": {"certificate": "not a certificate"}}
    data["services"]["web"]["env"]["DB_URL"] = "{{ secrets.db | raw }}"
    data["services"]["web"]["package"] = "api"
    assert _problems(data) == [
        ("users.alice.certificate", "not a PEM X.509 certificate (-----BEGIN CERTIFICATE-----)"),
        ("services.web.package", 'unknown package "api"'),
        ("services.web.env.DB_URL", 'unknown secret "db"'),
    ]


def test_consequences_of_a_broken_entry_are_not_reported() -> None:
    # db_key is broken; "unknown secret db_key" in services.web.env.DB_KEY would be noise.
    data = _base()
    data["secrets"]["db_key"]["size"] = "256"
    assert _only_problem(data) == ("secrets.db_key.size", "expected an integer")


def test_warnings_name_insecure_settings() -> None:
    data = _base()
    data["policy"] = {"allow_simulation": True}
    data["packages"]["web"]["debug"] = True
    result = check_manifest(data)
    assert result.valid
    paths = {warning.path for warning in result.warnings}
    assert {"policy.allow_simulation", "packages.web.debug", "recovery"} <= paths


def test_manifest_model_validate_alone_skips_cross_checks() -> None:
    # Documented: only load_manifest/validate_manifest give the full guarantee.
    data = _base()
    data["services"]["web"]["package"] = "nope"
    assert Manifest.model_validate(data).services["web"].package == "nope"
    with pytest.raises(ManifestValidationError):
        validate_manifest(data)


# --- access questions ------------------------------------------------------------------------


def test_user_is_allowed_follows_roles() -> None:
    from sealpod.manifest import manifest_updaters, user_is_allowed

    manifest = load_manifest(DATA / "full.yaml")
    assert user_is_allowed(manifest, "alice", "secrets", "write", "api_token")
    assert user_is_allowed(manifest, "alice", "secrets", "read", "api_token")
    assert user_is_allowed(manifest, "carol", "packages", "update", "db")
    assert user_is_allowed(manifest, "carol", "volumes", "reset", "dbdata")
    assert user_is_allowed(manifest, "bob", "manifest", "update")
    assert manifest_updaters(manifest) == ["alice", "bob", "carol"]


def test_user_without_the_role_is_not_allowed() -> None:
    from sealpod.manifest import user_is_allowed

    manifest = load_manifest(DATA / "full.yaml")
    assert not user_is_allowed(manifest, "bob", "secrets", "write", "api_token")
    assert not user_is_allowed(manifest, "alice", "secrets", "write", "db_key")
    assert not user_is_allowed(manifest, "alice", "secrets", "write", None)
    assert not user_is_allowed(manifest, "carol", "packages", "update", "api")
    assert not user_is_allowed(manifest, "mallory", "manifest", "update")
    assert not user_is_allowed(manifest, "alice", "manifest", "delete")


@settings(max_examples=25, deadline=None)
@given(st.randoms(use_true_random=False))
def test_digest_is_stable_under_any_key_order(rng: random.Random) -> None:
    document = yaml.safe_load((DATA / "full.yaml").read_text())

    def shuffled(node: Any) -> Any:
        if isinstance(node, dict):
            keys = list(node)
            rng.shuffle(keys)
            return {key: shuffled(node[key]) for key in keys}
        if isinstance(node, list):
            return [shuffled(item) for item in node]  # list order is meaningful: kept
        return node

    assert manifest_digest(validate_manifest(shuffled(document))) == _FULL_DIGEST


_FULL_DIGEST = manifest_digest(load_manifest(DATA / "full.yaml"))
