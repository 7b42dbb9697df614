"""The coordinator API in-process (FastAPI TestClient, no TLS): states, errors, OpenAPI,
manifest signature, persistence and recovery. The real HTTPS server and the activation attacks
are in tests/integration/test_coordinator_server.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

with warnings.catch_warnings():
    # starlette asks for its "httpx2" fork; the plain httpx it still supports is what we have.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from sealpod.coordinator import CoordinatorSettings, create_app
from sealpod.errors import VerificationError
from sealpod.store import verify_audit_entries
from sealpod.store.audit import AuditEntry, AuditHead
from sealpod.tee import SimulatedPlatform

MANIFEST: dict[str, Any] = {
    "version": 1,
    "packages": {"web": {"mrenclave": ["11" * 32]}},
    "services": {"web": {"package": "web", "env": {"KEY": "{{ secrets.k | hex }}"}}},
    "secrets": {"k": {"type": "symmetric-key", "size": 128}},
    "policy": {"allow_simulation": True},
}


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> SimulatedPlatform:
    return SimulatedPlatform.init(tmp_path_factory.mktemp("sim") / "platform")


def _settings(platform: SimulatedPlatform, state: Path) -> CoordinatorSettings:
    return CoordinatorSettings(state_url=f"sqlite:///{state}", sim_dir=platform.directory)


@pytest.fixture
def client(platform: SimulatedPlatform, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(platform, tmp_path / "state.db"))) as test_client:
        yield test_client


def _error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)
    return dict(body["error"])


def _audit(client: TestClient) -> list[dict[str, Any]]:
    body = client.get("/api/v1/audit").json()
    entries = [AuditEntry.from_dict(entry) for entry in body["entries"]]
    head = AuditHead(count=body["head"]["count"], hash=body["head"]["hash"])
    verify_audit_entries(entries, head)
    return [dict(entry.event) for entry in entries]


def test_fresh_coordinator_accepts_a_manifest(client: TestClient) -> None:
    status = client.get("/api/v1/status").json()
    assert status["state"] == "accepting-manifest"
    assert status["simulated"] is True
    assert status["manifest_sha256"] is None
    assert client.get("/healthz").json() == {"status": "ok"}
    assert _audit(client)[0]["type"] == "coordinator_initialized"


def test_openapi_document_lists_the_api(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    for path in (
        "/api/v1/status",
        "/api/v1/quote",
        "/api/v1/manifest",
        "/api/v1/activation/nonce",
        "/api/v1/activation",
        "/api/v1/audit",
        "/healthz",
        "/metrics",
        "/api/v1/secrets/{name}",
    ):
        assert path in document["paths"], path
    assert "ErrorResponse" in document["components"]["schemas"]


def test_unknown_route_is_a_json_error(client: TestClient) -> None:
    _error(client.get("/api/v1/nothing"), 404, "not_found")
    _error(client.delete("/api/v1/status"), 405, "method_not_allowed")


def test_quote_needs_a_sensible_nonce(client: TestClient) -> None:
    _error(client.get("/api/v1/quote", params={"nonce": "zz"}), 422, "invalid_request")
    _error(client.get("/api/v1/quote", params={"nonce": "00" * 4}), 400, "invalid_nonce")
    _error(client.get("/api/v1/quote"), 422, "invalid_request")


def test_quote_binds_the_root_certificate_and_nonce(client: TestClient) -> None:
    nonce = bytes(range(32))
    body = client.get("/api/v1/quote", params={"nonce": nonce.hex()}).json()
    root = x509.load_pem_x509_certificate(body["root_certificate"].encode())
    from cryptography.hazmat.primitives.serialization import Encoding

    expected = hashlib.sha256(root.public_bytes(Encoding.DER) + nonce).digest() + bytes(32)
    quote = bytes.fromhex(body["quote"])
    # SGX DCAP v3 quote: 48-byte header, report body with report_data at offset 320 (64 bytes).
    assert quote[48 + 320 : 48 + 384] == expected
    assert body["simulated"] is True
    assert body["collateral"] is not None


def test_nothing_to_activate_before_a_manifest(client: TestClient) -> None:
    _error(client.post("/api/v1/activation/nonce"), 409, "no_manifest")
    _error(client.get("/api/v1/manifest"), 404, "no_manifest")


def test_invalid_manifest_is_refused_with_every_problem(client: TestClient) -> None:
    broken = json.loads(json.dumps(MANIFEST))
    broken["services"]["web"]["env"]["OTHER"] = "{{ secrets.missing | hex }}"
    broken["services"]["web"]["package"] = "nope"
    error = _error(client.post("/api/v1/manifest", json=broken), 422, "manifest_invalid")
    paths = {problem["path"] for problem in error["problems"]}
    assert "services.web.package" in paths
    assert "services.web.env.OTHER" in paths
    assert client.get("/api/v1/status").json()["state"] == "accepting-manifest"
    last = _audit(client)[-1]
    assert last["type"] == "manifest_refused"
    assert last["reason"] == "manifest_invalid"


def test_manifest_is_served_with_the_root_signature(client: TestClient) -> None:
    response = client.post("/api/v1/manifest", json=MANIFEST)
    assert response.status_code == 200, response.text
    assert response.json()["recovery_shares"] == {}
    body = client.get("/api/v1/manifest").json()
    canonical = json.dumps(
        body["manifest"], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()
    assert body["sha256"] == hashlib.sha256(canonical).hexdigest()
    assert body["sha256"] == response.json()["manifest_sha256"]
    root_pem = client.get("/api/v1/quote", params={"nonce": "00" * 32}).json()["root_certificate"]
    root_key = x509.load_pem_x509_certificate(root_pem.encode()).public_key()
    assert isinstance(root_key, ec.EllipticCurvePublicKey)
    signature = base64.b64decode(body["signature"])
    root_key.verify(signature, canonical, ec.ECDSA(hashes.SHA384()))
    with pytest.raises(InvalidSignature):
        root_key.verify(signature, canonical + b" ", ec.ECDSA(hashes.SHA384()))
    assert client.get("/api/v1/status").json()["state"] == "accepting-services"
    assert _audit(client)[-1]["type"] == "manifest_set"


def test_manifest_set_twice_is_refused(client: TestClient) -> None:
    assert client.post("/api/v1/manifest", json=MANIFEST).status_code == 200
    other = {**MANIFEST, "policy": {"allow_simulation": False}}
    _error(client.post("/api/v1/manifest", json=other), 409, "manifest_already_set")
    last = _audit(client)[-1]
    assert (last["type"], last["reason"]) == ("manifest_refused", "manifest_already_set")


def test_yaml_manifest_is_accepted(client: TestClient) -> None:
    document = (
        "version: 1\npackages:\n  web: {mrenclave: ['" + "22" * 32 + "']}\n"
        "services:\n  web: {package: web}\n"
    )
    response = client.post(
        "/api/v1/manifest", content=document, headers={"content-type": "application/yaml"}
    )
    assert response.status_code == 200, response.text


def test_state_survives_a_restart(platform: SimulatedPlatform, tmp_path: Path) -> None:
    settings = _settings(platform, tmp_path / "state.db")
    with TestClient(create_app(settings)) as first:
        assert first.post("/api/v1/manifest", json=MANIFEST).status_code == 200
        root = first.get("/api/v1/quote", params={"nonce": "01" * 16}).json()["root_certificate"]
        digest = first.get("/api/v1/status").json()["manifest_sha256"]
    with TestClient(create_app(settings)) as second:
        status = second.get("/api/v1/status").json()
        assert status["state"] == "accepting-services"
        assert status["manifest_sha256"] == digest
        again = second.get("/api/v1/quote", params={"nonce": "02" * 16}).json()
        assert again["root_certificate"] == root


def test_state_sealed_to_another_platform_means_recovery(
    platform: SimulatedPlatform, tmp_path: Path
) -> None:
    state = tmp_path / "state.db"
    with TestClient(create_app(_settings(platform, state))) as first:
        assert first.post("/api/v1/manifest", json=MANIFEST).status_code == 200
    other = SimulatedPlatform.init(tmp_path / "other-platform")
    with TestClient(create_app(_settings(other, state))) as second:
        assert second.get("/api/v1/status").json()["state"] == "recovery"
        _error(second.get("/api/v1/quote", params={"nonce": "00" * 16}), 503, "recovery_mode")
        _error(second.get("/api/v1/manifest"), 503, "recovery_mode")
        _error(second.post("/api/v1/activation/nonce"), 503, "recovery_mode")


def _populated_state(platform: SimulatedPlatform, state: Path) -> None:
    with TestClient(create_app(_settings(platform, state))) as client:
        assert client.post("/api/v1/manifest", json=MANIFEST).status_code == 200


def test_tampered_sealed_state_is_refused_at_start(
    platform: SimulatedPlatform, tmp_path: Path
) -> None:
    state = tmp_path / "state.db"
    _populated_state(platform, state)
    with sqlite3.connect(state) as db:
        (blob,) = db.execute(
            "SELECT blob FROM sealpod_records WHERE namespace = 'coordinator' AND key = 'manifest'"
        ).fetchone()
        flipped = bytes(blob[:-1]) + bytes([blob[-1] ^ 1])
        db.execute(
            "UPDATE sealpod_records SET blob = ? WHERE namespace = 'coordinator' "
            "AND key = 'manifest'",
            (flipped,),
        )
    with pytest.raises(VerificationError) as caught:
        create_app(_settings(platform, state))
    assert caught.value.reason in ("record_authentication_failed", "state_digest_mismatch")


def test_truncated_audit_log_is_refused_at_start(
    platform: SimulatedPlatform, tmp_path: Path
) -> None:
    state = tmp_path / "state.db"
    _populated_state(platform, state)
    with sqlite3.connect(state) as db:
        db.execute(
            "DELETE FROM sealpod_records WHERE namespace = 'audit' AND key = "
            "(SELECT MAX(key) FROM sealpod_records WHERE namespace = 'audit')"
        )
    with pytest.raises(VerificationError) as caught:
        create_app(_settings(platform, state))
    assert caught.value.reason == "state_digest_mismatch"


def test_oversized_body_is_refused_before_it_is_read(client: TestClient) -> None:
    from sealpod.coordinator.app import MAX_BODY_BYTES

    huge = b"{" + b" " * MAX_BODY_BYTES + b"}"
    _error(client.post("/api/v1/manifest", content=huge), 413, "too_large")

    def chunks() -> Iterator[bytes]:
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b" " * 65536

    _error(client.post("/api/v1/manifest", content=chunks()), 413, "too_large")
    assert client.get("/api/v1/status").json()["state"] == "accepting-manifest"


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=12,
)
_ACTIVATION_FIELDS = ("service", "instance", "csr", "nonce", "quote", "collateral")


def test_malformed_requests_never_cause_a_server_error(client: TestClient) -> None:
    assert client.post("/api/v1/manifest", json=MANIFEST).status_code == 200
    nonce = client.post("/api/v1/activation/nonce").json()["nonce"]

    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        body=st.dictionaries(st.sampled_from(_ACTIVATION_FIELDS), _JSON, max_size=6),
        raw=st.binary(max_size=200),
        query=st.text(max_size=80),
    )
    def check(body: dict[str, Any], raw: bytes, query: str) -> None:
        plausible = {
            "service": "web",
            "instance": "i",
            "csr": "-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n",
            "nonce": nonce,
            "quote": "00" * 64,
            "collateral": {},
        }
        for response in (
            client.post("/api/v1/activation", json=body),
            client.post("/api/v1/activation", json={**plausible, **body}),
            client.post("/api/v1/activation", content=raw),
            client.post("/api/v1/manifest/updates", content=raw),
            client.get("/api/v1/quote", params={"nonce": query}),
            client.get("/api/v1/audit", params={"start": query, "limit": query}),
        ):
            assert response.status_code < 500, response.text
            assert set(response.json()) == {"error"} or response.status_code == 200

    check()


def test_replicas_sharing_the_state_serve_the_same_manifest(
    platform: SimulatedPlatform, tmp_path: Path
) -> None:
    settings = _settings(platform, tmp_path / "state.db")
    with TestClient(create_app(settings)) as first, TestClient(create_app(settings)) as second:
        assert second.get("/api/v1/status").json()["state"] == "accepting-manifest"
        assert first.post("/api/v1/manifest", json=MANIFEST).status_code == 200
        _error(second.post("/api/v1/manifest", json=MANIFEST), 409, "manifest_already_set")
        status = second.get("/api/v1/status").json()
        assert status["state"] == "accepting-services"
        assert status["manifest_sha256"] == first.get("/api/v1/status").json()["manifest_sha256"]
        assert second.get("/api/v1/manifest").json() == first.get("/api/v1/manifest").json()
        assert second.post("/api/v1/activation/nonce").status_code == 200
        root = "root_certificate"
        nonce = {"nonce": "07" * 16}
        assert (
            first.get("/api/v1/quote", params=nonce).json()[root]
            == second.get("/api/v1/quote", params=nonce).json()[root]
        )


def _activation(client: TestClient, platform: SimulatedPlatform, nonce_hex: str) -> dict[str, Any]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    from sealpod.tee import EnclaveIdentity, SimulationBackend

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web")]))
        .sign(key, hashes.SHA256())
    )
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    nonce = bytes.fromhex(nonce_hex)
    report_data = hashlib.sha256(b"sealpod-activation-v1" + spki + nonce).digest() + bytes(32)
    backend = SimulationBackend(
        platform, EnclaveIdentity(mr_enclave=bytes.fromhex("11" * 32), mr_signer=bytes(32))
    )
    return {
        "service": "web",
        "instance": "i0",
        "csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
        "nonce": nonce_hex,
        "quote": backend.quote(report_data).hex(),
        "collateral": platform.collateral(),
    }


def test_nonce_replayed_at_another_replica_is_refused(
    platform: SimulatedPlatform, tmp_path: Path
) -> None:
    settings = _settings(platform, tmp_path / "state.db")
    with TestClient(create_app(settings)) as first, TestClient(create_app(settings)) as second:
        assert first.post("/api/v1/manifest", json=MANIFEST).status_code == 200
        nonce = first.post("/api/v1/activation/nonce").json()["nonce"]
        body = _activation(first, platform, nonce)
        # A nonce from one replica is good at another (they share the sealed nonce key)...
        accepted = second.post("/api/v1/activation", json=body)
        assert accepted.status_code == 200, accepted.text
        assert len(bytes.fromhex(accepted.json()["env"]["KEY"])) == 16
        # ...but only once, wherever it is replayed.
        _error(first.post("/api/v1/activation", json=body), 403, "nonce_reused")
        _error(second.post("/api/v1/activation", json=body), 403, "nonce_reused")


def test_nonce_of_a_refused_activation_cannot_be_retried(
    platform: SimulatedPlatform, client: TestClient
) -> None:
    assert client.post("/api/v1/manifest", json=MANIFEST).status_code == 200
    nonce = client.post("/api/v1/activation/nonce").json()["nonce"]
    body = _activation(client, platform, nonce)
    _error(
        client.post("/api/v1/activation", json={**body, "collateral": None}),
        400,
        "collateral_required",
    )
    _error(client.post("/api/v1/activation", json=body), 403, "nonce_reused")
