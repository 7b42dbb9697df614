"""The activation client (standard-library HTTPS, TLS pinned) against a scripted loopback server.

The server is a real TLS server on 127.0.0.1 with a certificate from a test coordinator CA
(:class:`sealpod.pki.CoordinatorCA`); each test scripts what it answers, so every refusal,
malformed answer and transport failure the client must map is exercised on the wire. The happy
path against the real coordinator is in tests/integration/test_coordinator_server.py.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import http.server
import json
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sealpod.attestation.quote import SGXReportBody, parse_quote
from sealpod.coordinator.client import (
    ActivationResult,
    PinnedVolumeTag,
    activate,
    get_volume_tag,
    set_volume_tag,
)
from sealpod.coordinator.errors import RequestRefusedError
from sealpod.errors import ConfigError, NetworkError, VerificationError
from sealpod.pki import CoordinatorCA
from sealpod.tee import EnclaveIdentity, SimulatedPlatform, SimulationBackend

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.filterwarnings("ignore:.*SIMULATED.*"),
]

NOW = datetime.datetime.now(datetime.UTC)
IDENTITY = EnclaveIdentity(mr_enclave=bytes.fromhex("a1" * 32), mr_signer=bytes.fromhex("b2" * 32))
PLACEHOLDER = "@@SEALPOD-PRIVATE-KEY-7f3a@@"


def _pem(*certificates: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certificates)


def _csr(key: ec.EllipticCurvePrivateKey) -> x509.CertificateSigningRequest:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web")]))
        .sign(key, hashes.SHA256())
    )


def _server_credentials(
    ca: CoordinatorCA, ip: str
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = ca.issue_leaf(
        _csr(key), service="coordinator", instance="tls", ips=[ip], simulated=False, now=NOW
    )
    return leaf, key


@pytest.fixture(scope="module")
def ca() -> CoordinatorCA:
    return CoordinatorCA.create(now=NOW)


@pytest.fixture(scope="module")
def other_ca() -> CoordinatorCA:
    return CoordinatorCA.create(now=NOW, name="impostor")


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> SimulationBackend:
    platform = SimulatedPlatform.init(tmp_path_factory.mktemp("activate") / "sim")
    return SimulationBackend(platform, IDENTITY)


@dataclass
class Exchange:
    """One request the scripted server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    connection: int


Answer = Callable[["Exchange"], tuple[int, bytes]]


@dataclass
class Script:
    """What the server answers: a function per path; records every request and connection."""

    answers: dict[str, Answer]
    exchanges: list[Exchange] = field(default_factory=list)
    connections: int = 0


def _json_answer(status: int, document: Any) -> tuple[int, bytes]:
    return status, json.dumps(document).encode()


def _refusal(status: int, code: str, message: str, kind: str = "request") -> tuple[int, bytes]:
    # The coordinator's error body: the message starts with the code (app.py error handler).
    return _json_answer(
        status, {"error": {"code": code, "message": f"{code}: {message}", "kind": kind}}
    )


def _handler(script: Script) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as uvicorn does

        def setup(self) -> None:
            super().setup()
            script.connections += 1
            self.connection_number = script.connections

        def do_POST(self) -> None:
            self._exchange("POST")

        def do_GET(self) -> None:
            self._exchange("GET")

        def do_PUT(self) -> None:
            self._exchange("PUT")

        def _exchange(self, method: str) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            exchange = Exchange(
                method,
                self.path,
                {k.lower(): v for k, v in self.headers.items()},
                self.rfile.read(length),
                self.connection_number,
            )
            script.exchanges.append(exchange)
            answer = script.answers.get(self.path)
            status, body = (404, b"{}") if answer is None else answer(exchange)
            if status == 0:  # scripted: drop the connection mid-answer
                self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{")
                self.close_connection = True
                return
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def serve(ca: CoordinatorCA, tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Start a scripted TLS server; returns its https URL."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(
        script: Script, *, server_ca: CoordinatorCA | None = None, ip: str = "127.0.0.1"
    ) -> str:
        leaf, key = _server_credentials(server_ca or ca, ip)
        chain = tmp_path / f"server-{len(servers)}.pem"
        chain.write_text(_pem(leaf, (server_ca or ca).mesh.certificate))
        key_file = tmp_path / f"server-{len(servers)}.key"
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(chain, key_file)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(script))
        server.daemon_threads = True
        server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()
        servers.append(server)
        return f"https://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _root_pem(ca: CoordinatorCA) -> bytes:
    return ca.root_certificate.public_bytes(serialization.Encoding.PEM)


