"""TEE backends: the simulation backend and the Gramine backend against a fake /dev/attestation."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dcap_qvl
import pytest

from sealpod.attestation.quote import SGXReportBody, parse_quote
from sealpod.errors import ConfigError, EnvironmentUnavailableError
from sealpod.tee import (
    EnclaveIdentity,
    GramineBackend,
    SimulatedPlatform,
    SimulationBackend,
    TEEBackend,
    get_backend,
)

pytestmark = pytest.mark.timeout(60)

T0 = 1_800_000_000
IDENTITY = EnclaveIdentity(
    mr_enclave=bytes.fromhex("c3" * 32),
    mr_signer=bytes.fromhex("d4" * 32),
    isv_prod_id=5,
    isv_svn=2,
)


def verify(platform: SimulatedPlatform, quote: bytes, now: int = T0 + 60) -> Any:
    collateral = dcap_qvl.QuoteCollateralV3.from_json(json.dumps(platform.collateral()))
    return dcap_qvl.verify_with_root_ca(quote, collateral, platform.root_certificate_der(), now)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> SimulatedPlatform:
    return SimulatedPlatform.init(tmp_path_factory.mktemp("sim") / "platform", now=T0)


class FakeAttestationDevice:
    """A directory that behaves like Gramine's /dev/attestation, backed by the simulated platform.

    ``user_report_data`` and ``quote`` are FIFOs served by a thread: what is written to the first
    comes back inside a simulated quote read from the second, as with Gramine.
    """

    def __init__(
        self, root: Path, platform: SimulatedPlatform, identity: EnclaveIdentity, mode: str = "ok"
    ) -> None:
        self.root = root
        self.mode = mode
        self.requests: list[bytes] = []
        root.mkdir()
        os.mkfifo(root / "user_report_data")
        os.mkfifo(root / "quote")
        (root / "attestation_type").write_text("dcap\n")
        (root / "keys").mkdir()
        for policy in ("mrenclave", "mrsigner"):
            key = platform.sealing_key(
                policy,  # type: ignore[arg-type]
                mr_enclave=identity.mr_enclave,
                mr_signer=identity.mr_signer,
                isv_prod_id=identity.isv_prod_id,
            )
            (root / "keys" / f"_sgx_{policy}").write_bytes(key)
        self._platform = platform
        self._identity = identity
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            with open(self.root / "user_report_data", "rb") as fh:
                data = fh.read()
            if self._stop:
                return
            self.requests.append(data)
            if self.mode == "garbage":
                answer = b"\x03\x00" + b"\x00" * 100
            else:
                if self.mode == "other_report_data":
                    data = bytes(64)[:63] + b"\x01"
                answer = self._platform.quote(
                    data,
                    mr_enclave=self._identity.mr_enclave,
                    mr_signer=self._identity.mr_signer,
                    isv_prod_id=self._identity.isv_prod_id,
                    isv_svn=self._identity.isv_svn,
                )
            with open(self.root / "quote", "wb") as fh:
                fh.write(answer)

    def close(self) -> None:
        self._stop = True
        with open(self.root / "user_report_data", "wb"):
            pass
        self._thread.join(timeout=5)


@pytest.fixture
def device(tmp_path: Path, platform: SimulatedPlatform) -> Iterator[FakeAttestationDevice]:
    fake = FakeAttestationDevice(tmp_path / "attestation", platform, IDENTITY)
    yield fake
    fake.close()


# ---------------------------------------------------------------- Gramine backend


def test_gramine_quote_embeds_report_data_and_verifies(
    device: FakeAttestationDevice, platform: SimulatedPlatform
) -> None:
    backend = GramineBackend(device.root)
    quote = backend.quote(b"nonce-123")
    assert device.requests == [b"nonce-123".ljust(64, b"\x00")]
    body = parse_quote(quote).body
    assert isinstance(body, SGXReportBody)
    assert body.report_data == b"nonce-123".ljust(64, b"\x00")
    assert verify(platform, quote).status == "UpToDate"
    assert backend.simulated is False


def test_gramine_identity_is_read_from_a_quote(device: FakeAttestationDevice) -> None:
    backend = GramineBackend(device.root)
    assert backend.identity == IDENTITY
    assert backend.identity == IDENTITY  # cached: only one request
    assert device.requests == [bytes(64)]


def test_gramine_sealing_keys_come_from_the_device(
    device: FakeAttestationDevice, platform: SimulatedPlatform
) -> None:
    backend = GramineBackend(device.root)
    assert (
        backend.sealing_key("mrenclave") == (device.root / "keys" / "_sgx_mrenclave").read_bytes()
    )
    assert backend.sealing_key("mrsigner") == (device.root / "keys" / "_sgx_mrsigner").read_bytes()
    assert len(backend.sealing_key("mrenclave")) == 16


def test_gramine_sealing_key_of_wrong_size_is_refused(device: FakeAttestationDevice) -> None:
    (device.root / "keys" / "_sgx_mrsigner").write_bytes(bytes(32))
    with pytest.raises(EnvironmentUnavailableError, match="16-byte"):
        GramineBackend(device.root).sealing_key("mrsigner")


def test_gramine_unknown_sealing_policy_is_refused(device: FakeAttestationDevice) -> None:
    with pytest.raises(ConfigError, match="policy"):
        GramineBackend(device.root).sealing_key("mrnothing")  # type: ignore[arg-type]


def test_gramine_quote_for_other_report_data_is_refused(
    tmp_path: Path, platform: SimulatedPlatform
) -> None:
    fake = FakeAttestationDevice(tmp_path / "dev", platform, IDENTITY, mode="other_report_data")
    try:
        with pytest.raises(EnvironmentUnavailableError, match="different report data"):
            GramineBackend(fake.root).quote(b"mine")
    finally:
        fake.close()


def test_gramine_malformed_quote_is_refused(tmp_path: Path, platform: SimulatedPlatform) -> None:
    fake = FakeAttestationDevice(tmp_path / "dev", platform, IDENTITY, mode="garbage")
    try:
        with pytest.raises(EnvironmentUnavailableError, match="malformed quote"):
            GramineBackend(fake.root).quote(b"mine")
    finally:
        fake.close()


def test_gramine_report_data_longer_than_64_bytes_is_refused(device: FakeAttestationDevice) -> None:
    with pytest.raises(ConfigError, match="64"):
        GramineBackend(device.root).quote(bytes(65))
    assert device.requests == []


def test_missing_attestation_device_is_an_environment_error(tmp_path: Path) -> None:
    with pytest.raises(EnvironmentUnavailableError, match="no Gramine attestation device") as info:
        GramineBackend(tmp_path / "attestation")
    assert info.value.exit_code == 3


def test_gramine_without_remote_attestation_is_an_environment_error(tmp_path: Path) -> None:
    root = tmp_path / "attestation"
    root.mkdir()
    (root / "user_report_data").write_bytes(b"")
    (root / "quote").write_bytes(b"")
    (root / "attestation_type").write_text("none\n")
    with pytest.raises(EnvironmentUnavailableError, match="disabled"):
        GramineBackend(root)


# ---------------------------------------------------------------- simulation backend


def test_simulation_backend_quote_verifies_with_its_identity(platform: SimulatedPlatform) -> None:
    backend = SimulationBackend(platform, IDENTITY)
    quote = backend.quote(b"\x01" * 64)
    result = verify(platform, quote)
    assert result.status == "UpToDate"
    body = parse_quote(quote).body
    assert isinstance(body, SGXReportBody)
    assert EnclaveIdentity.from_report_body(body) == IDENTITY
    assert body.report_data == b"\x01" * 64


def test_simulation_backend_says_simulated_and_warns(
    platform: SimulatedPlatform, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="sealpod.tee.backend"):
        backend = SimulationBackend(platform, IDENTITY)
    assert backend.simulated is True
    assert any("SIMULATED" in record.getMessage() for record in caplog.records)


def test_simulation_backend_sealing_keys_match_platform(platform: SimulatedPlatform) -> None:
    backend = SimulationBackend(platform, IDENTITY)
    for policy in ("mrenclave", "mrsigner"):
        expected = platform.sealing_key(
            policy,  # type: ignore[arg-type]
            mr_enclave=IDENTITY.mr_enclave,
            mr_signer=IDENTITY.mr_signer,
            isv_prod_id=IDENTITY.isv_prod_id,
        )
        assert backend.sealing_key(policy) == expected  # type: ignore[arg-type]
    assert backend.sealing_key("mrenclave") != backend.sealing_key("mrsigner")


def test_gramine_and_simulation_backends_agree_on_sealing_keys(
    device: FakeAttestationDevice, platform: SimulatedPlatform
) -> None:
    gramine = GramineBackend(device.root)
    simulated = SimulationBackend(platform, IDENTITY)
    assert gramine.sealing_key("mrenclave") == simulated.sealing_key("mrenclave")


def test_both_backends_implement_the_protocol(
    device: FakeAttestationDevice, platform: SimulatedPlatform
) -> None:
    assert isinstance(GramineBackend(device.root), TEEBackend)
    assert isinstance(SimulationBackend(platform, IDENTITY), TEEBackend)


# ---------------------------------------------------------------- factory and identity


def test_get_backend_simulation_loads_platform(platform: SimulatedPlatform) -> None:
    backend = get_backend("simulation", identity=IDENTITY, platform_dir=platform.directory)
    assert backend.simulated is True
    assert backend.identity == IDENTITY


def test_get_backend_simulation_uses_sealpod_sim_dir(
    platform: SimulatedPlatform, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEALPOD_SIM_DIR", str(platform.directory))
    backend = get_backend("simulation", identity=IDENTITY)
    assert verify(platform, backend.quote(b"x")).status == "UpToDate"


def test_get_backend_simulation_without_platform_says_run_sim_init(tmp_path: Path) -> None:
    with pytest.raises(EnvironmentUnavailableError, match="sealpod sim init"):
        get_backend("simulation", identity=IDENTITY, platform_dir=tmp_path / "none")


def test_get_backend_simulation_needs_identity(platform: SimulatedPlatform) -> None:
    with pytest.raises(ConfigError, match="identity"):
        get_backend("simulation", platform_dir=platform.directory)


def test_get_backend_gramine(device: FakeAttestationDevice) -> None:
    backend = get_backend("gramine", gramine_root=device.root)
    assert isinstance(backend, GramineBackend)


def test_get_backend_unknown_name_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown TEE backend"):
        get_backend("tdx")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mr_enclave": bytes(31), "mr_signer": bytes(32)},
        {"mr_enclave": bytes(32), "mr_signer": b""},
        {"mr_enclave": bytes(32), "mr_signer": bytes(32), "isv_prod_id": 70000},
        {"mr_enclave": bytes(32), "mr_signer": bytes(32), "isv_svn": -1},
    ],
)
def test_malformed_enclave_identity_is_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        EnclaveIdentity(**kwargs)


def test_enclave_identity_to_dict() -> None:
    assert IDENTITY.to_dict() == {
        "mr_enclave": "c3" * 32,
        "mr_signer": "d4" * 32,
        "isv_prod_id": 5,
        "isv_svn": 2,
        "debug": False,
    }
