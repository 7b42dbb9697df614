"""Signed user requests (sealpod.coordinator.auth): the format, and one test per attack."""

from __future__ import annotations

import base64
import datetime
import hashlib
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from sealpod.coordinator.auth import (
    RequestAuthenticator,
    authorization_header,
    service_authorization_header,
)
from sealpod.coordinator.errors import RequestRefusedError
from sealpod.manifest import User
from sealpod.pki import CoordinatorCA

ROOT_SHA256 = hashlib.sha256(b"coordinator root").digest()
OTHER_ROOT_SHA256 = hashlib.sha256(b"another coordinator").digest()
NOW = 1_767_225_600
PATH = "/api/v1/secrets/api_token"
BODY = b'{"value":"c2VjcmV0"}'

ALICE_KEY = ec.generate_private_key(ec.SECP256R1())
CAROL_KEY = ed25519.Ed25519PrivateKey.generate()
DAVE_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _public_pem(key: Any) -> str:
    return str(
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


USERS = {
    "alice": User(public_key=_public_pem(ALICE_KEY)),
    "carol": User(public_key=_public_pem(CAROL_KEY)),
    "dave": User(public_key=_public_pem(DAVE_KEY)),
}


def _header(key: Any = ALICE_KEY, user: str = "alice", **overrides: Any) -> str:
    arguments: dict[str, Any] = {
        "user": user,
        "method": "PUT",
        "target": PATH,
        "body": BODY,
        "root_sha256": ROOT_SHA256,
        "time": NOW,
    }
    arguments.update(overrides)
    return authorization_header(key, **arguments)


def _check(header: str | None, *, now: float = NOW, **overrides: Any) -> str:
    authenticator = overrides.pop("authenticator", None) or RequestAuthenticator()
    request: dict[str, Any] = {
        "method": "PUT",
        "target": PATH,
        "body": BODY,
        "users": USERS,
        "root_sha256": ROOT_SHA256,
        "now": now,
    }
    request.update(overrides)
    return str(authenticator.authenticate(header, **request))


def _refused(code: str, header: str | None, **overrides: Any) -> None:
    with pytest.raises(RequestRefusedError) as caught:
        _check(header, **overrides)
    assert caught.value.code == code
    assert caught.value.status == 401


def test_signing_string_follows_the_documented_format() -> None:
    nonce = "ab" * 16
    text = "\n".join(
        [
            "sealpod-request-v1",
            "PUT",
            PATH,
            str(NOW),
            nonce,
            hashlib.sha256(BODY).hexdigest(),
            ROOT_SHA256.hex(),
        ]
    ).encode()
    signature = base64.b64encode(ALICE_KEY.sign(text, ec.ECDSA(hashes.SHA256()))).decode()
    header = (
        f'Sealpod-Signature user="alice", time="{NOW}", nonce="{nonce}", signature="{signature}"'
    )
    assert _check(header) == "alice"


def test_rsa_pss_and_ed25519_users_are_accepted() -> None:
    assert _check(_header(CAROL_KEY, "carol")) == "carol"
    assert _check(_header(DAVE_KEY, "dave")) == "dave"
    nonce = "cd" * 16
    text = "\n".join(
        ["sealpod-request-v1", "PUT", PATH, str(NOW), nonce, hashlib.sha256(BODY).hexdigest(),
         ROOT_SHA256.hex()]
    ).encode()  # fmt: skip
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    signature = base64.b64encode(DAVE_KEY.sign(text, pss, hashes.SHA256())).decode()
    header = (
        f'Sealpod-Signature user="dave", time="{NOW}", nonce="{nonce}", signature="{signature}"'
    )
    assert _check(header) == "dave"


def test_unsigned_request_is_refused() -> None:
    _refused("auth_missing", None)
    _refused("auth_missing", "")


def test_other_scheme_is_refused() -> None:
    _refused("auth_malformed", "Bearer abc")


def test_malformed_parameters_are_refused() -> None:
    good = _header()
    _refused("auth_malformed", good.replace('signature="', 'signature="!!'))
    _refused("auth_malformed", good + ', user="bob"')
    _refused("auth_malformed", good.replace(f'time="{NOW}"', 'time="soon"'))
    _refused("auth_malformed", good.split(", signature=")[0])


def test_tampered_body_is_refused() -> None:
    _refused("signature_invalid", _header(), body=b'{"value":"b3RoZXI="}')


def test_signature_moved_to_another_path_is_refused() -> None:
    _refused("signature_invalid", _header(), target="/api/v1/secrets/other")


def test_signature_moved_to_another_method_is_refused() -> None:
    _refused("signature_invalid", _header(), method="GET")


def test_request_for_another_coordinator_is_refused() -> None:
    _refused("signature_invalid", _header(root_sha256=OTHER_ROOT_SHA256))


def test_request_signed_by_another_users_key_is_refused() -> None:
    _refused("signature_invalid", _header(CAROL_KEY, "alice"))


def test_unknown_user_is_refused() -> None:
    _refused("unknown_user", _header(user="mallory"))


def test_old_request_is_refused() -> None:
    _refused("request_expired", _header(), now=NOW + 301)


def test_request_from_the_future_is_refused() -> None:
    _refused("request_expired", _header(), now=NOW - 301)


def test_replayed_request_is_refused() -> None:
    authenticator = RequestAuthenticator()
    header = _header()
    assert _check(header, authenticator=authenticator) == "alice"
    with pytest.raises(RequestRefusedError) as caught:
        _check(header, authenticator=authenticator, now=NOW + 10)
    assert caught.value.code == "request_replayed"
    # A fresh signature (new nonce) of the same request is fine.
    assert _check(_header(), authenticator=authenticator) == "alice"


# -- requests signed by a service instance ---------------------------------------------------


def _service_leaf(ca: Any, key: Any, at: datetime.datetime) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web")]))
        .sign(key, hashes.SHA256())
    )
    return ca.issue_leaf(csr, service="web", instance="w0", simulated=False, now=at)


