"""The simulated SGX platform: its quotes pass dcap-qvl under the simulated root, and only there."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import dcap_qvl
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from sealpod.attestation.quote import parse_quote
from sealpod.errors import ConfigError, EnvironmentUnavailableError
from sealpod.tee import simulation
from sealpod.tee.simulation import SimulatedPlatform

T0 = 1_800_000_000  # 2027-01-15T08:00:00Z, the pinned "now" of these tests
DAY = 24 * 3600
MR_ENCLAVE = bytes.fromhex("a1" * 32)
MR_SIGNER = bytes.fromhex("b2" * 32)
REPORT_DATA = b"sealpod test report data".ljust(64, b"\x00")

# Offsets in an SGX quote v3 (Intel SGX ECDSA Quote Library API, A.4): a 48-byte header, then
# the 384-byte REPORTBODY (Intel SDM Vol. 3D, Table 38-21), then the signature data.
HEADER = 48
BODY_FIELDS = {
    "cpu_svn": (0, 16),
    "misc_select": (16, 4),
    "attributes": (48, 16),
    "mr_enclave": (64, 32),
    "mr_signer": (128, 32),
    "config_id": (192, 64),
    "isv_prod_id": (256, 2),
    "isv_svn": (258, 2),
    "config_svn": (260, 2),
    "report_data": (320, 64),
}
SIGNED_LENGTH = HEADER + 384


def verify(quote: bytes, collateral: dict[str, Any], root_der: bytes, now: int) -> Any:
    return dcap_qvl.verify_with_root_ca(
        quote, dcap_qvl.QuoteCollateralV3.from_json(json.dumps(collateral)), root_der, now
    )


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> SimulatedPlatform:
    return SimulatedPlatform.init(tmp_path_factory.mktemp("sim") / "platform", now=T0)


@pytest.fixture
def fresh_platform(tmp_path: Path) -> SimulatedPlatform:
    return SimulatedPlatform.init(tmp_path / "platform", now=T0)


@pytest.fixture(scope="module")
def good_quote(platform: SimulatedPlatform) -> bytes:
    return platform.quote(
        REPORT_DATA, mr_enclave=MR_ENCLAVE, mr_signer=MR_SIGNER, isv_prod_id=7, isv_svn=3
    )


@pytest.fixture(scope="module")
def intel_root(shared_dir: Path) -> bytes:
    path = shared_dir / "attestation-vectors" / "dcap-qvl-samples" / "IntelSGXRootCA.der"
    if not path.is_file():
        pytest.skip("Intel SGX root CA vector is absent")
    return path.read_bytes()


# ---------------------------------------------------------------- the acceptance properties


def test_simulated_quote_verifies_under_simulated_root(
    platform: SimulatedPlatform, good_quote: bytes
) -> None:
    result = verify(good_quote, platform.collateral(), platform.root_certificate_der(), T0 + 60)
    assert result.status == "UpToDate"
    assert list(result.advisory_ids) == []
    report = json.loads(result.to_json())["report"]["SgxEnclave"]
    assert report["mr_enclave"] == MR_ENCLAVE.hex()
    assert report["mr_signer"] == MR_SIGNER.hex()
    assert report["isv_prod_id"] == 7
    assert report["isv_svn"] == 3
    assert report["report_data"] == REPORT_DATA.hex()


def test_simulated_quote_passes_dcap_qvl_strict_policy(
    platform: SimulatedPlatform, good_quote: bytes
) -> None:
    verifier = dcap_qvl.QuoteVerifier(platform.root_certificate_der())
    collateral = dcap_qvl.QuoteCollateralV3.from_json(json.dumps(platform.collateral()))
    claims = verifier.verify_with_policy(
        good_quote, collateral, T0 + 60, dcap_qvl.QuotePolicy.strict(T0 + 60)
    )
    data = json.loads(claims.to_json())
    assert data["tcb"]["status"] == "UpToDate"
    assert data["platform"]["pck"]["dynamic_platform"] == "False"


def test_simulated_quote_is_refused_under_intel_root(
    platform: SimulatedPlatform, good_quote: bytes, intel_root: bytes
) -> None:
    with pytest.raises(ValueError):
        verify(good_quote, platform.collateral(), intel_root, T0 + 60)


def test_simulated_quote_is_refused_with_real_intel_collateral(
    platform: SimulatedPlatform, good_quote: bytes, intel_root: bytes, attestation_vectors: Path
) -> None:
    real = json.loads(
        (attestation_vectors / "dcap-qvl-samples" / "sgx_quote_collateral.json").read_text()
    )
    # 2025-07-19T09:01:18Z lies inside the real collateral's window (expected.json).
    with pytest.raises(ValueError):
        verify(good_quote, real, intel_root, 1752915678)


def test_quote_is_dcap_v3_with_ecdsa_p256_and_pck_chain(
    platform: SimulatedPlatform, good_quote: bytes
) -> None:
    assert int.from_bytes(good_quote[0:2], "little") == 3  # version
    assert int.from_bytes(good_quote[2:4], "little") == 2  # attestation key type: ECDSA P-256
    assert int.from_bytes(good_quote[4:8], "little") == 0  # SGX
    quote = parse_quote(good_quote)
    assert quote.certification_data.cert_type == 5
    chain = quote.certification_data.pck_chain_certificates()
    assert len(chain) == 3
    assert quote.to_bytes() == good_quote
    parsed = dcap_qvl.parse_quote(good_quote)
    assert parsed.ca() == "platform"


def test_report_data_shorter_than_64_bytes_is_zero_padded(platform: SimulatedPlatform) -> None:
    quote = platform.quote(b"abc", mr_enclave=MR_ENCLAVE, mr_signer=MR_SIGNER)
    offset, size = BODY_FIELDS["report_data"]
    assert quote[HEADER + offset : HEADER + offset + size] == b"abc" + bytes(61)


def test_root_ca_subject_says_simulated_and_insecure(platform: SimulatedPlatform) -> None:
    (cn,) = platform.root_certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert "SIMULATED" in str(cn.value)
    assert "INSECURE" in str(cn.value)
    assert platform.simulated is True
    assert platform.describe(T0)["simulated"] is True


def test_collateral_has_dcap_qvl_shape(
    platform: SimulatedPlatform, attestation_vectors: Path
) -> None:
    real = json.loads(
        (attestation_vectors / "dcap-qvl-samples" / "sgx_quote_collateral.json").read_text()
    )
    ours = platform.collateral()
    assert set(ours) == set(real)
    tcb_info = json.loads(ours["tcb_info"])
    assert set(tcb_info) == set(json.loads(real["tcb_info"]))
    assert set(json.loads(ours["qe_identity"])) == set(json.loads(real["qe_identity"]))
    assert tcb_info["id"] == "SGX"
    assert tcb_info["version"] == 3
    assert [level["tcbStatus"] for level in tcb_info["tcbLevels"]] == ["UpToDate"]
    assert json.loads(ours["qe_identity"])["id"] == "QE"
    assert json.loads(ours["qe_identity"])["version"] == 2


def test_tcb_info_matches_pck_certificate(platform: SimulatedPlatform, good_quote: bytes) -> None:
    chain = b"".join(parse_quote(good_quote).certification_data.pck_chain_certificates())
    ext = dcap_qvl.parse_pck_extension_from_pem(chain)
    tcb_info = json.loads(platform.collateral()["tcb_info"])
    assert bytes.fromhex(tcb_info["fmspc"]) == bytes(ext.fmspc)
    assert bytes.fromhex(tcb_info["pceId"]) == bytes(ext.pce_id)
    level = tcb_info["tcbLevels"][0]["tcb"]
    assert level["pcesvn"] == ext.pce_svn
    assert bytes(c["svn"] for c in level["sgxtcbcomponents"]) == bytes(ext.cpu_svn)


def test_crls_are_signed_by_their_issuers(platform: SimulatedPlatform) -> None:
    collateral = platform.collateral()
    chain = x509.load_pem_x509_certificates(collateral["pck_crl_issuer_chain"].encode())
    pck_crl = x509.load_der_x509_crl(bytes.fromhex(collateral["pck_crl"]))
    root_crl = x509.load_der_x509_crl(bytes.fromhex(collateral["root_ca_crl"]))
    assert pck_crl.is_signature_valid(chain[0].public_key())  # type: ignore[arg-type]
    assert root_crl.is_signature_valid(platform.root_certificate.public_key())  # type: ignore[arg-type]
    assert pck_crl.issuer == chain[0].subject
    assert root_crl.issuer == platform.root_certificate.subject


# ---------------------------------------------------------------- tampering


@pytest.mark.parametrize("field", sorted(BODY_FIELDS))
def test_flipped_bit_in_report_body_field_is_refused(
    platform: SimulatedPlatform, good_quote: bytes, field: str
) -> None:
    offset, size = BODY_FIELDS[field]
    for position in (HEADER + offset, HEADER + offset + size - 1):
        tampered = bytearray(good_quote)
        tampered[position] ^= 0x01
        with pytest.raises(ValueError):
            verify(bytes(tampered), platform.collateral(), platform.root_certificate_der(), T0 + 60)


def test_flipped_bit_anywhere_in_signed_region_is_refused(
    platform: SimulatedPlatform, good_quote: bytes
) -> None:
    collateral = dcap_qvl.QuoteCollateralV3.from_json(json.dumps(platform.collateral()))
    root = platform.root_certificate_der()
    accepted = []
    for position in range(SIGNED_LENGTH):
        tampered = bytearray(good_quote)
        tampered[position] ^= 0x80
        try:
            dcap_qvl.verify_with_root_ca(bytes(tampered), collateral, root, T0 + 60)
        except ValueError:
            continue
        accepted.append(position)
    assert accepted == []


def test_flipped_bit_in_quote_signature_is_refused(
    platform: SimulatedPlatform, good_quote: bytes
) -> None:
    tampered = bytearray(good_quote)
    tampered[SIGNED_LENGTH + 4 + 10] ^= 0x01  # inside the 64-byte ECDSA signature
    with pytest.raises(ValueError, match="signature"):
        verify(bytes(tampered), platform.collateral(), platform.root_certificate_der(), T0 + 60)


def test_flipped_bit_in_qe_report_is_refused(
    platform: SimulatedPlatform, good_quote: bytes
) -> None:
    tampered = bytearray(good_quote)
    qe_report = SIGNED_LENGTH + 4 + 64 + 64
    tampered[qe_report + 64 + 5] ^= 0x01  # QE MRENCLAVE
    with pytest.raises(ValueError):
        verify(bytes(tampered), platform.collateral(), platform.root_certificate_der(), T0 + 60)


def test_flipped_bit_in_pck_chain_is_refused(
    platform: SimulatedPlatform, good_quote: bytes
) -> None:
    start = good_quote.index(b"-----BEGIN CERTIFICATE-----") + 200
    tampered = bytearray(good_quote)
    tampered[start] = ord("A") if tampered[start] != ord("A") else ord("B")
    with pytest.raises(ValueError):
        verify(bytes(tampered), platform.collateral(), platform.root_certificate_der(), T0 + 60)


def test_tampered_tcb_info_is_refused(platform: SimulatedPlatform, good_quote: bytes) -> None:
    collateral = platform.collateral()
    collateral["tcb_info"] = collateral["tcb_info"].replace('"pcesvn":13', '"pcesvn":12')
    assert collateral["tcb_info"] != platform.collateral()["tcb_info"]
    with pytest.raises(ValueError, match="tcb_info"):
        verify(good_quote, collateral, platform.root_certificate_der(), T0 + 60)


def test_tampered_qe_identity_is_refused(platform: SimulatedPlatform, good_quote: bytes) -> None:
    collateral = platform.collateral()
    collateral["qe_identity"] = collateral["qe_identity"].replace('"isvprodid":1', '"isvprodid":2')
    assert collateral["qe_identity"] != platform.collateral()["qe_identity"]
    with pytest.raises(ValueError, match="qe_identity"):
        verify(good_quote, collateral, platform.root_certificate_der(), T0 + 60)


def test_quote_from_another_simulated_platform_is_refused(
    platform: SimulatedPlatform, fresh_platform: SimulatedPlatform
) -> None:
    other = fresh_platform.quote(REPORT_DATA, mr_enclave=MR_ENCLAVE, mr_signer=MR_SIGNER)
    with pytest.raises(ValueError):
        verify(other, platform.collateral(), platform.root_certificate_der(), T0 + 60)
    with pytest.raises(ValueError):
        verify(other, fresh_platform.collateral(), platform.root_certificate_der(), T0 + 60)


def test_debug_enclave_quote_is_refused_by_dcap_qvl(platform: SimulatedPlatform) -> None:
    quote = platform.quote(REPORT_DATA, mr_enclave=MR_ENCLAVE, mr_signer=MR_SIGNER, debug=True)
    assert parse_quote(quote).body.debug  # type: ignore[union-attr]
    with pytest.raises(ValueError, match=r"(?i)debug"):
        verify(quote, platform.collateral(), platform.root_certificate_der(), T0 + 60)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mr_enclave": bytes(31)},
        {"mr_signer": bytes(33)},
        {"isv_prod_id": 0x10000},
        {"isv_svn": -1},
        {"attributes": bytes(15)},
        {"cpu_svn": bytes(17)},
    ],
)
def test_malformed_identity_is_refused(platform: SimulatedPlatform, kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"mr_enclave": MR_ENCLAVE, "mr_signer": MR_SIGNER, **kwargs}
    with pytest.raises(ConfigError):
        platform.quote(REPORT_DATA, **args)


def test_report_data_longer_than_64_bytes_is_refused(platform: SimulatedPlatform) -> None:
    with pytest.raises(ConfigError, match="64"):
        platform.quote(bytes(65), mr_enclave=MR_ENCLAVE, mr_signer=MR_SIGNER)


# ---------------------------------------------------------------- collateral validity


def test_collateral_is_valid_for_thirty_days(
    platform: SimulatedPlatform, good_quote: bytes
) -> None:
    root = platform.root_certificate_der()
    assert verify(good_quote, platform.collateral(), root, T0).status == "UpToDate"
    assert verify(good_quote, platform.collateral(), root, T0 + 30 * DAY).status == "UpToDate"


def test_expired_collateral_is_refused(platform: SimulatedPlatform, good_quote: bytes) -> None:
    with pytest.raises(ValueError, match=r"(?i)expired"):
        verify(
            good_quote, platform.collateral(), platform.root_certificate_der(), T0 + 30 * DAY + 1
        )


def test_collateral_from_the_future_is_refused(
    platform: SimulatedPlatform, good_quote: bytes
) -> None:
    with pytest.raises(ValueError, match="future"):
        verify(good_quote, platform.collateral(), platform.root_certificate_der(), T0 - 1)


def test_collateral_window_reports_thirty_days(platform: SimulatedPlatform) -> None:
    window = platform.collateral_window()
    assert (window.not_before, window.not_after) == (T0, T0 + 30 * DAY)
    assert window.contains(T0 + DAY)
    assert not window.contains(T0 + 31 * DAY)


def test_renewed_collateral_verifies_again(fresh_platform: SimulatedPlatform) -> None:
    later = T0 + 45 * DAY
    quote = fresh_platform.quote(REPORT_DATA, mr_enclave=MR_ENCLAVE, mr_signer=MR_SIGNER)
    root = fresh_platform.root_certificate_der()
    with pytest.raises(ValueError, match=r"(?i)expired"):
        verify(quote, fresh_platform.collateral(), root, later)
    fresh_platform.renew_collateral(later)
    assert verify(quote, fresh_platform.collateral(), root, later).status == "UpToDate"
    # and the renewal is on disk, for the next process
    reloaded = SimulatedPlatform.load(fresh_platform.directory)
    assert verify(quote, reloaded.collateral(), root, later + DAY).status == "UpToDate"


def test_renewal_with_custom_validity(fresh_platform: SimulatedPlatform) -> None:
    quote = fresh_platform.quote(REPORT_DATA, mr_enclave=MR_ENCLAVE, mr_signer=MR_SIGNER)
    root = fresh_platform.root_certificate_der()
    fresh_platform.renew_collateral(T0, validity=3600)
    assert verify(quote, fresh_platform.collateral(), root, T0 + 3600).status == "UpToDate"
    with pytest.raises(ValueError):
        verify(quote, fresh_platform.collateral(), root, T0 + 3601)


def test_init_with_short_validity(tmp_path: Path) -> None:
    platform = SimulatedPlatform.init(tmp_path / "p", now=T0, collateral_validity=600)
    quote = platform.quote(REPORT_DATA, mr_enclave=MR_ENCLAVE, mr_signer=MR_SIGNER)
    with pytest.raises(ValueError, match=r"(?i)expired"):
        verify(quote, platform.collateral(), platform.root_certificate_der(), T0 + 601)


def test_non_positive_validity_is_refused(
    tmp_path: Path, fresh_platform: SimulatedPlatform
) -> None:
    with pytest.raises(ConfigError):
        SimulatedPlatform.init(tmp_path / "p", now=T0, collateral_validity=0)
    with pytest.raises(ConfigError):
        fresh_platform.renew_collateral(T0, validity=-5)


# ---------------------------------------------------------------- sealing keys


def _key(platform: SimulatedPlatform, policy: str = "mrenclave", **kwargs: Any) -> bytes:
    args: dict[str, Any] = {"mr_enclave": MR_ENCLAVE, "mr_signer": MR_SIGNER, **kwargs}
    return platform.sealing_key(policy, **args)  # type: ignore[arg-type]


def test_sealing_keys_are_16_bytes(platform: SimulatedPlatform) -> None:
    assert len(_key(platform, "mrenclave")) == 16
    assert len(_key(platform, "mrsigner")) == 16


def test_sealing_keys_differ_per_policy(platform: SimulatedPlatform) -> None:
    assert _key(platform, "mrenclave") != _key(platform, "mrsigner")


def test_mrenclave_key_differs_per_enclave(platform: SimulatedPlatform) -> None:
    assert _key(platform, "mrenclave") != _key(platform, "mrenclave", mr_enclave=bytes(32))


def test_mrenclave_key_ignores_signer(platform: SimulatedPlatform) -> None:
    assert _key(platform, "mrenclave") == _key(platform, "mrenclave", mr_signer=bytes(32))


def test_mrsigner_key_is_shared_by_enclaves_of_one_signer(platform: SimulatedPlatform) -> None:
    assert _key(platform, "mrsigner") == _key(platform, "mrsigner", mr_enclave=bytes(32))


def test_mrsigner_key_differs_per_signer_and_product(platform: SimulatedPlatform) -> None:
    base = _key(platform, "mrsigner")
    assert base != _key(platform, "mrsigner", mr_signer=bytes(32))
    assert base != _key(platform, "mrsigner", isv_prod_id=1)


def test_debug_enclave_does_not_get_production_key(platform: SimulatedPlatform) -> None:
    assert _key(platform, "mrenclave") != _key(platform, "mrenclave", debug=True)
    assert _key(platform, "mrsigner") != _key(platform, "mrsigner", debug=True)


def test_sealing_keys_are_stable_across_reload(platform: SimulatedPlatform) -> None:
    reloaded = SimulatedPlatform.load(platform.directory)
    for policy in ("mrenclave", "mrsigner"):
        assert _key(platform, policy) == _key(reloaded, policy)


def test_sealing_keys_differ_per_platform(
    platform: SimulatedPlatform, fresh_platform: SimulatedPlatform
) -> None:
    assert _key(platform) != _key(fresh_platform)


def test_unknown_sealing_policy_is_refused(platform: SimulatedPlatform) -> None:
    with pytest.raises(ConfigError, match="policy"):
        _key(platform, "mrnothing")


# ---------------------------------------------------------------- files and crashes


def test_private_files_are_0600_and_directory_0700(platform: SimulatedPlatform) -> None:
    directory = platform.directory
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    private = [p for p in directory.iterdir() if p.suffix == ".key"] + [
        directory / "platform_secret.bin"
    ]
    assert len(private) == 6
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name


def test_secrets_are_not_in_repr(platform: SimulatedPlatform) -> None:
    secret = (platform.directory / "platform_secret.bin").read_bytes()
    text = repr(platform) + json.dumps(platform.describe(T0))
    assert secret.hex() not in text
    assert "PRIVATE KEY" not in text


def test_missing_platform_says_run_sim_init(tmp_path: Path) -> None:
    with pytest.raises(EnvironmentUnavailableError, match="sealpod sim init`"):
        SimulatedPlatform.load(tmp_path / "nowhere")


def test_directory_without_platform_says_run_sim_init_force(tmp_path: Path) -> None:
    with pytest.raises(EnvironmentUnavailableError, match="sealpod sim init --force"):
        SimulatedPlatform.load(tmp_path)


def test_existing_platform_is_not_overwritten_without_force(
    fresh_platform: SimulatedPlatform,
) -> None:
    with pytest.raises(ConfigError, match="force"):
        SimulatedPlatform.init(fresh_platform.directory, now=T0)


def test_force_replaces_platform_and_leaves_no_debris(fresh_platform: SimulatedPlatform) -> None:
    old_root = fresh_platform.root_certificate_der()
    new = SimulatedPlatform.init(fresh_platform.directory, now=T0, force=True)
    assert new.root_certificate_der() != old_root
    assert sorted(p.name for p in fresh_platform.directory.parent.iterdir()) == ["platform"]


def test_crash_during_init_leaves_no_half_platform(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = simulation._write_file
    written: list[str] = []

    def crashing_write(path: Path, data: bytes, mode: int) -> None:
        if len(written) == 5:
            raise OSError(28, "No space left on device")
        written.append(path.name)
        real_write(path, data, mode)

    monkeypatch.setattr(simulation, "_write_file", crashing_write)
    with pytest.raises(ConfigError, match="No space left"):
        SimulatedPlatform.init(tmp_path / "platform", now=T0)
    assert list(tmp_path.iterdir()) == []


def test_crash_during_forced_init_keeps_old_platform(
    fresh_platform: SimulatedPlatform, monkeypatch: pytest.MonkeyPatch
) -> None:
    old_root = fresh_platform.root_certificate_der()

    def failing_write(path: Path, data: bytes, mode: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(simulation, "_write_file", failing_write)
    with pytest.raises(ConfigError):
        SimulatedPlatform.init(fresh_platform.directory, now=T0, force=True)
    monkeypatch.undo()
    assert SimulatedPlatform.load(fresh_platform.directory).root_certificate_der() == old_root
    assert sorted(p.name for p in fresh_platform.directory.parent.iterdir()) == ["platform"]


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("pck.key", b"-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n"),
        ("attestation.key", b""),
        ("root_ca.pem", b"not a certificate"),
        ("platform.json", b'{"format": "something else"}'),
        ("platform.json", b"\xff\xfe not json"),
        ("platform_secret.bin", b"short"),
    ],
)
def test_corrupted_platform_file_gives_clear_error(
    fresh_platform: SimulatedPlatform, name: str, content: bytes
) -> None:
    (fresh_platform.directory / name).write_bytes(content)
    with pytest.raises(ConfigError, match=re.escape(name) + ".*sim init --force") as info:
        SimulatedPlatform.load(fresh_platform.directory)
    assert "\n" not in str(info.value)


def test_swapped_private_key_is_detected(fresh_platform: SimulatedPlatform) -> None:
    directory = fresh_platform.directory
    (directory / "pck.key").write_bytes((directory / "tcb_signing.key").read_bytes())
    with pytest.raises(ConfigError, match=r"pck\.key.*does not match"):
        SimulatedPlatform.load(directory)


def test_certificate_from_another_platform_is_detected(
    fresh_platform: SimulatedPlatform, tmp_path: Path
) -> None:
    other = SimulatedPlatform.init(tmp_path / "other", now=T0)
    for name in ("pck.pem", "pck.key"):
        (fresh_platform.directory / name).write_bytes((other.directory / name).read_bytes())
    with pytest.raises(ConfigError, match=r"pck\.pem.*not issued by"):
        SimulatedPlatform.load(fresh_platform.directory)


def test_missing_platform_file_gives_clear_error(fresh_platform: SimulatedPlatform) -> None:
    os.unlink(fresh_platform.directory / "tcb_signing.pem")
    with pytest.raises(ConfigError, match=r"tcb_signing\.pem"):
        SimulatedPlatform.load(fresh_platform.directory)


def test_corrupted_collateral_is_fixed_by_renewal(fresh_platform: SimulatedPlatform) -> None:
    directory = fresh_platform.directory
    (directory / "collateral.json").write_text("{ truncated")
    platform = SimulatedPlatform.load(directory)
    with pytest.raises(ConfigError, match="collateral --renew"):
        platform.collateral()
    platform.renew_collateral(T0 + DAY)
    quote = platform.quote(REPORT_DATA, mr_enclave=MR_ENCLAVE, mr_signer=MR_SIGNER)
    result = verify(quote, platform.collateral(), platform.root_certificate_der(), T0 + DAY)
    assert result.status == "UpToDate"
