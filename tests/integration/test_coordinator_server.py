"""The coordinator over real HTTPS on loopback, with real simulated quotes.

One coordinator (uvicorn in a thread, TLS certificate from its own root) serves the whole module;
tests attest it, pin its root, set the manifest and activate services, then try one attack each.
Every refusal must leave an audit entry with its reason. Expected report data is computed here
from DESIGN.md ("Binding evidence to keys"), not with the coordinator's helpers.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sealpod.coordinator import (
    CoordinatorServer,
    CoordinatorSettings,
    RequestRefusedError,
    activate,
    coordinator_identity,
    fetch_audit,
    fetch_manifest,
    get_secret,
    get_volume_tag,
    measure_distribution,
    pinned_client,
    reset_volume,
    set_secret,
    set_volume_tag,
    verify_coordinator,
)
from sealpod.errors import NetworkError, VerificationError
from sealpod.pki import CoordinatorCA, is_simulated, verify_chain
from sealpod.store import verify_audit_entries
from sealpod.store.audit import AuditEntry, AuditHead
from sealpod.tee import EnclaveIdentity, SimulatedPlatform, SimulationBackend

pytestmark = pytest.mark.integration

WEB_MRENCLAVE = bytes.fromhex("a1" * 32)
OTHER_MRENCLAVE = bytes.fromhex("b2" * 32)
SIGNER = bytes.fromhex("c3" * 32)
NONCE_TTL = 30.0


ALICE_KEY = ec.generate_private_key(ec.SECP256R1())
BOB_KEY = ec.generate_private_key(ec.SECP256R1())
VERA_KEY = ec.generate_private_key(ec.SECP256R1())


def _public_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def _manifest(*, allow_simulation: bool) -> dict[str, Any]:
    return {
        "version": 1,
        "packages": {"web": {"mrenclave": [WEB_MRENCLAVE.hex()]}},
        "services": {
            "web": {
                "package": "web",
                "max_instances": 3,
                "files": {
                    "/secrets/tls.crt": "{{ sealpod.cert_chain | pem }}",
                    "/secrets/tls.key": "{{ sealpod.private_key | pem }}",
                    "/secrets/ca.crt": "{{ sealpod.mesh_root | pem }}",
                    "/secrets/api.crt": "{{ secrets.api_cert.cert | pem }}",
                },
                "env": {"DB_KEY": "{{ secrets.db_key | hex }}"},
                "argv": ["/app", "--instance={{ sealpod.instance }}"],
                "volumes": {"data": "/data"},
            },
            "single": {"package": "web", "max_instances": 1},
            "pair": {"package": "web", "max_instances": 2},
            "cli": {
                "package": "web",
                "env": {"DB_KEY": "{{ secrets.db_key | hex }}"},
                "files": {"/etc/cli.conf": "instance={{ sealpod.instance }}\n"},
            },
            "tok": {"package": "web", "env": {"TOKEN": "{{ secrets.api_token | raw }}"}},
        },
        "secrets": {
            "db_key": {"type": "symmetric-key", "size": 256},
            "api_token": {"type": "plain", "user_defined": True},
            "api_cert": {
                "type": "cert-ecdsa",
                "certificate": {"common_name": "api", "dns_names": ["api.example"]},
            },
        },
        "volumes": {"data": {"rollback_protected": True}},
        "users": {
            "alice": {"public_key": _public_pem(ALICE_KEY), "roles": ["token-writer"]},
            "bob": {"public_key": _public_pem(BOB_KEY), "roles": ["token-reader"]},
            "vera": {"public_key": _public_pem(VERA_KEY), "roles": ["volume-admin"]},
        },
        "roles": {
            "token-writer": {
                "resource": "secrets",
                "names": ["api_token"],
                "actions": ["read", "write"],
            },
            "token-reader": {"resource": "secrets", "names": ["api_token"], "actions": ["read"]},
            "volume-admin": {"resource": "volumes", "names": ["data"], "actions": ["reset"]},
        },
        "policy": {"allow_simulation": allow_simulation},
    }


class Clock:
    """Real time plus an offset the tests move forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class Running:
    url: str
    root_pem: bytes
    platform: SimulatedPlatform
    clock: Clock
    server: CoordinatorServer = field(repr=False)


