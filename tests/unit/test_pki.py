"""The coordinator PKI: hierarchy, leaves, rotation, simulated mark, certificate secrets.

Chains are checked twice: with cryptography's verifier (through ``verify_chain``) and with
``openssl verify`` as an independent implementation.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sealpod.errors import ConfigError, VerificationError
from sealpod.pki import CertifiedKey, CoordinatorCA, is_simulated, verify_chain

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
# The private extension OID documented in sealpod.pki.certificates (UUID arc + ".1").
SIMULATED_OID = x509.ObjectIdentifier("2.25.273459792432434875720578354600975782186.1")
# DER UTF8String (tag 12) of "simulation", built by hand from X.690.
SIMULATED_VALUE = bytes([12, len(b"simulation")]) + b"simulation"


@pytest.fixture(scope="module")
def ca() -> CoordinatorCA:
    return CoordinatorCA.create(now=NOW)


def _csr(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey,
) -> x509.CertificateSigningRequest:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ignored")])
    )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm)


def _ec_csr() -> x509.CertificateSigningRequest:
    return _csr(ec.generate_private_key(ec.SECP256R1()))


def _pem(certificates: list[x509.Certificate] | tuple[x509.Certificate, ...]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def _openssl_verify(
    tmp_path: Path,
    leaf: x509.Certificate,
    untrusted: tuple[x509.Certificate, ...],
    root: x509.Certificate,
    at: dt.datetime,
    *extra: str,
) -> subprocess.CompletedProcess[str]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    (tmp_path / "root.pem").write_bytes(_pem([root]))
    (tmp_path / "untrusted.pem").write_bytes(_pem(list(untrusted)))
    (tmp_path / "leaf.pem").write_bytes(_pem([leaf]))
    args = [
        "openssl", "verify", "-x509_strict", "-attime", str(int(at.timestamp())),
        "-CAfile", str(tmp_path / "root.pem"), *extra,
    ]  # fmt: skip
    if untrusted:
        args += ["-untrusted", str(tmp_path / "untrusted.pem")]
    args.append(str(tmp_path / "leaf.pem"))
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=30)


def _assert_openssl_accepts(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("OK")


# --- hierarchy -----------------------------------------------------------------------------


def test_root_is_a_self_signed_p384_ca(ca: CoordinatorCA) -> None:
    root = ca.root_certificate
    key = root.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert key.curve.name == "secp384r1"
    assert root.subject == root.issuer
    root.verify_directly_issued_by(root)
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert root.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign


@pytest.mark.parametrize(("size", "curve"), [(384, "secp384r1"), (256, "secp256r1")])
def test_mesh_intermediate_is_issued_by_the_root(size: int, curve: str, tmp_path: Path) -> None:
    ca = CoordinatorCA.create(now=NOW, mesh_key_size=size)
    mesh = ca.mesh.certificate
    key = mesh.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert key.curve.name == curve
    mesh.verify_directly_issued_by(ca.root_certificate)
    assert mesh.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    _assert_openssl_accepts(_openssl_verify(tmp_path, mesh, (), ca.root_certificate, NOW))


def test_mesh_key_size_other_than_p256_or_p384_is_refused() -> None:
    with pytest.raises(ConfigError):
        CoordinatorCA.create(now=NOW, mesh_key_size=521)


def test_naive_time_is_refused() -> None:
    with pytest.raises(ConfigError):
        CoordinatorCA.create(now=dt.datetime(2026, 3, 1))


# --- leaves --------------------------------------------------------------------------------


def test_leaf_chain_verifies_with_cryptography_and_openssl(
    ca: CoordinatorCA, tmp_path: Path
) -> None:
    leaf = ca.issue_leaf(_ec_csr(), service="web", instance="i-1", simulated=False, now=NOW)
    chain = verify_chain(leaf, ca.trust_bundle(), ca.root_certificate, NOW)
    assert chain == [leaf, ca.mesh.certificate, ca.root_certificate]
    verify_chain(leaf, ca.trust_bundle(), ca.root_certificate, NOW, dns_name="web")
    verify_chain(leaf, ca.trust_bundle(), ca.root_certificate, NOW, require_client_auth=True)
    result = _openssl_verify(
        tmp_path, leaf, ca.trust_bundle(), ca.root_certificate, NOW,
        "-verify_hostname", "web", "-purpose", "sslserver",
    )  # fmt: skip
    _assert_openssl_accepts(result)
    result = _openssl_verify(
        tmp_path, leaf, ca.trust_bundle(), ca.root_certificate, NOW, "-purpose", "sslclient"
    )
    _assert_openssl_accepts(result)


def test_leaf_subject_and_sans_name_the_service(ca: CoordinatorCA) -> None:
    leaf = ca.issue_leaf(
        _ec_csr(),
        service="api",
        instance="pod-7",
        dns_names=["api.example.test"],
        ips=["10.0.0.7", ipaddress.ip_address("::1")],
        simulated=False,
        now=NOW,
    )
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "api"
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["api", "api.example.test"]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "sealpod://service/api/pod-7"
    ]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.7"),
        ipaddress.ip_address("::1"),
    ]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_leaf_carries_the_csr_key_not_the_csr_subject(ca: CoordinatorCA) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    leaf = ca.issue_leaf(_csr(key), service="web", instance="1", simulated=False, now=NOW)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert leaf.public_key().public_bytes(serialization.Encoding.DER, spki) == (
        key.public_key().public_bytes(serialization.Encoding.DER, spki)
    )
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "web"


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(lambda: rsa.generate_private_key(65537, 2048), id="rsa2048"),
        pytest.param(ed25519.Ed25519PrivateKey.generate, id="ed25519"),
        pytest.param(lambda: ec.generate_private_key(ec.SECP521R1()), id="p521"),
    ],
)
def test_leaf_accepts_other_csr_key_types(ca: CoordinatorCA, key: object) -> None:
    private = key()  # type: ignore[operator]
    leaf = ca.issue_leaf(_csr(private), service="web", instance="1", simulated=False, now=NOW)
    leaf.verify_directly_issued_by(ca.mesh.certificate)


def test_leaf_validity_starts_before_now_and_ends_after_validity(ca: CoordinatorCA) -> None:
    leaf = ca.issue_leaf(
        _ec_csr(),
        service="web",
        instance="1",
        validity=dt.timedelta(days=2),
        simulated=False,
        now=NOW,
    )
    assert leaf.not_valid_after_utc == NOW + dt.timedelta(days=2)
    assert NOW - dt.timedelta(minutes=10) <= leaf.not_valid_before_utc <= NOW


def test_leaf_never_outlives_its_mesh_intermediate() -> None:
    ca = CoordinatorCA.create(now=NOW, mesh_validity=dt.timedelta(days=10))
    leaf = ca.issue_leaf(
        _ec_csr(), service="w", instance="1", validity=dt.timedelta(days=400),
        simulated=False, now=NOW,
    )  # fmt: skip
    assert leaf.not_valid_after_utc == ca.mesh.certificate.not_valid_after_utc


def test_expired_leaf_is_refused(ca: CoordinatorCA, tmp_path: Path) -> None:
    leaf = ca.issue_leaf(
        _ec_csr(), service="web", instance="1", validity=dt.timedelta(days=1),
        simulated=False, now=NOW,
    )  # fmt: skip
    later = NOW + dt.timedelta(days=2)
    with pytest.raises(VerificationError) as info:
        verify_chain(leaf, ca.trust_bundle(), ca.root_certificate, later)
    assert info.value.reason == "certificate_chain_invalid"
    result = _openssl_verify(tmp_path, leaf, ca.trust_bundle(), ca.root_certificate, later)
    assert result.returncode != 0


def test_leaf_used_before_its_validity_is_refused(ca: CoordinatorCA) -> None:
    leaf = ca.issue_leaf(_ec_csr(), service="web", instance="1", simulated=False, now=NOW)
    with pytest.raises(VerificationError):
        verify_chain(leaf, ca.trust_bundle(), ca.root_certificate, NOW - dt.timedelta(hours=1))


def test_leaf_of_another_coordinator_is_refused(ca: CoordinatorCA, tmp_path: Path) -> None:
    other = CoordinatorCA.create(now=NOW)
    leaf = other.issue_leaf(_ec_csr(), service="web", instance="1", simulated=False, now=NOW)
    with pytest.raises(VerificationError):
        verify_chain(leaf, ca.trust_bundle(), ca.root_certificate, NOW)
    # Even when the foreign intermediate is offered as an untrusted certificate.
    with pytest.raises(VerificationError):
        verify_chain(leaf, other.trust_bundle(), ca.root_certificate, NOW)
    result = _openssl_verify(tmp_path, leaf, other.trust_bundle(), ca.root_certificate, NOW)
    assert result.returncode != 0


def test_leaf_for_the_wrong_server_name_is_refused(ca: CoordinatorCA) -> None:
    leaf = ca.issue_leaf(_ec_csr(), service="web", instance="1", simulated=False, now=NOW)
    with pytest.raises(VerificationError):
        verify_chain(leaf, ca.trust_bundle(), ca.root_certificate, NOW, dns_name="db")


def _der_items(data: bytes) -> list[bytes]:
    """Split the content of a DER SEQUENCE into its encoded elements (X.690 8.1)."""
    if data[0] != 0x30:
        raise ValueError("not a SEQUENCE")

    def header(buffer: bytes, at: int) -> tuple[int, int]:
        length = buffer[at + 1]
        if length < 0x80:
            return at + 2, length
        count = length & 0x7F
        return at + 2 + count, int.from_bytes(buffer[at + 2 : at + 2 + count], "big")

    start, length = header(data, 0)
    items, at = [], start
    while at < start + length:
        body, size = header(data, at)
        items.append(data[at : body + size])
        at = body + size
    return items


def _der_sequence(items: list[bytes]) -> bytes:
    content = b"".join(items)
    if len(content) < 0x80:
        return b"\x30" + bytes([len(content)]) + content
    size = len(content).to_bytes((len(content).bit_length() + 7) // 8, "big")
    return b"\x30" + bytes([0x80 | len(size)]) + size + content


def test_csr_with_flipped_signature_bit_is_refused(ca: CoordinatorCA) -> None:
    der = bytearray(_ec_csr().public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # the last byte belongs to the signature's s integer
    tampered = x509.load_der_x509_csr(bytes(der))
    with pytest.raises(VerificationError) as info:
        ca.issue_leaf(tampered, service="web", instance="1", simulated=False, now=NOW)
    assert info.value.reason == "csr_signature_invalid"


def test_csr_signed_by_another_key_is_refused(ca: CoordinatorCA) -> None:
    victim = _der_items(_ec_csr().public_bytes(serialization.Encoding.DER))
    attacker = _der_items(_ec_csr().public_bytes(serialization.Encoding.DER))
    # certificationRequestInfo of one CSR with the signature of another (RFC 2986 4.2).
    spliced = x509.load_der_x509_csr(_der_sequence([victim[0], attacker[1], attacker[2]]))
    with pytest.raises(VerificationError) as info:
        ca.issue_leaf(spliced, service="web", instance="1", simulated=False, now=NOW)
    assert info.value.reason == "csr_signature_invalid"


def test_csr_with_a_short_rsa_key_is_refused(ca: CoordinatorCA) -> None:
    weak = _csr(rsa.generate_private_key(65537, 1024))  # noqa: S505 - the point of the test
    with pytest.raises(VerificationError) as info:
        ca.issue_leaf(weak, service="web", instance="1", simulated=False, now=NOW)
    assert info.value.reason == "csr_key_unsupported"


@pytest.mark.parametrize(
    ("service", "instance"),
    [("", "1"), ("web/evil", "1"), ("web", "a/b"), ("web", ""), ("web", "x" * 200)],
)
def test_bad_service_or_instance_names_are_refused(
    ca: CoordinatorCA, service: str, instance: str
) -> None:
    with pytest.raises(ConfigError):
        ca.issue_leaf(_ec_csr(), service=service, instance=instance, simulated=False, now=NOW)


def test_service_name_that_is_not_a_dns_label_still_gets_the_uri(ca: CoordinatorCA) -> None:
    leaf = ca.issue_leaf(_ec_csr(), service="db_proxy", instance="0", simulated=False, now=NOW)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == []
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "sealpod://service/db_proxy/0"
    ]


# --- simulated mark ------------------------------------------------------------------------


def test_simulated_leaf_carries_both_marks(ca: CoordinatorCA, tmp_path: Path) -> None:
    leaf = ca.issue_leaf(_ec_csr(), service="web", instance="1", simulated=True, now=NOW)
    units = [a.value for a in leaf.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]
    assert units == ["SIMULATED"]
    extension = leaf.extensions.get_extension_for_oid(SIMULATED_OID)
    assert not extension.critical
    assert isinstance(extension.value, x509.UnrecognizedExtension)
    assert extension.value.value == SIMULATED_VALUE
    assert is_simulated(leaf)
    # The non-critical private extension does not stop standard verifiers.
    verify_chain(leaf, ca.trust_bundle(), ca.root_certificate, NOW, dns_name="web")
    _assert_openssl_accepts(
        _openssl_verify(tmp_path, leaf, ca.trust_bundle(), ca.root_certificate, NOW)
    )


def test_hardware_leaf_carries_no_simulated_mark(ca: CoordinatorCA) -> None:
    leaf = ca.issue_leaf(_ec_csr(), service="web", instance="1", simulated=False, now=NOW)
    assert leaf.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME) == []
    with pytest.raises(x509.ExtensionNotFound):
        leaf.extensions.get_extension_for_oid(SIMULATED_OID)
    assert not is_simulated(leaf)


def test_simulated_coordinator_marks_its_own_certificates(tmp_path: Path) -> None:
    ca = CoordinatorCA.create(now=NOW, simulated=True)
    assert is_simulated(ca.root_certificate)
    assert is_simulated(ca.mesh.certificate)
    assert is_simulated(ca.rotate_mesh(now=NOW).mesh.certificate)
    # The private extension on the CA certificates does not break path validation.
    leaf = ca.issue_leaf(_ec_csr(), service="web", instance="1", simulated=True, now=NOW)
    verify_chain(leaf, ca.trust_bundle(), ca.root_certificate, NOW, dns_name="web")
    _assert_openssl_accepts(
        _openssl_verify(tmp_path, leaf, ca.trust_bundle(), ca.root_certificate, NOW)
    )


# --- rotation ------------------------------------------------------------------------------


def test_rotated_intermediate_old_and_new_leaves_verify_under_the_bundle(
    tmp_path: Path,
) -> None:
    ca1 = CoordinatorCA.create(now=NOW)
    old_leaf = ca1.issue_leaf(_ec_csr(), service="web", instance="1", simulated=False, now=NOW)
    later = NOW + dt.timedelta(hours=1)
    ca2 = ca1.rotate_mesh(now=later)
    new_leaf = ca2.issue_leaf(_ec_csr(), service="db", instance="1", simulated=False, now=later)
    assert ca2.generation == 2
    assert ca2.root_certificate == ca1.root_certificate
    assert ca2.mesh.certificate != ca1.mesh.certificate
    assert ca2.trust_bundle() == (ca2.mesh.certificate, ca1.mesh.certificate)
    assert new_leaf.issuer == ca2.mesh.certificate.subject
    for leaf in (old_leaf, new_leaf):
        verify_chain(leaf, ca2.trust_bundle(), ca2.root_certificate, later)
        _assert_openssl_accepts(
            _openssl_verify(tmp_path, leaf, ca2.trust_bundle(), ca2.root_certificate, later)
        )
    assert ca2.leaf_chain(old_leaf) == (old_leaf, ca1.mesh.certificate)
    assert ca2.leaf_chain(new_leaf) == (new_leaf, ca2.mesh.certificate)


def test_leaf_of_a_generation_that_left_the_bundle_is_refused(tmp_path: Path) -> None:
    ca1 = CoordinatorCA.create(now=NOW)
    old_leaf = ca1.issue_leaf(_ec_csr(), service="web", instance="1", simulated=False, now=NOW)
    ca3 = ca1.rotate_mesh(now=NOW).rotate_mesh(now=NOW)
    assert ca1.mesh.certificate not in ca3.trust_bundle()
    with pytest.raises(VerificationError):
        verify_chain(old_leaf, ca3.trust_bundle(), ca3.root_certificate, NOW)
    result = _openssl_verify(tmp_path, old_leaf, ca3.trust_bundle(), ca3.root_certificate, NOW)
    assert result.returncode != 0
    with pytest.raises(VerificationError) as info:
        ca3.leaf_chain(old_leaf)
    assert info.value.reason == "certificate_issuer_unknown"


def test_keep_previous_keeps_more_generations() -> None:
    ca = CoordinatorCA.create(now=NOW)
    first = ca.mesh.certificate
    ca = ca.rotate_mesh(now=NOW, keep_previous=2).rotate_mesh(now=NOW, keep_previous=2)
    assert len(ca.trust_bundle()) == 3
    assert ca.trust_bundle()[-1] == first
    with pytest.raises(ConfigError):
        ca.rotate_mesh(now=NOW, keep_previous=0)


# --- certificate secrets -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key_type", "size", "expected"),
    [
        ("ecdsa", 384, ec.EllipticCurvePublicKey),
        ("rsa", 2048, rsa.RSAPublicKey),
        ("ed25519", None, ed25519.Ed25519PublicKey),
    ],
)
def test_secret_certificate_of_each_key_type_chains_to_the_root(
    ca: CoordinatorCA, tmp_path: Path, key_type: str, size: int | None, expected: type
) -> None:
    secret = ca.issue_secret_cert(
        key_type=key_type,  # type: ignore[arg-type]
        key_size=size,
        common_name="db.internal",
        dns_names=["db.internal"],
        ips=["192.0.2.1"],
        key_usage=["digital-signature", "key_encipherment", "server-auth"],
        now=NOW,
    )
    assert isinstance(secret.certificate.public_key(), expected)
    if size is not None:
        assert secret.certificate.public_key().key_size == size  # type: ignore[union-attr]
    assert secret.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "db.internal"
    )
    usage = secret.certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment and not usage.key_cert_sign
    eku = secret.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert secret.chain == (ca.mesh.certificate,)
    verify_chain(secret.certificate, secret.chain, ca.root_certificate, NOW)
    _assert_openssl_accepts(
        _openssl_verify(tmp_path, secret.certificate, secret.chain, ca.root_certificate, NOW)
    )


def test_secret_certificate_issued_by_another_secret(ca: CoordinatorCA, tmp_path: Path) -> None:
    intermediate = ca.issue_secret_cert(
        key_type="ecdsa", common_name="tenant CA", is_ca=True, now=NOW
    )
    leaf = ca.issue_secret_cert(
        key_type="ecdsa", common_name="tenant leaf", issuer=intermediate, now=NOW
    )
    assert leaf.certificate.issuer == intermediate.certificate.subject
    assert leaf.chain == (intermediate.certificate, ca.mesh.certificate)
    verify_chain(leaf.certificate, leaf.chain, ca.root_certificate, NOW)
    _assert_openssl_accepts(
        _openssl_verify(tmp_path, leaf.certificate, leaf.chain, ca.root_certificate, NOW)
    )


def test_secret_issued_by_a_non_ca_certificate_is_refused(ca: CoordinatorCA) -> None:
    plain = ca.issue_secret_cert(key_type="ecdsa", common_name="leaf", now=NOW)
    with pytest.raises(ConfigError):
        ca.issue_secret_cert(key_type="ecdsa", common_name="x", issuer=plain, now=NOW)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"key_type": "dsa"},
        {"key_type": "rsa", "key_size": 1024},
        {"key_type": "ecdsa", "key_size": 192},
        {"key_type": "ed25519", "key_size": 448},
        {"key_type": "ecdsa", "key_usage": ["teleport"]},
        {"key_type": "ecdsa", "ips": ["not-an-ip"]},
        {"key_type": "ecdsa", "common_name": ""},
        {"key_type": "ecdsa", "validity": dt.timedelta(0)},
    ],
)
def test_bad_secret_certificate_templates_are_refused(
    ca: CoordinatorCA, kwargs: dict[str, object]
) -> None:
    arguments: dict[str, object] = {"common_name": "x", "now": NOW, **kwargs}
    with pytest.raises(ConfigError):
        ca.issue_secret_cert(**arguments)  # type: ignore[arg-type]


# --- serialisation -------------------------------------------------------------------------


def test_coordinator_ca_round_trips_through_bytes(ca: CoordinatorCA) -> None:
    rotated = ca.rotate_mesh(now=NOW)
    restored = CoordinatorCA.from_bytes(rotated.to_bytes())
    assert restored.root_certificate == rotated.root_certificate
    assert restored.trust_bundle() == rotated.trust_bundle()
    assert restored.generation == 2
    leaf = restored.issue_leaf(_ec_csr(), service="web", instance="1", simulated=False, now=NOW)
    verify_chain(leaf, rotated.trust_bundle(), rotated.root_certificate, NOW)


def test_ca_state_with_a_foreign_mesh_intermediate_is_refused(ca: CoordinatorCA) -> None:
    import json

    document = json.loads(ca.to_bytes())
    document["mesh"] = json.loads(CoordinatorCA.create(now=NOW).to_bytes())["mesh"]
    with pytest.raises(VerificationError) as info:
        CoordinatorCA.from_bytes(json.dumps(document).encode())
    assert info.value.reason == "pki_state_malformed"


def test_certified_key_with_a_mismatched_private_key_is_refused(ca: CoordinatorCA) -> None:
    document = ca.mesh.to_dict()
    document["private_key"] = ca.root.to_dict()["private_key"]
    with pytest.raises(VerificationError) as info:
        CertifiedKey.from_dict(document)
    assert info.value.reason == "pki_state_malformed"


@pytest.mark.parametrize("data", [b"", b"[]", b"{}", b'{"format": "sealpod-coordinator-ca-v1"}'])
def test_garbage_ca_state_is_refused(data: bytes) -> None:
    with pytest.raises(VerificationError):
        CoordinatorCA.from_bytes(data)


def test_certified_key_round_trips_and_hides_its_key(ca: CoordinatorCA) -> None:
    secret = ca.issue_secret_cert(key_type="ed25519", common_name="x", now=NOW)
    restored = CertifiedKey.from_bytes(secret.to_bytes())
    assert restored.certificate == secret.certificate
    assert restored.chain == secret.chain
    raw = secret.private_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    assert raw.hex() not in repr(secret) and "PRIVATE" not in repr(secret)
    assert "PRIVATE" not in repr(ca)
