"""Coordinator building blocks: nonces, evidence binding, the simulated identity, package policy."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest

from sealpod.coordinator import (
    activation_report_data,
    coordinator_report_data,
    measure_distribution,
    package_policy,
)
from sealpod.coordinator.nonces import NonceIssuer, expiry_of_used_key, used_key
from sealpod.coordinator.server import parse_listen, server_names
from sealpod.errors import ConfigError, VerificationError
from sealpod.manifest import Package, Policy

# -- nonces ---------------------------------------------------------------------------------

KEY = bytes(range(32))


def test_nonce_is_accepted_until_it_expires() -> None:
    issuer = NonceIssuer(KEY, ttl=10)
    issued = issuer.issue(1000.0)
    assert len(issued.value) == 32
    assert issued.expires_at >= 1010
    assert issuer.check(issued.value, 1010.0) == issued.expires_at


def test_expired_nonce_is_refused() -> None:
    issuer = NonceIssuer(KEY, ttl=10)
    issued = issuer.issue(1000.0)
    with pytest.raises(VerificationError) as caught:
        issuer.check(issued.value, issued.expires_at + 1.0)
    assert caught.value.reason == "nonce_expired"


def test_invented_nonce_is_refused() -> None:
    issuer = NonceIssuer(KEY, ttl=10)
    for invented in (bytes(32), b"\xff" * 32, b"short"):
        with pytest.raises(VerificationError) as caught:
            issuer.check(invented, 1000.0)
        assert caught.value.reason == "nonce_unknown"


def test_nonce_with_an_extended_expiry_is_refused() -> None:
    issuer = NonceIssuer(KEY, ttl=10)
    issued = bytearray(issuer.issue(1000.0).value)
    issued[7] ^= 0x80  # the low byte of the big-endian expiry: far in the future or past
    with pytest.raises(VerificationError) as caught:
        issuer.check(bytes(issued), 1000.0)
    assert caught.value.reason == "nonce_unknown"


def test_nonce_of_another_coordinator_is_refused() -> None:
    issued = NonceIssuer(bytes(32), ttl=10).issue(1000.0)
    with pytest.raises(VerificationError) as caught:
        NonceIssuer(KEY, ttl=10).check(issued.value, 1001.0)
    assert caught.value.reason == "nonce_unknown"


def test_nonces_are_distinct_and_their_records_sort_by_expiry() -> None:
    issuer = NonceIssuer(KEY, ttl=10)
    values = {issuer.issue(0.0).value for _ in range(200)}
    assert len(values) == 200
    nonce = next(iter(values))
    assert used_key(nonce, 0x10) < used_key(nonce, 0x100) < used_key(nonce, 0x1000)
    assert expiry_of_used_key(used_key(nonce, 12345)) == 12345


# -- binding (DESIGN.md, "Binding evidence to keys") -----------------------------------------


def test_coordinator_report_data_follows_the_design() -> None:
    root, nonce = b"\x30\x82root-der", b"n" * 32
    expected = hashlib.sha256(root + nonce).digest() + b"\x00" * 32
    assert coordinator_report_data(root, nonce) == expected
    assert len(coordinator_report_data(root, nonce)) == 64


def test_activation_report_data_follows_the_design() -> None:
    spki, nonce = b"\x30\x59spki", b"m" * 32
    expected = hashlib.sha256(b"sealpod-activation-v1" + spki + nonce).digest() + bytes(32)
    assert activation_report_data(spki, nonce) == expected
    assert activation_report_data(spki, nonce) != activation_report_data(spki + b"x", nonce)


# -- the simulated coordinator identity -------------------------------------------------------


def _independent_mrenclave(files: dict[str, bytes]) -> bytes:
    """MRENCLAVE by the SDM records, written out here (not through sealpod.sgx)."""
    manifest = {
        "format": "sealpod-coordinator-identity-v1",
        "trusted_files": {path: hashlib.sha256(data).hexdigest() for path, data in files.items()},
    }
    blob = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    size = 4096
    while size < len(blob):
        size *= 2
    stream = hashlib.sha256()
    stream.update(struct.pack("<8sIQ44x", b"ECREATE", 1, size))
    padded = blob + bytes(-len(blob) % 4096)
    for page in range(0, len(padded), 4096):
        stream.update(struct.pack("<8sQQ40x", b"EADD", page, 0x201))  # R | PT_REG
        for chunk in range(0, 4096, 256):
            stream.update(struct.pack("<8sQ48x", b"EEXTEND", page + chunk))
            stream.update(padded[page + chunk : page + chunk + 256])
    return stream.digest()


def _tree(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def test_identity_is_the_measurement_of_the_distribution_files(tmp_path: Path) -> None:
    files = {"__init__.py": b"x = 1\n", "sub/mod.py": b"y = 2\n", "data/blob.der": b"\x30\x00"}
    _tree(tmp_path, files)
    measured = measure_distribution(tmp_path)
    assert measured.mr_enclave == _independent_mrenclave(files)
    assert [path for path, _ in measured.files] == sorted(files)


def test_identity_ignores_bytecode_caches(tmp_path: Path) -> None:
    files = {"__init__.py": b"x = 1\n"}
    _tree(tmp_path, {**files, "__pycache__/__init__.cpython-311.pyc": b"junk", "a.pyc": b"j"})
    assert measure_distribution(tmp_path).mr_enclave == _independent_mrenclave(files)


def test_changed_file_changes_the_identity(tmp_path: Path) -> None:
    _tree(tmp_path, {"__init__.py": b"x = 1\n"})
    before = measure_distribution(tmp_path).mr_enclave
    (tmp_path / "__init__.py").write_bytes(b"x = 2\n")
    assert measure_distribution(tmp_path).mr_enclave != before


def test_identity_does_not_depend_on_where_the_tree_is(tmp_path: Path) -> None:
    files = {"__init__.py": b"x = 1\n", "a/b.py": b"pass\n"}
    _tree(tmp_path / "one", files)
    _tree(tmp_path / "elsewhere" / "two", files)
    first = measure_distribution(tmp_path / "one")
    assert first.mr_enclave == measure_distribution(tmp_path / "elsewhere" / "two").mr_enclave


# -- package policy from the manifest --------------------------------------------------------


def test_package_policy_carries_identity_debug_and_simulation() -> None:
    package = Package.model_validate({"mrenclave": ["ab" * 32], "debug": False})
    policy = package_policy(package, Policy(allow_simulation=True), expected_report_data=bytes(64))
    assert policy.mrenclave == (bytes.fromhex("ab" * 32),)
    assert policy.allow_simulation is True
    assert policy.allow_debug is False
    assert policy.expected_report_data == bytes(64)


def test_package_policy_by_signer() -> None:
    package = Package.model_validate(
        {"mrsigner": "cd" * 32, "isv_prod_id": 7, "min_isv_svn": 3, "debug": True}
    )
    policy = package_policy(package, Policy())
    assert policy.mrsigner == bytes.fromhex("cd" * 32)
    assert policy.isv_prod_id == 7
    assert policy.min_isv_svn == 3
    assert policy.allow_debug is True
    assert policy.allow_simulation is False


def test_package_without_identity_is_refused() -> None:
    with pytest.raises(ConfigError):
        package_policy(Package.model_validate({}), Policy())


# -- listen addresses -------------------------------------------------------------------------


def test_listen_addresses_parse() -> None:
    assert parse_listen("127.0.0.1:8443") == ("127.0.0.1", 8443)
    assert parse_listen("[::1]:9000") == ("::1", 9000)
    assert parse_listen("coordinator.example:443") == ("coordinator.example", 443)
    for bad in ("8443", "host:", "host:99999", "host:http"):
        with pytest.raises(ConfigError):
            parse_listen(bad)


def test_wildcard_listen_covers_loopback_names() -> None:
    dns, ips = server_names("0.0.0.0", ["coord.example"])  # noqa: S104
    assert "localhost" in dns and "coord.example" in dns
    assert "127.0.0.1" in ips and "::1" in ips
    assert server_names("10.1.2.3") == ([], ["10.1.2.3"])


# -- metrics ----------------------------------------------------------------------------------


def test_metrics_exposition_counts_and_buckets() -> None:
    from sealpod.coordinator.metrics import CoordinatorMetrics

    metrics = CoordinatorMetrics()
    metrics.activation("web", 0.003)
    metrics.activation("web", 0.2)
    metrics.activation_refused("nonce_reused", 0.02)
    metrics.activation_refused('odd"reason', 20.0)
    lines = set(metrics.render().splitlines())
    assert 'sealpod_activations_total{service="web"} 2' in lines
    assert 'sealpod_activation_refusals_total{reason="nonce_reused"} 1' in lines
    assert 'sealpod_activation_refusals_total{reason="odd\\"reason"} 1' in lines
    # Cumulative buckets (Prometheus text format 0.0.4): le=0.005 holds 1, le=0.025 holds 2,
    # le=0.25 holds 3, and +Inf holds all 4 (20 s is beyond the largest bucket).
    assert 'sealpod_activation_duration_seconds_bucket{le="0.005"} 1' in lines
    assert 'sealpod_activation_duration_seconds_bucket{le="0.025"} 2' in lines
    assert 'sealpod_activation_duration_seconds_bucket{le="0.25"} 3' in lines
    assert 'sealpod_activation_duration_seconds_bucket{le="10"} 3' in lines
    assert 'sealpod_activation_duration_seconds_bucket{le="+Inf"} 4' in lines
    assert "sealpod_activation_duration_seconds_count 4" in lines


def test_expired_used_nonce_records_are_pruned_oldest_first(tmp_path: Path) -> None:
    import datetime

    from sealpod.coordinator._activation import _prune_used_nonces
    from sealpod.coordinator.nonces import USED_NAMESPACE
    from sealpod.store import open_store

    store = open_store(f"sqlite:///{tmp_path}/s.db", bytes(16))
    try:
        with store.transaction() as tx:
            for expiry in (100, 200, 300, 5000):
                tx.put(USED_NAMESPACE, used_key(bytes([expiry % 256]) * 32, expiry), b"")
        with store.transaction() as tx:
            _prune_used_nonces(tx, datetime.datetime.fromtimestamp(250, datetime.UTC))
        remaining = [expiry_of_used_key(key) for key in store.keys(USED_NAMESPACE)]
        assert remaining == [300, 5000]
    finally:
        store.close()