@contextmanager
def running_coordinator(
    state_dir: Path,
    platform: SimulatedPlatform,
    manifest: dict[str, Any] | None,
    *,
    state_url: str | None = None,
    **settings_overrides: Any,
) -> Iterator[Running]:
    clock = Clock()
    settings = CoordinatorSettings(
        state_url=state_url or f"sqlite:///{state_dir / 'state.db'}",
        sim_dir=platform.directory,
        nonce_ttl=NONCE_TTL,
        clock=clock,
        **settings_overrides,
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = CoordinatorServer.build(settings, host="127.0.0.1", port=port)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the coordinator did not start")
        time.sleep(0.02)
    url = f"https://127.0.0.1:{port}"
    try:
        verified = verify_coordinator(
            url,
            expect_mrenclave=coordinator_identity().mr_enclave,
            allow_simulation=True,
            simulated_root_der=platform.root_certificate_der(),
        )
        running = Running(url, verified.root_pem, platform, clock, server)
        if manifest is not None:
            with pinned_client(url, verified.root_pem) as client:
                response = client.post("/api/v1/manifest", json=manifest)
                assert response.status_code == 200, response.text
        yield running
    finally:
        server.stop()
        thread.join(timeout=20)
        sock.close()


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> SimulatedPlatform:
    return SimulatedPlatform.init(tmp_path_factory.mktemp("sim") / "platform")


@pytest.fixture(scope="module")
def coordinator(
    tmp_path_factory: pytest.TempPathFactory, platform: SimulatedPlatform
) -> Iterator[Running]:
    with running_coordinator(
        tmp_path_factory.mktemp("coordinator"), platform, _manifest(allow_simulation=True)
    ) as running:
        yield running


def _backend(
    platform: SimulatedPlatform,
    mr_enclave: bytes = WEB_MRENCLAVE,
    *,
    debug: bool = False,
) -> SimulationBackend:
    return SimulationBackend(
        platform, EnclaveIdentity(mr_enclave=mr_enclave, mr_signer=SIGNER, debug=debug)
    )


def _audit(running: Running) -> list[dict[str, Any]]:
    with pinned_client(running.url, running.root_pem) as client:
        body = client.get("/api/v1/audit").json()
    entries = [AuditEntry.from_dict(entry) for entry in body["entries"]]
    verify_audit_entries(entries, AuditHead(count=body["head"]["count"], hash=body["head"]["hash"]))
    return [dict(entry.event) for entry in entries]


def _spki(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _activation_body(
    running: Running,
    backend: SimulationBackend,
    service: str,
    instance: str,
    *,
    quoted_key: ec.EllipticCurvePrivateKey | None = None,
) -> dict[str, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service)]))
        .sign(key, hashes.SHA256())
    )
    with pinned_client(running.url, running.root_pem) as client:
        nonce = bytes.fromhex(client.post("/api/v1/activation/nonce").json()["nonce"])
    spki = _spki(quoted_key if quoted_key is not None else key)
    report_data = hashlib.sha256(b"sealpod-activation-v1" + spki + nonce).digest() + bytes(32)
    return {
        "service": service,
        "instance": instance,
        "csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
        "nonce": nonce.hex(),
        "quote": backend.quote(report_data).hex(),
        "collateral": running.platform.collateral(),
    }


def _post_activation(running: Running, body: dict[str, Any]) -> httpx.Response:
    with pinned_client(running.url, running.root_pem) as client:
        return client.post("/api/v1/activation", json=body)


def _assert_refused(
    running: Running, response: httpx.Response, status: int, code: str, instance: str
) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    last = _audit(running)[-1]
    assert last["type"] == "activation_refused"
    assert last["reason"] == code
    assert last["instance"] == instance


# -- the coordinator itself -------------------------------------------------------------------


def test_status_over_pinned_tls(coordinator: Running) -> None:
    with pinned_client(coordinator.url, coordinator.root_pem) as client:
        status = client.get("/api/v1/status").json()
    assert status["state"] == "accepting-services"
    assert status["simulated"] is True