def _nonce_answer(nonces: list[bytes]) -> Answer:
    def answer(_: Exchange) -> tuple[int, bytes]:
        nonce = bytes([len(nonces) + 1]) * 32
        nonces.append(nonce)
        return _json_answer(200, {"nonce": nonce.hex()})

    return answer


def _grant(ca: CoordinatorCA, *, for_key: ec.EllipticCurvePrivateKey | None = None) -> Answer:
    """Answer an activation like the coordinator: a leaf for the CSR's key (or ``for_key``)."""

    def answer(exchange: Exchange) -> tuple[int, bytes]:
        request = json.loads(exchange.body)
        csr = x509.load_pem_x509_csr(request["csr"].encode())
        if for_key is not None:
            csr = _csr(for_key)
        leaf = ca.issue_leaf(
            csr, service=request["service"], instance=request["instance"], simulated=True, now=NOW
        )
        return _json_answer(
            200,
            {
                "certificate_chain": _pem(leaf, ca.mesh.certificate),
                "trust_bundle": ca.trust_bundle_pem().decode(),
                "private_key_placeholder": PLACEHOLDER,
                "files": {"/secrets/tls.key": base64.b64encode(PLACEHOLDER.encode()).decode()},
                "env": {"TOKEN": "t0ken", "KEY": f"key={PLACEHOLDER}"},
                "argv": ["/app", "--key", PLACEHOLDER],
                "simulated": True,
                "volumes": {
                    "data": {
                        "mount": "/data",
                        "key": base64.b64encode(b"k" * 32).decode(),
                        "rollback_protected": True,
                    }
                },
            },
        )

    return answer


def _activate(url: str, root: bytes, backend: SimulationBackend, **kwargs: Any) -> ActivationResult:
    return activate(url, root, "web", "web-0", backend, **kwargs)


# -- the protocol on the wire -----------------------------------------------------------------


def test_activation_uses_one_connection_and_delivers_the_grant(
    serve: Callable[..., str], ca: CoordinatorCA, backend: SimulationBackend
) -> None:
    nonces: list[bytes] = []
    script = Script(
        {"/api/v1/activation/nonce": _nonce_answer(nonces), "/api/v1/activation": _grant(ca)}
    )
    result = _activate(serve(script), _root_pem(ca), backend)

    assert script.connections == 1
    assert [e.path for e in script.exchanges] == ["/api/v1/activation/nonce", "/api/v1/activation"]
    assert {e.connection for e in script.exchanges} == {1}
    key_pem = result.private_key_pem()
    assert result.files == {"/secrets/tls.key": key_pem}
    assert result.env == {"TOKEN": "t0ken", "KEY": "key=" + key_pem.decode()}
    assert result.argv == ["/app", "--key", key_pem.decode()]
    assert result.volumes["data"].key == b"k" * 32
    assert result.volumes["data"].rollback_protected is True
    assert result.simulated is True
    assert result.root_certificate == ca.root_certificate