MOMENT = datetime.datetime.fromtimestamp(NOW, datetime.UTC)
MESH = CoordinatorCA.create(now=MOMENT - datetime.timedelta(days=1))
OTHER_MESH = CoordinatorCA.create(now=MOMENT - datetime.timedelta(days=1))
SERVICE_KEY = ec.generate_private_key(ec.SECP256R1())
LEAF = _service_leaf(MESH, SERVICE_KEY, MOMENT)


def _service_check(header: str, ca: Any = MESH, now: float = NOW) -> tuple[str, str]:
    return RequestAuthenticator().authenticate_service(
        header,
        method="GET",
        target="/api/v1/volumes/data/tag",
        body=b"",
        ca=ca,
        root_sha256=ROOT_SHA256,
        now=now,
    )


def _service_header(key: Any = SERVICE_KEY, leaf: Any = LEAF) -> str:
    return service_authorization_header(
        key,
        leaf,
        method="GET",
        target="/api/v1/volumes/data/tag",
        body=b"",
        root_sha256=ROOT_SHA256,
        time=NOW,
    )


def test_service_request_names_its_service_and_instance() -> None:
    assert _service_check(_service_header()) == ("web", "w0")


def test_service_request_with_a_certificate_of_another_coordinator_is_refused() -> None:
    with pytest.raises(RequestRefusedError) as caught:
        _service_check(_service_header(), ca=OTHER_MESH)
    assert caught.value.code == "certificate_invalid"


def test_service_request_with_an_expired_certificate_is_refused() -> None:
    much_later = NOW + 400 * 24 * 3600
    leaf = _service_leaf(MESH, SERVICE_KEY, MOMENT)
    header = service_authorization_header(
        SERVICE_KEY, leaf, method="GET", target="/api/v1/volumes/data/tag", body=b"",
        root_sha256=ROOT_SHA256, time=much_later,
    )  # fmt: skip
    with pytest.raises(RequestRefusedError) as caught:
        _service_check(header, now=much_later)
    assert caught.value.code == "certificate_invalid"


def test_service_request_signed_by_another_key_is_refused() -> None:
    with pytest.raises(RequestRefusedError) as caught:
        _service_check(_service_header(key=ec.generate_private_key(ec.SECP256R1())))
    assert caught.value.code == "signature_invalid"