def test_coordinator_attests_with_its_distribution_measurement(coordinator: Running) -> None:
    verified = verify_coordinator(
        coordinator.url,
        expect_mrenclave=coordinator_identity().mr_enclave,
        allow_simulation=True,
        simulated_root_der=coordinator.platform.root_certificate_der(),
    )
    assert verified.root_pem == coordinator.root_pem
    assert verified.simulated is True
    assert verified.evidence.mr_enclave == coordinator_identity().mr_enclave


def test_coordinator_with_another_measurement_is_refused(coordinator: Running) -> None:
    with pytest.raises(VerificationError) as caught:
        verify_coordinator(
            coordinator.url,
            expect_mrenclave=OTHER_MRENCLAVE,
            allow_simulation=True,
            simulated_root_der=coordinator.platform.root_certificate_der(),
        )
    assert caught.value.reason == "mrenclave_mismatch"


def test_simulated_coordinator_is_refused_without_allow_simulation(coordinator: Running) -> None:
    with pytest.raises(VerificationError) as caught:
        verify_coordinator(
            coordinator.url,
            expect_mrenclave=coordinator_identity().mr_enclave,
            simulated_root_der=coordinator.platform.root_certificate_der(),
        )
    assert caught.value.reason == "simulation_not_allowed"


def test_server_not_holding_the_pinned_root_is_refused(coordinator: Running) -> None:
    impostor_root = CoordinatorCA.create(
        now=datetime.datetime.now(datetime.UTC)
    ).root_certificate.public_bytes(serialization.Encoding.PEM)
    with pytest.raises(NetworkError):
        activate(coordinator.url, impostor_root, "web", "impostor", _backend(coordinator.platform))


def test_manifest_set_twice_is_refused(coordinator: Running) -> None:
    with pinned_client(coordinator.url, coordinator.root_pem) as client:
        response = client.post("/api/v1/manifest", json=_manifest(allow_simulation=False))
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "manifest_already_set"
    last = _audit(coordinator)[-1]
    assert (last["type"], last["reason"]) == ("manifest_refused", "manifest_already_set")


# -- activation -------------------------------------------------------------------------------


def test_activation_delivers_rendered_secrets_and_a_mesh_certificate(
    coordinator: Running,
) -> None:
    backend = _backend(coordinator.platform)
    first = activate(coordinator.url, coordinator.root_pem, "web", "web-0", backend)
    second = activate(coordinator.url, coordinator.root_pem, "web", "web-1", backend)

    assert first.simulated is True
    assert len(bytes.fromhex(first.env["DB_KEY"])) == 32
    assert first.env["DB_KEY"] == second.env["DB_KEY"]  # a shared secret
    assert first.argv == ["/app", "--instance=web-0"]
    assert first.files["/secrets/tls.key"] == first.private_key_pem()
    assert first.files["/secrets/tls.key"] != second.files["/secrets/tls.key"]
    volume = first.volumes["data"]
    assert (volume.mount, volume.rollback_protected, len(volume.key)) == ("/data", True, 16)
    assert second.volumes["data"].key == volume.key  # one volume, one key
    assert volume.key.hex() not in repr(first) + repr(volume)

    root = x509.load_pem_x509_certificate(coordinator.root_pem)
    assert x509.load_pem_x509_certificate(first.files["/secrets/ca.crt"]) == root
    chain = x509.load_pem_x509_certificates(first.files["/secrets/tls.crt"])
    leaf, mesh = chain
    assert leaf == first.certificate
    assert leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == _spki(first.private_key)
    now = datetime.datetime.now(datetime.UTC)
    verified = verify_chain(leaf, [mesh], root, now, require_client_auth=True)
    assert verified[-1] == root
    assert mesh in first.trust_bundle
    assert "mesh CA" in mesh.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert is_simulated(leaf)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "web" in sans.get_values_for_type(x509.DNSName)
    assert "sealpod://service/web/web-0" in sans.get_values_for_type(x509.UniformResourceIdentifier)
    api_cert = x509.load_pem_x509_certificate(first.files["/secrets/api.crt"])
    assert api_cert.issuer == mesh.subject
    assert api_cert == x509.load_pem_x509_certificate(second.files["/secrets/api.crt"])

    events = _audit(coordinator)
    activations = [e for e in events if e["type"] == "activation"]
    assert [(e["service"], e["instance"]) for e in activations[-2:]] == [
        ("web", "web-0"),
        ("web", "web-1"),
    ]
    assert activations[-1]["mr_enclave"] == WEB_MRENCLAVE.hex()
    assert activations[-1]["secrets_released"] == ["api_cert", "db_key"]
    assert activations[-1]["volumes_released"] == ["data"]