def test_activation_request_binds_the_csr_key_and_nonce_into_the_quote(
    serve: Callable[..., str], ca: CoordinatorCA, backend: SimulationBackend
) -> None:
    nonces: list[bytes] = []
    script = Script(
        {"/api/v1/activation/nonce": _nonce_answer(nonces), "/api/v1/activation": _grant(ca)}
    )
    result = _activate(serve(script), _root_pem(ca), backend)

    request = script.exchanges[1]
    assert request.headers["content-type"] == "application/json"
    body = json.loads(request.body)
    assert set(body) == {"service", "instance", "csr", "nonce", "quote", "collateral"}
    assert (body["service"], body["instance"], body["nonce"]) == ("web", "web-0", nonces[0].hex())
    assert body["collateral"] == backend.platform.collateral()
    spki = (
        x509.load_pem_x509_csr(body["csr"].encode())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    # DESIGN.md: report_data = SHA-256("sealpod-activation-v1" || SPKI || nonce) || 0^32.
    expected = hashlib.sha256(b"sealpod-activation-v1" + spki + nonces[0]).digest() + bytes(32)
    quote = parse_quote(bytes.fromhex(body["quote"]))
    assert isinstance(quote.body, SGXReportBody)
    assert quote.body.report_data == expected
    assert quote.body.mr_enclave == IDENTITY.mr_enclave
    assert (
        result.certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        == spki
    )


def test_manifest_change_during_activation_is_retried_with_a_fresh_nonce_and_key(
    serve: Callable[..., str], ca: CoordinatorCA, backend: SimulationBackend
) -> None:
    nonces: list[bytes] = []
    grant = _grant(ca)
    attempts: list[Exchange] = []

    def answer(exchange: Exchange) -> tuple[int, bytes]:
        attempts.append(exchange)
        if len(attempts) == 1:
            return _refusal(409, "manifest_changed", "the manifest changed")
        return grant(exchange)

    script = Script(
        {"/api/v1/activation/nonce": _nonce_answer(nonces), "/api/v1/activation": answer}
    )
    _activate(serve(script), _root_pem(ca), backend)

    first, second = (json.loads(e.body) for e in attempts)
    assert len(set(nonces)) == 2
    assert first["nonce"] != second["nonce"]
    assert first["csr"] != second["csr"]


def test_manifest_changing_on_every_attempt_gives_up_after_three(
    serve: Callable[..., str], ca: CoordinatorCA, backend: SimulationBackend
) -> None:
    nonces: list[bytes] = []
    script = Script(
        {
            "/api/v1/activation/nonce": _nonce_answer(nonces),
            "/api/v1/activation": lambda _: _refusal(409, "manifest_changed", "again"),
        }
    )
    with pytest.raises(RequestRefusedError) as caught:
        _activate(serve(script), _root_pem(ca), backend)
    assert caught.value.code == "manifest_changed"
    assert len(nonces) == 3


# -- refusals and malformed answers -----------------------------------------------------------


def test_evidence_refusal_is_a_verification_error_with_the_coordinators_reason(
    serve: Callable[..., str], ca: CoordinatorCA, backend: SimulationBackend
) -> None:
    script = Script(
        {
            "/api/v1/activation/nonce": _nonce_answer([]),
            "/api/v1/activation": lambda _: _refusal(
                403, "mrenclave_not_allowed", "not in the manifest", "evidence"
            ),
        }
    )
    with pytest.raises(VerificationError) as caught:
        _activate(serve(script), _root_pem(ca), backend)
    assert caught.value.reason == "mrenclave_not_allowed"
    assert str(caught.value).count("mrenclave_not_allowed") == 1


def test_other_refusal_keeps_its_code_and_http_status(
    serve: Callable[..., str], ca: CoordinatorCA, backend: SimulationBackend
) -> None:
    script = Script(
        {
            "/api/v1/activation/nonce": _nonce_answer([]),
            "/api/v1/activation": lambda _: _refusal(429, "too_many_instances", "2 of 2 in use"),
        }
    )
    with pytest.raises(RequestRefusedError) as caught:
        _activate(serve(script), _root_pem(ca), backend)
    assert (caught.value.code, caught.value.status) == ("too_many_instances", 429)


def test_error_page_without_an_error_body_is_refused_by_http_status(
    serve: Callable[..., str], ca: CoordinatorCA, backend: SimulationBackend
) -> None:
    script = Script({"/api/v1/activation/nonce": lambda _: (502, b"<html>Bad Gateway</html>")})
    with pytest.raises(RequestRefusedError) as caught:
        _activate(serve(script), _root_pem(ca), backend)
    assert (caught.value.code, caught.value.status) == ("http_502", 502)
    assert "Bad Gateway" in str(caught.value)  # the reason phrase http.server sends for 502


def test_answer_that_is_not_json_is_a_network_error(
    serve: Callable[..., str], ca: CoordinatorCA, backend: SimulationBackend
) -> None:
    script = Script({"/api/v1/activation/nonce": lambda _: (200, b"<html>portal</html>")})
    with pytest.raises(NetworkError):
        _activate(serve(script), _root_pem(ca), backend)


def test_json_answer_that_is_not_an_object_is_a_network_error(
    serve: Callable[..., str], ca: CoordinatorCA, backend: SimulationBackend
) -> None:
    script = Script({"/api/v1/activation/nonce": lambda _: (200, b'["nonce"]')})
    with pytest.raises(NetworkError):
        _activate(serve(script), _root_pem(ca), backend)


def test_nonce_that_is_not_hex_is_a_malformed_response(
    serve: Callable[..., str], ca: CoordinatorCA, backend: SimulationBackend
) -> None:
    script = Script({"/api/v1/activation/nonce": lambda _: _json_answer(200, {"nonce": "zz"})})
    with pytest.raises(VerificationError) as caught:
        _activate(serve(script), _root_pem(ca), backend)
    assert caught.value.reason == "malformed_response"


def test_missing_nonce_is_a_malformed_response(
    serve: Callable[..., str], ca: CoordinatorCA, backend: SimulationBackend
) -> None:
    script = Script({"/api/v1/activation/nonce": lambda _: _json_answer(200, {})})
    with pytest.raises(VerificationError) as caught:
        _activate(serve(script), _root_pem(ca), backend)
    assert caught.value.reason == "malformed_response"


def test_certificate_for_another_key_is_refused(
    serve: Callable[..., str], ca: CoordinatorCA, backend: SimulationBackend
) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    script = Script(
        {
            "/api/v1/activation/nonce": _nonce_answer([]),
            "/api/v1/activation": _grant(ca, for_key=other),
        }
    )
    with pytest.raises(VerificationError) as caught:
        _activate(serve(script), _root_pem(ca), backend)
    assert caught.value.reason == "certificate_key_mismatch"


def test_certificate_from_another_ca_over_the_pinned_connection_is_refused(
    serve: Callable[..., str],
    ca: CoordinatorCA,
    other_ca: CoordinatorCA,
    backend: SimulationBackend,
) -> None:
    # The TLS server is the pinned coordinator, but the leaf it hands out chains elsewhere.
    script = Script(
        {"/api/v1/activation/nonce": _nonce_answer([]), "/api/v1/activation": _grant(other_ca)}
    )
    with pytest.raises(VerificationError) as caught:
        _activate(serve(script), _root_pem(ca), backend)
    assert caught.value.reason == "certificate_chain_invalid"


def test_file_that_is_not_base64_is_a_malformed_response(
    serve: Callable[..., str], ca: CoordinatorCA, backend: SimulationBackend
) -> None:
    grant = _grant(ca)

    def answer(exchange: Exchange) -> tuple[int, bytes]:
        status, body = grant(exchange)
        document = json.loads(body)
        document["files"] = {"/secrets/x": "not base64!"}
        return _json_answer(status, document)

    script = Script({"/api/v1/activation/nonce": _nonce_answer([]), "/api/v1/activation": answer})
    with pytest.raises(VerificationError) as caught:
        _activate(serve(script), _root_pem(ca), backend)
    assert caught.value.reason == "malformed_response"


# -- transport and TLS ------------------------------------------------------------------------


def test_server_with_a_certificate_from_another_root_is_refused(
    serve: Callable[..., str],
    ca: CoordinatorCA,
    other_ca: CoordinatorCA,
    backend: SimulationBackend,
) -> None:
    script = Script({"/api/v1/activation/nonce": _nonce_answer([])})
    url = serve(script, server_ca=other_ca)
    with pytest.raises(NetworkError) as caught:
        _activate(url, _root_pem(ca), backend)
    assert isinstance(caught.value.__cause__, ssl.SSLError)
    assert script.exchanges == []


def test_server_certificate_for_another_address_is_refused(
    serve: Callable[..., str], ca: CoordinatorCA, backend: SimulationBackend
) -> None:
    script = Script({"/api/v1/activation/nonce": _nonce_answer([])})
    url = serve(script, ip="127.0.0.2")
    with pytest.raises(NetworkError) as caught:
        _activate(url, _root_pem(ca), backend)
    assert isinstance(caught.value.__cause__, ssl.SSLError)
    assert script.exchanges == []


def test_connection_dropped_mid_answer_is_a_network_error(
    serve: Callable[..., str], ca: CoordinatorCA, backend: SimulationBackend
) -> None:
    script = Script({"/api/v1/activation/nonce": lambda _: (0, b"")})
    with pytest.raises(NetworkError):
        _activate(serve(script), _root_pem(ca), backend)


def test_coordinator_that_never_answers_times_out_as_a_network_error(
    ca: CoordinatorCA, backend: SimulationBackend
) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(NetworkError):
            _activate(f"https://127.0.0.1:{port}", _root_pem(ca), backend, timeout=0.3)


def test_unreachable_coordinator_is_a_network_error(
    ca: CoordinatorCA, backend: SimulationBackend
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(NetworkError):
        _activate(f"https://127.0.0.1:{port}", _root_pem(ca), backend)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8443", "https://127.0.0.1:99999", "https://", "127.0.0.1:8443"]
)
def test_bad_coordinator_url_is_a_config_error(
    url: str, ca: CoordinatorCA, backend: SimulationBackend
) -> None:
    with pytest.raises(ConfigError):
        _activate(url, _root_pem(ca), backend)


def test_pinned_root_that_is_not_a_certificate_is_a_config_error(
    backend: SimulationBackend,
) -> None:
    with pytest.raises(ConfigError):
        _activate("https://127.0.0.1:8443", b"-----BEGIN CERTIFICATE-----\ngarbage\n", backend)


# -- HTTP proxies (as httpx honoured them) --------------------------------------------------


@dataclass
class Proxy:
    """A CONNECT proxy on loopback that records what it was asked (or refuses everything)."""

    url: str
    requests: list[list[str]]


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)


