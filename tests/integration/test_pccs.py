"""PCCSClient against a real loopback HTTP server serving Intel's PCS responses (go-tdx-guest 2023).

The server sends the bodies exactly as Intel did, with the issuer chains URL-encoded in the PCS v4
headers. Every request is counted, so the tests see when the cache is used and when it refreshes.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, quote, urlsplit

import dcap_qvl
import pytest

from sealpod.attestation.collateral import Collateral
from sealpod.attestation.pccs import PCCSClient
from sealpod.attestation.policy import KNOWN_TCB_STATUSES, AppraisalPolicy
from sealpod.attestation.verify import verify_quote
from sealpod.errors import NetworkError, VerificationError

pytestmark = pytest.mark.integration

MARGIN = 3600


class _Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> float:
        return float(self.now)


class _PCSHandler(BaseHTTPRequestHandler):
    """Serves /{tdx,sgx}/certification/v4/... from the vector folder; counts requests."""

    routes: ClassVar[dict[str, tuple[bytes, dict[str, str]]]] = {}
    counts: ClassVar[Counter[str]] = Counter()
    broken: ClassVar[set[str]] = set()

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        key = parts.path
        if key.endswith("/tcb"):
            key += "?fmspc=" + query.get("fmspc", "").lower()
        if key.endswith("/pckcrl"):
            key += f"?ca={query.get('ca')}&encoding={query.get('encoding')}"
        self.counts[key] += 1
        if key in self.broken:
            self.send_response(503)
            self.end_headers()
            return
        route = self.routes.get(key)
        if route is None:
            self.send_response(404)
            self.end_headers()
            return
        body, headers = route
        self.send_response(200)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture(scope="module")
def vector(attestation_vectors: Path) -> dict[str, Any]:
    folder = attestation_vectors / "go-tdx-guest-2023"
    case = json.loads((folder / "expected.json").read_text())[0]
    return {"folder": folder, "case": case}


@pytest.fixture
def server(vector: dict[str, Any]) -> Iterator[tuple[str, type[_PCSHandler]]]:
    folder: Path = vector["folder"]
    fmspc = vector["case"]["quote_fields"]["fmspc"].lower()

    def chain(name: str) -> str:
        return quote((folder / name).read_text(), safe="")

    class Handler(_PCSHandler):
        routes: ClassVar[dict[str, tuple[bytes, dict[str, str]]]] = {
            f"/tdx/certification/v4/tcb?fmspc={fmspc}": (
                (folder / "sample_tcbInfo_response").read_bytes(),
                {"TCB-Info-Issuer-Chain": chain("tcb_info_issuer_chain.pem")},
            ),
            "/tdx/certification/v4/qe/identity": (
                (folder / "sample_qeIdentity_response").read_bytes(),
                {"SGX-Enclave-Identity-Issuer-Chain": chain("qe_identity_issuer_chain.pem")},
            ),
            "/sgx/certification/v4/pckcrl?ca=platform&encoding=der": (
                (folder / "pckcrl").read_bytes(),
                {"SGX-PCK-CRL-Issuer-Chain": chain("pck_crl_issuer_chain.pem")},
            ),
            "/sgx/certification/v4/rootcacrl": ((folder / "rootcrl.der").read_bytes(), {}),
        }
        counts: ClassVar[Counter[str]] = Counter()
        broken: ClassVar[set[str]] = set()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", Handler
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _quote(vector: dict[str, Any]) -> bytes:
    data: bytes = (vector["folder"] / vector["case"]["quote"]).read_bytes()
    return data


def _now(vector: dict[str, Any]) -> int:
    now: int = vector["case"]["dcap_qvl_0_7_0"]["verify_at_now_secs"]["now_secs"]
    return now


def test_fetched_collateral_is_the_vectors(
    server: tuple[str, type[_PCSHandler]], vector: dict[str, Any], tmp_path: Path
) -> None:
    url, handler = server
    with PCCSClient(url, tmp_path / "cache", _Clock(_now(vector)), refresh_margin=MARGIN) as client:
        collateral = client.collateral_for_quote(_quote(vector))
    reference = Collateral.from_dcap_qvl_json(
        (vector["folder"] / vector["case"]["collateral"]).read_text()
    )
    assert collateral == reference
    assert sum(handler.counts.values()) == 4
    assert all(count == 1 for count in handler.counts.values())


def test_fetched_collateral_verifies_like_expected_json(
    server: tuple[str, type[_PCSHandler]], vector: dict[str, Any], tmp_path: Path
) -> None:
    url, _ = server
    now = _now(vector)
    with PCCSClient(url, tmp_path / "cache", _Clock(now)) as client:
        collateral = client.collateral_for_quote(_quote(vector))
    expected = vector["case"]["dcap_qvl_0_7_0"]["verify_at_now_secs"]
    assert expected["ok"] is False
    # dcap-qvl itself, on the fetched collateral:
    with pytest.raises(ValueError, match="No matching TCB level found"):
        dcap_qvl.verify(_quote(vector), collateral.to_dcap_qvl(), now)
    assert "No matching TCB level found" in expected["error"]
    # ... and through verify_quote: every signature passes, TCB matching fails.
    policy = AppraisalPolicy(accepted_tcb_statuses=tuple(KNOWN_TCB_STATUSES - {"Revoked"}))
    with pytest.raises(VerificationError) as info:
        verify_quote(_quote(vector), collateral, at=now, policy=policy)
    assert info.value.reason == "tcb_level_not_found"


def test_second_call_is_served_from_the_cache(
    server: tuple[str, type[_PCSHandler]], vector: dict[str, Any], tmp_path: Path
) -> None:
    url, handler = server
    clock = _Clock(_now(vector))
    with PCCSClient(url, tmp_path / "cache", clock, refresh_margin=MARGIN) as client:
        first = client.collateral_for_quote(_quote(vector))
        second = client.collateral_for_quote(_quote(vector))
    assert first == second
    assert sum(handler.counts.values()) == 4
    # A new client (e.g. after a restart) reads the disk cache.
    with PCCSClient(url, tmp_path / "cache", clock, refresh_margin=MARGIN) as client:
        assert client.collateral_for_quote(_quote(vector)) == first
    assert sum(handler.counts.values()) == 4
    assert not list((tmp_path / "cache").glob(".tmp-*"))


def test_items_are_refreshed_before_their_next_update(
    server: tuple[str, type[_PCSHandler]], vector: dict[str, Any], tmp_path: Path
) -> None:
    url, handler = server
    reference = Collateral.from_dcap_qvl_json(
        (vector["folder"] / vector["case"]["collateral"]).read_text()
    )
    clock = _Clock(_now(vector))
    with PCCSClient(url, tmp_path / "cache", clock, refresh_margin=MARGIN) as client:
        client.collateral_for_quote(_quote(vector))
        assert sum(handler.counts.values()) == 4
        # One second before "nextUpdate - margin" of the earliest item: still cached.
        clock.now = reference.not_after - MARGIN - 1
        client.collateral_for_quote(_quote(vector))
        assert sum(handler.counts.values()) == 4
        # At "nextUpdate - margin": the items expiring then (and only those) are fetched again.
        clock.now = reference.not_after - MARGIN
        client.collateral_for_quote(_quote(vector))
    refreshed = {
        name for name, item in reference.validity.items() if item.next_update - MARGIN <= clock.now
    }
    assert refreshed  # the QE identity and/or PCK CRL of this vector
    assert sum(handler.counts.values()) == 4 + len(refreshed)
    tcb_key = next(key for key in handler.counts if "/tcb" in key)
    assert handler.counts[tcb_key] == 1  # the TCB info is valid ten more days


def test_unreachable_pccs_uses_the_cache_until_next_update(
    server: tuple[str, type[_PCSHandler]], vector: dict[str, Any], tmp_path: Path
) -> None:
    url, handler = server
    reference = Collateral.from_dcap_qvl_json(
        (vector["folder"] / vector["case"]["collateral"]).read_text()
    )
    clock = _Clock(_now(vector))
    with PCCSClient(url, tmp_path / "cache", clock, refresh_margin=MARGIN) as client:
        client.collateral_for_quote(_quote(vector))
        handler.broken.update(handler.counts)
        clock.now = reference.not_after - 10  # due for refresh, not yet expired
        assert client.collateral_for_quote(_quote(vector)) == reference
        clock.now = reference.not_after + 10  # expired and the server is down
        with pytest.raises(NetworkError):
            client.collateral_for_quote(_quote(vector))


def test_closed_port_is_a_network_error(vector: dict[str, Any], tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with PCCSClient(f"http://127.0.0.1:{port}", tmp_path, _Clock(0), timeout=2) as client:
        with pytest.raises(NetworkError):
            client.collateral_for_quote(_quote(vector))


def test_unknown_fmspc_is_a_network_error(
    server: tuple[str, type[_PCSHandler]], tmp_path: Path
) -> None:
    url, _ = server
    with PCCSClient(url, None, _Clock(0)) as client:
        with pytest.raises(NetworkError, match="HTTP 404"):
            client.collateral("00" * 6, tee="tdx", ca="platform")


def test_broken_response_is_refused_and_not_cached(
    server: tuple[str, type[_PCSHandler]], vector: dict[str, Any], tmp_path: Path
) -> None:
    url, handler = server
    tcb_key = next(key for key in handler.routes if "/tcb" in key)
    good = handler.routes[tcb_key]
    handler.routes[tcb_key] = (b'{"tcbInfo": 1}', good[1])
    cache = tmp_path / "cache"
    with PCCSClient(url, cache, _Clock(_now(vector))) as client:
        with pytest.raises(VerificationError) as info:
            client.collateral_for_quote(_quote(vector))
        assert info.value.reason == "malformed_collateral"
        handler.routes[tcb_key] = good
        client.collateral_for_quote(_quote(vector))
    assert handler.counts[tcb_key] == 2


def test_missing_issuer_chain_header_is_refused(
    server: tuple[str, type[_PCSHandler]], vector: dict[str, Any], tmp_path: Path
) -> None:
    url, handler = server
    key = "/tdx/certification/v4/qe/identity"
    handler.routes[key] = (handler.routes[key][0], {})
    with PCCSClient(url, None, _Clock(_now(vector))) as client:
        with pytest.raises(NetworkError, match="SGX-Enclave-Identity-Issuer-Chain"):
            client.collateral_for_quote(_quote(vector))


def test_corrupted_cache_entry_is_fetched_again(
    server: tuple[str, type[_PCSHandler]], vector: dict[str, Any], tmp_path: Path
) -> None:
    url, handler = server
    cache = tmp_path / "cache"
    clock = _Clock(_now(vector))
    with PCCSClient(url, cache, clock) as client:
        client.collateral_for_quote(_quote(vector))
    for entry in cache.glob("*.json"):
        entry.write_text("{broken")
    with PCCSClient(url, cache, clock) as client:
        client.collateral_for_quote(_quote(vector))
    assert sum(handler.counts.values()) == 8