def test_replayed_nonce_is_refused(coordinator: Running) -> None:
    body = _activation_body(coordinator, _backend(coordinator.platform), "web", "replay")
    assert _post_activation(coordinator, body).status_code == 200
    replay = _post_activation(coordinator, body)
    _assert_refused(coordinator, replay, 403, "nonce_reused", "replay")


def test_invented_nonce_is_refused(coordinator: Running) -> None:
    body = _activation_body(coordinator, _backend(coordinator.platform), "web", "invented")
    body["nonce"] = "00" * 32
    response = _post_activation(coordinator, body)
    _assert_refused(coordinator, response, 403, "nonce_unknown", "invented")


def test_expired_nonce_is_refused(coordinator: Running) -> None:
    body = _activation_body(coordinator, _backend(coordinator.platform), "web", "late")
    coordinator.clock.offset += NONCE_TTL + 5
    try:
        response = _post_activation(coordinator, body)
    finally:
        coordinator.clock.offset -= NONCE_TTL + 5
    _assert_refused(coordinator, response, 403, "nonce_expired", "late")


def test_quote_for_another_key_is_refused(coordinator: Running) -> None:
    someone_else = ec.generate_private_key(ec.SECP256R1())
    body = _activation_body(
        coordinator,
        _backend(coordinator.platform),
        "web",
        "stolen-quote",
        quoted_key=someone_else,
    )
    response = _post_activation(coordinator, body)
    _assert_refused(coordinator, response, 403, "report_data_mismatch", "stolen-quote")


def test_wrong_measurement_is_refused(coordinator: Running) -> None:
    backend = _backend(coordinator.platform, OTHER_MRENCLAVE)
    body = _activation_body(coordinator, backend, "web", "wrong-code")
    response = _post_activation(coordinator, body)
    _assert_refused(coordinator, response, 403, "mrenclave_mismatch", "wrong-code")


def test_debug_enclave_is_refused(coordinator: Running) -> None:
    backend = _backend(coordinator.platform, debug=True)
    body = _activation_body(coordinator, backend, "web", "debug")
    response = _post_activation(coordinator, body)
    _assert_refused(coordinator, response, 403, "debug_not_allowed", "debug")


def test_unknown_service_is_refused(coordinator: Running) -> None:
    body = _activation_body(coordinator, _backend(coordinator.platform), "web", "ghost")
    body["service"] = "ghost"
    response = _post_activation(coordinator, body)
    _assert_refused(coordinator, response, 404, "unknown_service", "ghost")


def test_too_many_instances_are_refused(coordinator: Running) -> None:
    backend = _backend(coordinator.platform)
    activate(coordinator.url, coordinator.root_pem, "single", "only", backend)
    body = _activation_body(coordinator, backend, "single", "second")
    response = _post_activation(coordinator, body)
    _assert_refused(coordinator, response, 409, "too_many_instances", "second")
    # The admitted instance may come back (a restart), without taking another slot.
    again = activate(coordinator.url, coordinator.root_pem, "single", "only", backend)
    assert again.instance == "only"


def test_tampered_quote_is_refused(coordinator: Running) -> None:
    body = _activation_body(coordinator, _backend(coordinator.platform), "web", "tampered")
    quote = bytearray(bytes.fromhex(body["quote"]))
    quote[48 + 64] ^= 0x01  # a bit of MRENCLAVE (report body offset 64), under the signature
    body["quote"] = bytes(quote).hex()
    response = _post_activation(coordinator, body)
    assert response.status_code == 403
    code = response.json()["error"]["code"]
    assert code == "bad_quote_signature"
    assert _audit(coordinator)[-1]["reason"] == code