def _serve_proxy(listener: socket.socket, requests: list[list[str]], refuse: bool) -> None:
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        head = b""
        while b"\r\n\r\n" not in head and (chunk := client.recv(4096)):
            head += chunk
        lines = head.decode("latin-1").split("\r\n")
        requests.append([line for line in lines if line])
        method, target, _ = lines[0].split(" ", 2)
        if refuse or method != "CONNECT":
            client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            client.close()
            continue
        host, port = target.rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)))
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        threading.Thread(target=_pipe, args=(client, upstream), daemon=True).start()
        threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()


@pytest.fixture
def proxy(request: pytest.FixtureRequest) -> Iterator[Proxy]:
    refuse = getattr(request, "param", False)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    requests: list[list[str]] = []
    threading.Thread(target=_serve_proxy, args=(listener, requests, refuse), daemon=True).start()
    yield Proxy(f"http://user:s%40cret@127.0.0.1:{listener.getsockname()[1]}", requests)
    listener.close()


def _no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("https_proxy", "all_proxy", "no_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


def test_activation_tunnels_through_the_https_proxy_of_the_environment(
    serve: Callable[..., str],
    ca: CoordinatorCA,
    backend: SimulationBackend,
    proxy: Proxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    script = Script(
        {"/api/v1/activation/nonce": _nonce_answer([]), "/api/v1/activation": _grant(ca)}
    )
    url = serve(script)
    _no_proxy_environment(monkeypatch)
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    _activate(url, _root_pem(ca), backend)

    [connect] = proxy.requests
    assert connect[0].startswith(f"CONNECT {url.removeprefix('https://')} HTTP/1.")
    expected = "Basic " + base64.b64encode(b"user:s@cret").decode()
    assert f"Proxy-Authorization: {expected}" in connect
    assert script.connections == 1


def test_no_proxy_entry_bypasses_the_proxy(
    serve: Callable[..., str],
    ca: CoordinatorCA,
    backend: SimulationBackend,
    proxy: Proxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    script = Script(
        {"/api/v1/activation/nonce": _nonce_answer([]), "/api/v1/activation": _grant(ca)}
    )
    url = serve(script)
    _no_proxy_environment(monkeypatch)
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    _activate(url, _root_pem(ca), backend)
    assert proxy.requests == []


@pytest.mark.parametrize("proxy", [True], indirect=True)
def test_proxy_refusing_the_tunnel_is_a_network_error(
    serve: Callable[..., str],
    ca: CoordinatorCA,
    backend: SimulationBackend,
    proxy: Proxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    script = Script({"/api/v1/activation/nonce": _nonce_answer([])})
    url = serve(script)
    _no_proxy_environment(monkeypatch)
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    with pytest.raises(NetworkError):
        _activate(url, _root_pem(ca), backend)
    assert script.exchanges == []


def test_socks_proxy_is_a_config_error_that_hides_its_credentials(
    ca: CoordinatorCA, backend: SimulationBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_proxy_environment(monkeypatch)
    monkeypatch.setenv("ALL_PROXY", "socks5://user:hunter2@127.0.0.1:1080")
    with pytest.raises(ConfigError) as caught:
        _activate("https://127.0.0.1:8443", _root_pem(ca), backend)
    assert "hunter2" not in str(caught.value)


# -- the activated instance's volume-tag calls ----------------------------------------------

TAG_PATH = "/api/v1/volumes/data/tag"


@pytest.fixture(scope="module")
def instance(ca: CoordinatorCA) -> ActivationResult:
    """An activated instance as the coordinator would certify it (web/web-0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = ca.issue_leaf(_csr(key), service="web", instance="web-0", simulated=True, now=NOW)
    return ActivationResult(
        service="web",
        instance="web-0",
        simulated=True,
        private_key=key,
        certificate=leaf,
        certificate_chain=(leaf, ca.mesh.certificate),
        trust_bundle=(ca.mesh.certificate,),
        root_certificate=ca.root_certificate,
        files={},
        env={},
        argv=None,
    )


def _tag_answer(version: int, tag: bytes | None) -> Answer:
    return lambda _: _json_answer(
        200, {"volume": "data", "version": version, "tag": None if tag is None else tag.hex()}
    )


def _check_service_signature(exchange: Exchange, instance: ActivationResult, root: bytes) -> None:
    """Verify the request's signature from the format in the auth module's docstring."""
    scheme, _, rest = exchange.headers["authorization"].partition(" ")
    assert scheme == "Sealpod-Service-Signature"
    params = dict(part.strip().split("=", 1) for part in rest.split(","))
    params = {name: value.strip('"') for name, value in params.items()}
    assert set(params) == {"cert", "time", "nonce", "signature"}
    certificate = x509.load_der_x509_certificate(base64.b64decode(params["cert"]))
    assert certificate == instance.certificate
    root_der = x509.load_pem_x509_certificate(root).public_bytes(serialization.Encoding.DER)
    signed = "\n".join(
        [
            "sealpod-request-v1",
            exchange.method,
            exchange.path,
            params["time"],
            params["nonce"],
            hashlib.sha256(exchange.body).hexdigest(),
            hashlib.sha256(root_der).hexdigest(),
        ]
    ).encode()
    public_key = instance.certificate.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    public_key.verify(
        base64.b64decode(params["signature"]), signed, ec.ECDSA(hashes.SHA256())
    )  # raises InvalidSignature


def test_volume_tag_is_asked_with_a_request_signed_by_the_instance_key(
    serve: Callable[..., str], ca: CoordinatorCA, instance: ActivationResult
) -> None:
    script = Script({TAG_PATH: _tag_answer(3, b"\x07" * 32)})
    root = _root_pem(ca)
    pinned = get_volume_tag(serve(script), root, instance, "data", clock=lambda: 1_767_225_600)

    assert pinned == PinnedVolumeTag(volume="data", version=3, tag=b"\x07" * 32)
    [exchange] = script.exchanges
    assert (exchange.method, exchange.path, exchange.body) == ("GET", TAG_PATH, b"")
    assert 'time="1767225600"' in exchange.headers["authorization"]
    _check_service_signature(exchange, instance, root)


def test_unpinned_volume_has_no_tag(
    serve: Callable[..., str], ca: CoordinatorCA, instance: ActivationResult
) -> None:
    script = Script({TAG_PATH: _tag_answer(0, None)})
    pinned = get_volume_tag(serve(script), _root_pem(ca), instance, "data")
    assert (pinned.version, pinned.tag) == (0, None)


def test_new_tag_is_reported_with_the_version_it_replaces(
    serve: Callable[..., str], ca: CoordinatorCA, instance: ActivationResult
) -> None:
    script = Script({TAG_PATH: _tag_answer(4, b"\x09" * 32)})
    root = _root_pem(ca)
    pinned = set_volume_tag(
        serve(script), root, instance, "data", expected_version=3, tag=b"\x09" * 32
    )

    assert pinned == PinnedVolumeTag(volume="data", version=4, tag=b"\x09" * 32)
    [exchange] = script.exchanges
    assert (exchange.method, exchange.path) == ("PUT", TAG_PATH)
    assert exchange.headers["content-type"] == "application/json"
    assert json.loads(exchange.body) == {"expected_version": 3, "tag": "09" * 32}
    _check_service_signature(exchange, instance, root)


def test_stale_tag_report_is_refused_as_a_conflict(
    serve: Callable[..., str], ca: CoordinatorCA, instance: ActivationResult
) -> None:
    script = Script({TAG_PATH: lambda _: _refusal(409, "volume_tag_conflict", "the pin moved")})
    with pytest.raises(RequestRefusedError) as caught:
        set_volume_tag(
            serve(script), _root_pem(ca), instance, "data", expected_version=1, tag=b"\x01" * 32
        )
    assert (caught.value.status, caught.value.code) == (409, "volume_tag_conflict")


def test_volume_tag_refusal_keeps_its_code_and_http_status(
    serve: Callable[..., str], ca: CoordinatorCA, instance: ActivationResult
) -> None:
    script = Script({TAG_PATH: lambda _: _refusal(401, "certificate_invalid", "not current")})
    with pytest.raises(RequestRefusedError) as caught:
        get_volume_tag(serve(script), _root_pem(ca), instance, "data")
    assert (caught.value.status, caught.value.code) == (401, "certificate_invalid")


def test_volume_tag_evidence_refusal_is_a_verification_error(
    serve: Callable[..., str], ca: CoordinatorCA, instance: ActivationResult
) -> None:
    script = Script({TAG_PATH: lambda _: _refusal(403, "tcb_revoked", "revoked", "evidence")})
    with pytest.raises(VerificationError) as caught:
        get_volume_tag(serve(script), _root_pem(ca), instance, "data")
    assert caught.value.reason == "tcb_revoked"


@pytest.mark.parametrize(
    "document",
    [
        {"volume": "data", "version": 1, "tag": "zz"},
        {"volume": "data", "tag": None},
        {"volume": "data", "version": "one", "tag": None},
    ],
)
def test_malformed_volume_tag_document_is_a_malformed_response(
    serve: Callable[..., str],
    ca: CoordinatorCA,
    instance: ActivationResult,
    document: dict[str, Any],
) -> None:
    script = Script({TAG_PATH: lambda _: _json_answer(200, document)})
    with pytest.raises(VerificationError) as caught:
        get_volume_tag(serve(script), _root_pem(ca), instance, "data")
    assert caught.value.reason == "malformed_response"


def test_volume_tag_answer_that_is_not_json_is_a_network_error(
    serve: Callable[..., str], ca: CoordinatorCA, instance: ActivationResult
) -> None:
    script = Script({TAG_PATH: lambda _: (200, b"<html>portal</html>")})
    with pytest.raises(NetworkError):
        get_volume_tag(serve(script), _root_pem(ca), instance, "data")


def test_volume_tag_from_a_server_of_another_root_is_refused(
    serve: Callable[..., str],
    ca: CoordinatorCA,
    other_ca: CoordinatorCA,
    instance: ActivationResult,
) -> None:
    script = Script({TAG_PATH: _tag_answer(1, b"\x01" * 32)})
    url = serve(script, server_ca=other_ca)
    with pytest.raises(NetworkError) as caught:
        get_volume_tag(url, _root_pem(ca), instance, "data")
    assert isinstance(caught.value.__cause__, ssl.SSLError)
    assert script.exchanges == []  # the signed request never left


def test_volume_tag_connection_dropped_mid_answer_is_a_network_error(
    serve: Callable[..., str], ca: CoordinatorCA, instance: ActivationResult
) -> None:
    script = Script({TAG_PATH: lambda _: (0, b"")})
    with pytest.raises(NetworkError):
        set_volume_tag(
            serve(script), _root_pem(ca), instance, "data", expected_version=0, tag=b"\x01" * 32
        )


def test_volume_tag_at_an_unreachable_coordinator_is_a_network_error(
    ca: CoordinatorCA, instance: ActivationResult
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(NetworkError):
        get_volume_tag(f"https://127.0.0.1:{port}", _root_pem(ca), instance, "data")


def test_volume_tag_request_goes_through_the_https_proxy_of_the_environment(
    serve: Callable[..., str],
    ca: CoordinatorCA,
    instance: ActivationResult,
    proxy: Proxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    script = Script({TAG_PATH: _tag_answer(2, b"\x02" * 32)})
    url = serve(script)
    _no_proxy_environment(monkeypatch)
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    assert get_volume_tag(url, _root_pem(ca), instance, "data").version == 2
    [connect] = proxy.requests
    assert connect[0].startswith(f"CONNECT {url.removeprefix('https://')} HTTP/1.")


@pytest.mark.parametrize("volume", ["../secrets/x", "", "data/tag", "-data", "a" * 65])
def test_volume_name_that_could_leave_the_volume_path_is_a_config_error(
    serve: Callable[..., str], ca: CoordinatorCA, instance: ActivationResult, volume: str
) -> None:
    script = Script({})
    url = serve(script)
    with pytest.raises(ConfigError):
        get_volume_tag(url, _root_pem(ca), instance, volume)
    with pytest.raises(ConfigError):
        set_volume_tag(url, _root_pem(ca), instance, volume, expected_version=0, tag=b"\x01")
    assert script.exchanges == []


@pytest.mark.parametrize("url", ["http://127.0.0.1:8443", "https://127.0.0.1:99999"])
def test_volume_tag_at_a_bad_coordinator_url_is_a_config_error(
    url: str, ca: CoordinatorCA, instance: ActivationResult
) -> None:
    with pytest.raises(ConfigError):
        get_volume_tag(url, _root_pem(ca), instance, "data")


def test_volume_tag_with_a_pinned_root_that_is_not_a_certificate_is_a_config_error(
    instance: ActivationResult,
) -> None:
    with pytest.raises(ConfigError):
        get_volume_tag("https://127.0.0.1:8443", b"not a certificate", instance, "data")


# -- start-up weight --------------------------------------------------------------------------


def test_activation_imports_no_http_framework_pydantic_or_verifier() -> None:
    # `sealpod run --coordinator` imports exactly this before it activates (runtime/run.py).
    code = (
        "import sys\n"
        "from sealpod.coordinator.client import activate\n"
        "from sealpod.tee import EnclaveIdentity, SimulatedPlatform, SimulationBackend\n"
        "from sealpod.tee.simulation import default_platform_dir\n"
        "heavy = ('httpx', 'httpcore', 'h11', 'anyio', 'trio', 'pydantic', 'fastapi', 'jinja2',\n"
        "         'dcap_qvl', 'yaml', 'rich', 'platformdirs', 'sealpod.attestation.verify',\n"
        "         'sealpod.attestation.collateral', 'sealpod.manifest', 'sealpod.store',\n"
        "         'urllib.request', 'sealpod.coordinator._client_calls')\n"
        "print(' '.join(sorted(m for m in heavy if m in sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.split() == []


def test_volume_tag_calls_import_no_http_framework_pydantic_or_jinja2() -> None:
    # `sealpod run` with a rollback-protected volume asks for the tag before the application
    # starts (runtime/_run_volumes.py): the whole call, signing included, stays light. The call
    # goes to a closed port so that every lazy import on its path is made.
    code = (
        "import datetime, sys\n"
        "from cryptography import x509\n"
        "from cryptography.hazmat.primitives import hashes, serialization\n"
        "from cryptography.hazmat.primitives.asymmetric import ec\n"
        "from cryptography.x509.oid import NameOID\n"
        "import sealpod.runtime._run_volumes\n"
        "from sealpod.coordinator.client import ActivationResult, get_volume_tag, set_volume_tag\n"
        "from sealpod.errors import NetworkError\n"
        "key = ec.generate_private_key(ec.SECP256R1())\n"
        "name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'web')])\n"
        "now = datetime.datetime.now(datetime.UTC)\n"
        "cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)\n"
        "        .public_key(key.public_key()).serial_number(1).not_valid_before(now)\n"
        "        .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))\n"
        "root = cert.public_bytes(serialization.Encoding.PEM)\n"
        "instance = ActivationResult(service='web', instance='web-0', simulated=True,\n"
        "    private_key=key, certificate=cert, certificate_chain=(cert,), trust_bundle=(),\n"
        "    root_certificate=cert, files={}, env={}, argv=None)\n"
        f"url = 'https://127.0.0.1:{_closed_port()}'\n"
        "for call in (lambda: get_volume_tag(url, root, instance, 'data'),\n"
        "             lambda: set_volume_tag(url, root, instance, 'data', expected_version=0,\n"
        "                                    tag=bytes(32))):\n"
        "    try:\n"
        "        call()\n"
        "    except NetworkError:\n"
        "        pass\n"
        "    else:\n"
        "        raise SystemExit('the closed port answered')\n"
        "assert 'sealpod.coordinator.auth' in sys.modules  # the signing path was taken\n"
        "heavy = ('httpx', 'httpcore', 'h11', 'anyio', 'trio', 'pydantic', 'pydantic_core',\n"
        "         'fastapi', 'starlette', 'jinja2', 'yaml', 'sealpod.manifest',\n"
        "         'sealpod.coordinator._client_calls')\n"
        "print(' '.join(sorted(m for m in heavy if m in sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.split() == []


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
