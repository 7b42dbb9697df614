"""Collateral from a PCCS: the coordinator fetches it (PCS API v4 over TLS) when the manifest
says ``collateral_source: pccs`` or when a service sends none. The PCCS here is a small HTTPS
server that serves the simulated platform's signed collateral in the PCS v4 wire format.
"""

from __future__ import annotations

import datetime
import http.server
import json
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from test_coordinator_server import (
    WEB_MRENCLAVE,
    _activation_body,
    _assert_refused,
    _backend,
    _post_activation,
    running_coordinator,
)

from sealpod.coordinator import activate
from sealpod.coordinator.server import server_ssl_context
from sealpod.pki import CoordinatorCA
from sealpod.tee import SimulatedPlatform

pytestmark = pytest.mark.integration


@dataclass
class FakePCCS:
    url: str
    ca_file: Path
    requests: list[str] = field(default_factory=list)


def _responses(collateral: dict[str, str]) -> dict[str, tuple[bytes, dict[str, str]]]:
    """PCS API v4 responses: signed JSON bodies (the signed value cut in verbatim), DER CRLs,
    issuer chains as URL-encoded PEM headers (Intel PCS API v4 specification)."""

    def chain(name: str) -> str:
        return urllib.parse.quote(collateral[name])

    tcb = (
        '{"tcbInfo":' + collateral["tcb_info"] + ',"signature":"'
        + collateral["tcb_info_signature"] + '"}'
    )  # fmt: skip
    qe = (
        '{"enclaveIdentity":' + collateral["qe_identity"] + ',"signature":"'
        + collateral["qe_identity_signature"] + '"}'
    )  # fmt: skip
    return {
        "/sgx/certification/v4/tcb": (
            tcb.encode(),
            {"TCB-Info-Issuer-Chain": chain("tcb_info_issuer_chain")},
        ),
        "/sgx/certification/v4/qe/identity": (
            qe.encode(),
            {"SGX-Enclave-Identity-Issuer-Chain": chain("qe_identity_issuer_chain")},
        ),
        "/sgx/certification/v4/pckcrl": (
            bytes.fromhex(collateral["pck_crl"]),
            {"SGX-PCK-CRL-Issuer-Chain": chain("pck_crl_issuer_chain")},
        ),
        "/sgx/certification/v4/rootcacrl": (bytes.fromhex(collateral["root_ca_crl"]), {}),
    }


@pytest.fixture
def pccs(tmp_path: Path, platform: SimulatedPlatform) -> Iterator[FakePCCS]:
    responses = _responses(platform.collateral())
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = urllib.parse.urlsplit(self.path).path
            seen.append(path)
            if path not in responses:
                self.send_error(404)
                return
            body, headers = responses[path]
            self.send_response(200)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    ca = CoordinatorCA.create(now=datetime.datetime.now(datetime.UTC), name="fake pccs")
    credentials = ca.issue_secret_cert(
        key_type="ecdsa",
        common_name="127.0.0.1",
        ips=["127.0.0.1"],
        key_usage=("digital_signature", "server_auth"),
        issuer=ca.root,
        now=datetime.datetime.now(datetime.UTC),
    )
    ca_file = tmp_path / "pccs-ca.pem"
    ca_file.write_bytes(ca.root_certificate.public_bytes(serialization.Encoding.PEM))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = server_ssl_context(credentials).wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield FakePCCS(f"https://127.0.0.1:{server.server_address[1]}", ca_file, seen)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> SimulatedPlatform:
    return SimulatedPlatform.init(tmp_path_factory.mktemp("sim") / "platform")


def _manifest(**policy: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "packages": {"web": {"mrenclave": [WEB_MRENCLAVE.hex()]}},
        "services": {"web": {"package": "web"}},
        "policy": {"allow_simulation": True, **policy},
    }


def test_manifest_pccs_collateral_is_used_instead_of_the_services(
    tmp_path: Path, platform: SimulatedPlatform, pccs: FakePCCS
) -> None:
    manifest = _manifest(collateral_source="pccs", pccs_url=pccs.url + "/sgx/certification/v4/")
    with running_coordinator(tmp_path, platform, manifest, pccs_ca_file=pccs.ca_file) as running:
        body = _activation_body(running, _backend(platform), "web", "p0")
        body["collateral"] = json.loads(json.dumps(body["collateral"]))
        body["collateral"]["tcb_info_signature"] = "00" * 64  # ignored: the PCCS decides
        assert _post_activation(running, body).status_code == 200
        assert "/sgx/certification/v4/tcb" in pccs.requests


def test_service_without_collateral_gets_it_from_the_coordinators_pccs(
    tmp_path: Path, platform: SimulatedPlatform, pccs: FakePCCS
) -> None:
    with running_coordinator(
        tmp_path, platform, _manifest(), pccs_url=pccs.url, pccs_ca_file=pccs.ca_file
    ) as running:
        body = _activation_body(running, _backend(platform), "web", "p1")
        body["collateral"] = None
        assert _post_activation(running, body).status_code == 200
        assert pccs.requests
        # With the service's own collateral the PCCS is not asked again.
        count = len(pccs.requests)
        activate(running.url, running.root_pem, "web", "p2", _backend(platform))
        assert len(pccs.requests) == count


def test_unreachable_pccs_is_a_503_refusal(tmp_path: Path, platform: SimulatedPlatform) -> None:
    manifest = _manifest(collateral_source="pccs", pccs_url="https://127.0.0.1:9/")
    with running_coordinator(tmp_path, platform, manifest) as running:
        body = _activation_body(running, _backend(platform), "web", "p3")
        response = _post_activation(running, body)
        _assert_refused(running, response, 503, "collateral_unavailable", "p3")