def test_simulated_evidence_is_refused_when_the_manifest_forbids_it(
    tmp_path: Path, platform: SimulatedPlatform
) -> None:
    with running_coordinator(tmp_path, platform, _manifest(allow_simulation=False)) as strict:
        body = _activation_body(strict, _backend(platform), "web", "sim")
        response = _post_activation(strict, body)
        _assert_refused(strict, response, 403, "simulation_not_allowed", "sim")


def test_refused_activation_releases_nothing(coordinator: Running) -> None:
    body = _activation_body(
        coordinator, _backend(coordinator.platform, OTHER_MRENCLAVE), "web", "x"
    )
    response = _post_activation(coordinator, body)
    assert response.status_code == 403
    text = response.text
    assert "BEGIN CERTIFICATE" not in text
    assert "DB_KEY" not in text
    assert set(response.json()) == {"error"}


def test_manifest_is_fetched_with_a_valid_root_signature(coordinator: Running) -> None:
    signed = fetch_manifest(coordinator.url, coordinator.root_pem)
    assert signed.manifest["services"]["web"]["max_instances"] == 3
    assert signed.sha256 == hashlib.sha256(signed.canonical).digest()
    with pinned_client(coordinator.url, coordinator.root_pem) as client:
        status = client.get("/api/v1/status").json()
    assert status["manifest_sha256"] == signed.sha256.hex()


