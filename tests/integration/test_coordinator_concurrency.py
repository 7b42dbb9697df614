"""Concurrency: activations racing a manifest update, and worker processes sharing one state.

* 50 activations run in parallel while an update (2-of-N approvals) is applied: every answer is
  wholly from the old manifest or wholly from the new one (rendered env and files, and the
  generation of the mesh CA that issued the certificate), and the audit chain verifies.
* A coordinator with two worker processes (``SEALPOD_WORKERS=2``): a nonce issued by one worker
  is accepted by the other, its replay is refused by either, and ``max_instances`` holds when
  parallel activations land on both.

Report data and the expected generations are computed here (DESIGN.md, "Binding evidence to
keys"; the mesh CA's name), not with the coordinator's helpers.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from test_coordinator_server import WEB_MRENCLAVE, _audit, _backend, running_coordinator

from sealpod.coordinator import (
    approve_update,
    coordinator_identity,
    measure_distribution,
    pinned_client,
    propose_update,
    verify_coordinator,
)
from sealpod.store import AuditLog, open_store, verify_audit_entries
from sealpod.store.audit import AuditEntry, AuditHead
from sealpod.tee import SimulatedPlatform, SimulationBackend

pytestmark = pytest.mark.integration

ALICE = ec.generate_private_key(ec.SECP256R1())
CAROL = ec.generate_private_key(ec.SECP256R1())
PARALLEL = 50


def _public_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


OLD: dict[str, Any] = {
    "version": 1,
    "packages": {"web": {"mrenclave": [WEB_MRENCLAVE.hex()]}},
    "services": {
        "web": {
            "package": "web",
            "env": {"DB_KEY": "{{ secrets.db_key | hex }}", "MODE": "v1"},
            "files": {
                "/etc/mode": "v1",
                "/secrets/tls.crt": "{{ sealpod.cert_chain | pem }}",
            },
        },
        "capped": {"package": "web", "max_instances": 3},
    },
    "secrets": {"db_key": {"type": "symmetric-key", "size": 128}},
    "users": {
        "alice": {"public_key": _public_pem(ALICE), "roles": ["operators"]},
        "carol": {"public_key": _public_pem(CAROL), "roles": ["operators"]},
    },
    "roles": {"operators": {"resource": "manifest", "actions": ["update"]}},
    "governance": {"update_threshold": 2},
    "policy": {"allow_simulation": True},
}


def _new_manifest() -> dict[str, Any]:
    new = copy.deepcopy(OLD)
    new["services"]["web"]["env"]["MODE"] = "v2"
    new["services"]["web"]["files"]["/etc/mode"] = "v2"
    new["secrets"]["db_key"]["size"] = 256  # redefined: a new 32-byte value
    return new


# -- one activation over its own connection, by hand ----------------------------------------


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    server_certificate: bytes  # DER of the TLS certificate of the process that answered


def _request(
    connection: http.client.HTTPSConnection, method: str, path: str, body: Any = None
) -> tuple[int, dict[str, Any]]:
    payload = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if payload is not None else {}
    connection.request(method, path, body=payload, headers=headers)
    response = connection.getresponse()
    return response.status, json.loads(response.read() or b"{}")


def _connect(port: int, context: ssl.SSLContext) -> tuple[http.client.HTTPSConnection, bytes]:
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=60)
    connection.connect()
    sock = connection.sock
    if not isinstance(sock, ssl.SSLSocket):  # pragma: no cover - HTTPS always wraps
        raise TypeError("not a TLS socket")
    return connection, sock.getpeercert(binary_form=True) or b""


def _context(root_pem: bytes) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=root_pem.decode())


def _activation_body(
    backend: SimulationBackend,
    platform: SimulatedPlatform,
    service: str,
    instance: str,
    nonce: bytes,
    key: ec.EllipticCurvePrivateKey,
) -> dict[str, Any]:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service)]))
        .sign(key, hashes.SHA256())
    )
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    report_data = hashlib.sha256(b"sealpod-activation-v1" + spki + nonce).digest() + bytes(32)
    return {
        "service": service,
        "instance": instance,
        "csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
        "nonce": nonce.hex(),
        "quote": backend.quote(report_data).hex(),
        "collateral": platform.collateral(),
    }


def _activate_raw(
    port: int, root_pem: bytes, platform: SimulatedPlatform, service: str, instance: str
) -> Answer:
    backend = _backend(platform)
    connection, certificate = _connect(port, _context(root_pem))
    try:
        status, body = _request(connection, "POST", "/api/v1/activation/nonce")
        assert status == 200, body
        nonce = bytes.fromhex(body["nonce"])
        key = ec.generate_private_key(ec.SECP256R1())
        request = _activation_body(backend, platform, service, instance, nonce, key)
        status, body = _request(connection, "POST", "/api/v1/activation", request)
    finally:
        connection.close()
    return Answer(status, body, certificate)


def _mesh_generation(certificate: x509.Certificate) -> int:
    # The mesh CA is named "<coordinator name> mesh CA <generation>" (pki.ca, DESIGN.md).
    common_name = str(certificate.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
    head, _, generation = common_name.rpartition(" ")
    assert head.endswith("mesh CA"), common_name
    return int(generation)


def _classify(answer: Answer) -> str:
    """``old`` or ``new`` for a consistent successful answer; fails on a mixed one."""
    body = answer.body
    leaf = x509.load_pem_x509_certificate(body["certificate"].encode())
    generation = _mesh_generation(leaf)
    chain = x509.load_pem_x509_certificates(body["certificate_chain"].encode())
    assert chain[0] == leaf
    assert chain[1].subject == leaf.issuer
    files = {path: base64.b64decode(data) for path, data in body["files"].items()}
    assert x509.load_pem_x509_certificates(files["/secrets/tls.crt"]) == chain
    db_key = bytes.fromhex(body["env"]["DB_KEY"])
    seen = (body["env"]["MODE"], files["/etc/mode"], len(db_key), generation)
    assert seen in {("v1", b"v1", 16, 1), ("v2", b"v2", 32, 2)}, seen
    return "old" if generation == 1 else "new"


# -- activations racing a manifest update ---------------------------------------------------


def test_parallel_activations_during_an_update_see_one_manifest_each(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    platform = SimulatedPlatform.init(tmp_path_factory.mktemp("sim") / "platform")
    with running_coordinator(tmp_path, platform, OLD) as running:
        port = int(running.url.rsplit(":", 1)[1])
        proposal = propose_update(
            running.url,
            running.root_pem,
            json.dumps(_new_manifest()).encode(),
            user="alice",
            key=ALICE,
        )
        answers: list[Answer | None] = [None] * PARALLEL
        started = threading.Barrier(PARALLEL // 2 + 1)
        approving = threading.Event()
        approved = threading.Event()

        def activation(index: int) -> None:
            # A first half starts before the approval, a third is released when the approval
            # is sent (racing it), the rest once it returned (so both manifests are seen).
            if index < PARALLEL // 2:
                started.wait()
            elif index < PARALLEL * 5 // 6:
                approving.wait()
            else:
                approved.wait()
            answers[index] = _activate_raw(port, running.root_pem, platform, "web", f"i{index}")

        def approve() -> None:
            started.wait()
            time.sleep(0.05)
            approving.set()
            try:
                result = approve_update(
                    running.url, running.root_pem, proposal.id, user="carol", key=CAROL
                )
                assert result.applied
            finally:
                approved.set()

        with ThreadPoolExecutor(max_workers=PARALLEL + 1) as pool:
            futures = [pool.submit(activation, i) for i in range(PARALLEL)]
            futures.append(pool.submit(approve))
            for future in futures:
                future.result(timeout=120)

        kinds: dict[str, int] = {"old": 0, "new": 0, "retry": 0}
        for answer in answers:
            assert answer is not None
            if answer.status == 503:
                # Began under the old manifest and reached the store after the update:
                # refused as a whole (nothing released), the service asks again.
                assert answer.body["error"]["code"] == "manifest_changed"
                kinds["retry"] += 1
                continue
            assert answer.status == 200, answer.body
            kinds[_classify(answer)] += 1
        assert kinds["old"] >= 1
        assert kinds["new"] >= PARALLEL - PARALLEL * 5 // 6
        assert kinds["old"] + kinds["new"] + kinds["retry"] == PARALLEL

        events = _audit(running)  # verifies the chain against the sealed head (API form)
        activated = {e["instance"]: e for e in events if e["type"] == "activation"}
        assert len(activated) == kinds["old"] + kinds["new"]
        updates = [e for e in events if e["type"] == "manifest_updated"]
        assert len(updates) == 1
        new_sha = updates[0]["sha256"]
        for index, answer in enumerate(answers):
            assert answer is not None
            if answer.status == 200:
                record = activated[f"i{index}"]
                assert (record["manifest_sha256"] == new_sha) == (_classify(answer) == "new")
        state_url = running.server.coordinator.settings.state_url
    # The stored chain, opened afresh after the server stopped, verifies as a whole.
    sealing_key = SimulationBackend(platform, coordinator_identity()).sealing_key("mrsigner")
    with open_store(state_url, sealing_key) as store:
        head = AuditLog(store).verify_chain()
        assert head.count == len(events)


# -- worker processes sharing one state -----------------------------------------------------


@dataclass
class Served:
    port: int
    root_pem: bytes
    process: subprocess.Popen[bytes]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def _serving_workers(tmp_path: Path, platform: SimulatedPlatform, workers: int) -> Iterator[Served]:
    port = _free_port()
    script = (
        "import sealpod.cli as cli; "
        "cli._COMMANDS['coordinator'] = 'sealpod.cli.coordinator:coordinator'; cli.main()"
    )
    command = [sys.executable, "-c", script, "coordinator", "serve", "--listen"]
    command += [f"127.0.0.1:{port}", "--state", f"sqlite:///{tmp_path}/state.db"]
    command += ["--sim-dir", str(platform.directory)]
    log = tmp_path / "server.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            command,
            env={**os.environ, "SEALPOD_WORKERS": str(workers), "SEALPOD_LOG_LEVEL": "ERROR"},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                verified = verify_coordinator(
                    url,
                    expect_mrenclave=measure_distribution().mr_enclave,
                    allow_simulation=True,
                    simulated_root_der=platform.root_certificate_der(),
                    timeout=2,
                )
                break
            except Exception:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.2)
        with pinned_client(url, verified.root_pem) as client:
            response = client.post("/api/v1/manifest", json=OLD)
            assert response.status_code == 200, response.text
        yield Served(port, verified.root_pem, process)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:  # pragma: no cover - reported by the assertion
            process.kill()
            process.wait()
    assert process.returncode == 0, log.read_text(errors="replace")


def _connections_to_two_workers(
    served: Served,
) -> tuple[http.client.HTTPSConnection, http.client.HTTPSConnection]:
    """Two connections answered by different worker processes (told apart by their TLS
    certificates: each worker issues its own from the root)."""
    context = _context(served.root_pem)
    first, first_certificate = _connect(served.port, context)
    for _ in range(64):
        other, certificate = _connect(served.port, context)
        if certificate != first_certificate:
            return first, other
        other.close()
    first.close()
    pytest.fail("64 connections all reached the same worker")


@pytest.fixture(scope="module")
def two_workers(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Served, SimulatedPlatform]]:
    platform = SimulatedPlatform.init(tmp_path_factory.mktemp("sim") / "platform")
    with _serving_workers(tmp_path_factory.mktemp("state"), platform, workers=2) as served:
        yield served, platform


def test_nonce_from_one_worker_is_accepted_by_another_and_its_replay_refused_by_both(
    two_workers: tuple[Served, SimulatedPlatform],
) -> None:
    served, platform = two_workers
    issuing, activating = _connections_to_two_workers(served)
    try:
        status, body = _request(issuing, "POST", "/api/v1/activation/nonce")
        assert status == 200
        nonce = bytes.fromhex(body["nonce"])
        key = ec.generate_private_key(ec.SECP256R1())
        request = _activation_body(_backend(platform), platform, "web", "w0", nonce, key)
        status, body = _request(activating, "POST", "/api/v1/activation", request)
        assert status == 200, body
        for connection in (activating, issuing):
            status, body = _request(connection, "POST", "/api/v1/activation", request)
            assert (status, body["error"]["code"]) == (403, "nonce_reused")
    finally:
        issuing.close()
        activating.close()


def test_max_instances_holds_across_workers(two_workers: tuple[Served, SimulatedPlatform]) -> None:
    served, platform = two_workers
    attempts = 12
    with ThreadPoolExecutor(max_workers=attempts) as pool:
        answers = list(
            pool.map(
                lambda i: _activate_raw(served.port, served.root_pem, platform, "capped", f"c{i}"),
                range(attempts),
            )
        )
    assert len({answer.server_certificate for answer in answers}) == 2  # both workers answered
    granted = [a for a in answers if a.status == 200]
    refused = [a for a in answers if a.status != 200]
    assert len(granted) == 3  # OLD["services"]["capped"]["max_instances"]
    assert {(a.status, a.body["error"]["code"]) for a in refused} == {(409, "too_many_instances")}
    with pinned_client(f"https://127.0.0.1:{served.port}", served.root_pem) as client:
        body = client.get("/api/v1/audit").json()
    entries = [AuditEntry.from_dict(entry) for entry in body["entries"]]
    verify_audit_entries(entries, AuditHead(count=body["head"]["count"], hash=body["head"]["hash"]))
    events = [dict(entry.event) for entry in entries]
    capped = [e for e in events if e.get("service") == "capped"]
    assert sorted(e["type"] for e in capped) == ["activation"] * 3 + ["activation_refused"] * 9