def test_parallel_activations_respect_max_instances(coordinator: Running) -> None:
    backend = _backend(coordinator.platform)
    outcomes: dict[str, str] = {}

    def attempt(instance: str) -> None:
        try:
            activate(coordinator.url, coordinator.root_pem, "pair", instance, backend)
            outcomes[instance] = "ok"
        except RequestRefusedError as exc:
            outcomes[instance] = exc.code

    threads = [threading.Thread(target=attempt, args=(f"p{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes.values()) == ["ok", "ok"] + ["too_many_instances"] * 4
    events = _audit(coordinator)  # also verifies the hash chain against the sealed head
    admitted = [
        e["instance"] for e in events if e["type"] == "activation" and e["service"] == "pair"
    ]
    assert sorted(admitted) == sorted(i for i, result in outcomes.items() if result == "ok")


def test_cli_serve_runs_https_until_terminated(tmp_path: Path, platform: SimulatedPlatform) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    script = (
        "import sealpod.cli as cli; "
        "cli._COMMANDS['coordinator'] = 'sealpod.cli.coordinator:coordinator'; cli.main()"
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            script,
            "coordinator",
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--state",
            f"sqlite:///{tmp_path}/state.db",
            "--sim-dir",
            str(platform.directory),
            "--log-format",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                # Measured now, not cached: in a development checkout the distribution's
                # files (hence the identity) change whenever someone edits one.
                verified = verify_coordinator(
                    url,
                    expect_mrenclave=measure_distribution().mr_enclave,
                    allow_simulation=True,
                    simulated_root_der=platform.root_certificate_der(),
                    timeout=2,
                )
                break
            except NetworkError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.1)
        with pinned_client(url, verified.root_pem) as client:
            assert client.get("/api/v1/status").json()["state"] == "accepting-manifest"
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr.decode()
    fingerprint = verified.root_certificate.fingerprint(hashes.SHA256()).hex()
    assert f"root certificate SHA-256: {fingerprint}" in stderr.decode()
    logs = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    assert any(
        entry["logger"] == "sealpod.tee.backend" and "SIMULATED" in entry["message"]
        for entry in logs
    )


def test_metrics_count_activations_and_refusals(coordinator: Running) -> None:
    backend = _backend(coordinator.platform)
    # web-0 exists already (an earlier test): a restart does not take another slot.
    activate(coordinator.url, coordinator.root_pem, "web", "web-0", backend)
    body = _activation_body(
        coordinator, _backend(coordinator.platform, OTHER_MRENCLAVE), "web", "m"
    )
    assert _post_activation(coordinator, body).status_code == 403
    with pinned_client(coordinator.url, coordinator.root_pem) as client:
        response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    values = {}
    for line in response.text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    assert values['sealpod_activations_total{service="web"}'] >= 1
    assert values['sealpod_activation_refusals_total{reason="mrenclave_mismatch"}'] >= 1
    assert values["sealpod_activation_duration_seconds_count"] >= 2


def test_coordinator_on_postgresql(
    tmp_path: Path, platform: SimulatedPlatform, postgres_url: str
) -> None:
    manifest = _manifest(allow_simulation=True)
    with running_coordinator(tmp_path, platform, manifest, state_url=postgres_url) as running:
        backend = _backend(platform)
        result = activate(running.url, running.root_pem, "web", "pg-0", backend)
        assert len(bytes.fromhex(result.env["DB_KEY"])) == 32
        body = _activation_body(running, backend, "web", "pg-replay")
        assert _post_activation(running, body).status_code == 200
        _assert_refused(running, _post_activation(running, body), 403, "nonce_reused", "pg-replay")
        root_pem = running.root_pem
    # A restart on the same database keeps the root, the manifest and the shared secrets.
    with running_coordinator(tmp_path, platform, None, state_url=postgres_url) as again:
        assert again.root_pem == root_pem
        second = activate(again.url, again.root_pem, "web", "pg-1", _backend(platform))
        assert second.env["DB_KEY"] == result.env["DB_KEY"]


def test_user_defined_secret_reaches_services_only_after_an_authorised_user_sets_it(
    coordinator: Running,
) -> None:
    backend = _backend(coordinator.platform)
    body = _activation_body(coordinator, backend, "tok", "early")
    _assert_refused(
        coordinator, _post_activation(coordinator, body), 409, "secret_not_set", "early"
    )

    with pytest.raises(RequestRefusedError) as denied:
        set_secret(
            coordinator.url, coordinator.root_pem, "api_token", user="bob", key=BOB_KEY,
            value=b"from bob",
        )  # fmt: skip
    assert (denied.value.status, denied.value.code) == (403, "permission_denied")
    last = _audit(coordinator)[-1]
    assert (last["type"], last["user"], last["reason"]) == (
        "secret_set_refused",
        "bob",
        "permission_denied",
    )

    token = b"t0ken-\xe2\x9c\x93"
    set_secret(
        coordinator.url, coordinator.root_pem, "api_token", user="alice", key=ALICE_KEY, value=token
    )
    assert _audit(coordinator)[-1] == {"type": "secret_set", "user": "alice", "secret": "api_token"}
    read = get_secret(coordinator.url, coordinator.root_pem, "api_token", user="bob", key=BOB_KEY)
    assert read.value == token
    assert "t0ken" not in repr(read)

    result = activate(coordinator.url, coordinator.root_pem, "tok", "late", backend)
    assert result.env["TOKEN"].encode() == token


def test_unsigned_secret_request_is_refused(coordinator: Running) -> None:
    with pinned_client(coordinator.url, coordinator.root_pem) as client:
        response = client.get("/api/v1/secrets/api_token")
    assert response.status_code == 401
    assert "Sealpod-Signature" in response.headers["www-authenticate"]
    assert response.json()["error"]["code"] == "auth_missing"
    assert _audit(coordinator)[-1]["reason"] == "auth_missing"


def test_replayed_signed_request_is_refused(coordinator: Running) -> None:
    from sealpod.coordinator.auth import authorization_header

    root = x509.load_pem_x509_certificate(coordinator.root_pem)
    header = authorization_header(
        ALICE_KEY,
        user="alice",
        method="GET",
        target="/api/v1/secrets/db_key",
        body=b"",
        root_sha256=root.fingerprint(hashes.SHA256()),
        time=int(time.time()),
    )
    with pinned_client(coordinator.url, coordinator.root_pem) as client:
        first = client.get("/api/v1/secrets/db_key", headers={"authorization": header})
        replay = client.get("/api/v1/secrets/db_key", headers={"authorization": header})
    # alice may not read db_key at all; the replay is caught before authorisation.
    assert (first.status_code, first.json()["error"]["code"]) == (403, "permission_denied")
    assert (replay.status_code, replay.json()["error"]["code"]) == (401, "request_replayed")


def test_volume_pin_moves_forward_only_by_compare_and_swap(coordinator: Running) -> None:
    url, root_pem = coordinator.url, coordinator.root_pem
    backend = _backend(coordinator.platform)
    # web-0 and web-1 were admitted earlier (max_instances 3): reuse web-0's slot.
    instance = activate(url, root_pem, "web", "web-0", backend)
    start = get_volume_tag(url, root_pem, instance, "data")
    first = set_volume_tag(
        url, root_pem, instance, "data", expected_version=start.version, tag=b"\x01" * 32
    )
    assert (first.version, first.tag) == (start.version + 1, b"\x01" * 32)
    assert get_volume_tag(url, root_pem, instance, "data") == first

    # A stale writer (an old copy of the volume, or a fork) cannot move the pin.
    with pytest.raises(RequestRefusedError) as stale:
        set_volume_tag(
            url, root_pem, instance, "data", expected_version=start.version, tag=b"\x02" * 32
        )
    assert (stale.value.status, stale.value.code) == (409, "volume_tag_conflict")
    last = _audit(coordinator)[-1]
    assert (last["type"], last["reason"]) == ("volume_tag_refused", "volume_tag_conflict")

    with pytest.raises(RequestRefusedError) as denied:
        reset_volume(url, root_pem, "data", user="bob", key=BOB_KEY)
    assert denied.value.code == "permission_denied"
    reset = reset_volume(url, root_pem, "data", user="vera", key=VERA_KEY)
    assert (reset.version, reset.tag) == (first.version + 1, None)


def test_service_that_does_not_mount_the_volume_cannot_see_its_pin(coordinator: Running) -> None:
    other = activate(
        coordinator.url, coordinator.root_pem, "single", "only", _backend(coordinator.platform)
    )
    with pytest.raises(RequestRefusedError) as caught:
        get_volume_tag(coordinator.url, coordinator.root_pem, other, "data")
    assert (caught.value.status, caught.value.code) == (403, "volume_not_mounted")


def test_volume_pin_request_with_a_self_made_certificate_is_refused(coordinator: Running) -> None:
    genuine = activate(
        coordinator.url, coordinator.root_pem, "web", "web-0", _backend(coordinator.platform)
    )
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web")])
    now = datetime.datetime.now(datetime.UTC)
    forged = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(genuine.certificate.issuer)  # claims the mesh CA as issuer
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier("sealpod://service/web/web-0")]
            ),
            False,
        )
        .sign(key, hashes.SHA256())
    )
    impostor = dataclasses.replace(genuine, private_key=key, certificate=forged)
    with pytest.raises(RequestRefusedError) as caught:
        get_volume_tag(coordinator.url, coordinator.root_pem, impostor, "data")
    assert (caught.value.status, caught.value.code) == (401, "certificate_invalid")


def test_whole_audit_log_is_fetched_and_its_chain_checked(coordinator: Running) -> None:
    entries, head = fetch_audit(coordinator.url, coordinator.root_pem)
    assert head is not None
    assert len(entries) == head.count > 5
    assert [entry.seq for entry in entries] == list(range(head.count))
    assert entries[0].event["type"] == "coordinator_initialized"
    assert entries[-1].hash == head.hash


def test_expired_collateral_is_refused(coordinator: Running) -> None:
    # The simulated collateral is valid for 30 days (DEFAULT_COLLATERAL_VALIDITY): 40 days on,
    # TCB info, QE identity and CRLs are all past nextUpdate.
    coordinator.clock.offset += 40 * 24 * 3600
    try:
        body = _activation_body(coordinator, _backend(coordinator.platform), "web", "stale")
        response = _post_activation(coordinator, body)
    finally:
        coordinator.clock.offset -= 40 * 24 * 3600
    _assert_refused(coordinator, response, 403, "collateral_expired", "stale")
