"""Simulated evidence: verified by the same verifier under a non-Intel root, never silently.

Uses the simulated SGX platform (``sealpod.tee.simulation``) as the fake TEE: its quotes are real
DCAP v3 quotes chained to a root whose subject says SIMULATED and INSECURE.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from sealpod.attestation.collateral import Collateral
from sealpod.attestation.policy import AppraisalPolicy
from sealpod.attestation.verify import verify_quote
from sealpod.errors import VerificationError

simulation = pytest.importorskip("sealpod.tee.simulation")

NOW = 1_800_000_000
MRENCLAVE = bytes(range(32))
MRSIGNER = bytes(range(100, 132))


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Any:
    directory: Path = tmp_path_factory.mktemp("sim") / "platform"
    return simulation.SimulatedPlatform.init(directory, now=NOW)


@pytest.fixture(scope="module")
def collateral(platform: Any) -> Collateral:
    return Collateral.from_mapping(platform.collateral())


def _quote(platform: Any, **kwargs: Any) -> bytes:
    fields: dict[str, Any] = {"mr_enclave": MRENCLAVE, "mr_signer": MRSIGNER}
    fields.update(kwargs)
    quote: bytes = platform.quote(b"binding", **fields)
    return quote


def test_simulated_root_says_so(platform: Any) -> None:
    subject = platform.root_certificate.subject.rfc4514_string()
    assert "SIMULATED" in subject and "INSECURE" in subject


def test_simulated_quote_is_refused_by_default(platform: Any, collateral: Collateral) -> None:
    with pytest.raises(VerificationError) as info:
        verify_quote(
            _quote(platform),
            collateral,
            at=NOW + 60,
            policy=AppraisalPolicy(),
            simulated_root_der=platform.root_certificate_der(),
        )
    assert info.value.reason == "simulation_not_allowed"


def test_simulated_quote_is_refused_under_the_intel_root(
    platform: Any, collateral: Collateral
) -> None:
    """Without the simulated root there is nothing to verify it against: no skip path."""
    with pytest.raises(VerificationError) as info:
        verify_quote(
            _quote(platform), collateral, at=NOW + 60, policy=AppraisalPolicy(allow_simulation=True)
        )
    assert info.value.reason == "untrusted_root"


def test_pinning_the_simulated_root_as_trust_root_still_marks_it_simulated(
    platform: Any, collateral: Collateral
) -> None:
    with pytest.raises(VerificationError) as info:
        verify_quote(
            _quote(platform),
            collateral,
            at=NOW + 60,
            policy=AppraisalPolicy(),
            trust_root_der=platform.root_certificate_der(),
        )
    assert info.value.reason == "simulation_not_allowed"


def test_allowed_simulated_quote_is_marked_and_warns(
    platform: Any, collateral: Collateral, caplog: pytest.LogCaptureFixture
) -> None:
    policy = AppraisalPolicy(allow_simulation=True, mrenclave=(MRENCLAVE,))
    with caplog.at_level(logging.WARNING, logger="sealpod.attestation"):
        for _ in range(2):
            evidence = verify_quote(
                _quote(platform),
                collateral,
                at=NOW + 60,
                policy=policy,
                simulated_root_der=platform.root_certificate_der(),
            )
    assert evidence.simulated is True
    assert evidence.to_dict()["simulated"] is True
    assert evidence.mr_enclave == MRENCLAVE
    assert evidence.report_data == b"binding".ljust(64, b"\0")
    assert sum("SIMULATED" in r.message for r in caplog.records) == 2


def test_simulated_identity_rules(platform: Any, collateral: Collateral) -> None:
    base = AppraisalPolicy(allow_simulation=True, mrsigner=MRSIGNER, isv_prod_id=3, min_isv_svn=2)
    root = platform.root_certificate_der()
    verify_quote(
        _quote(platform, isv_prod_id=3, isv_svn=2),
        collateral,
        at=NOW,
        policy=base,
        simulated_root_der=root,
    )
    cases = [
        ({"isv_prod_id": 3, "isv_svn": 1}, "isv_svn_too_low"),
        ({"isv_prod_id": 4, "isv_svn": 2}, "isv_prod_id_mismatch"),
        ({"isv_prod_id": 3, "isv_svn": 2, "mr_signer": MRENCLAVE}, "mrsigner_mismatch"),
    ]
    for fields, reason in cases:
        with pytest.raises(VerificationError) as info:
            verify_quote(
                _quote(platform, **fields),
                collateral,
                at=NOW,
                policy=base,
                simulated_root_der=root,
            )
        assert info.value.reason == reason


def test_debug_simulated_enclave_is_refused(platform: Any, collateral: Collateral) -> None:
    """dcap-qvl itself refuses debug enclaves, and so does the policy; either way: refused."""
    for policy in (
        AppraisalPolicy(allow_simulation=True),
        AppraisalPolicy(allow_simulation=True, allow_debug=True),
    ):
        with pytest.raises(VerificationError) as info:
            verify_quote(
                _quote(platform, debug=True),
                collateral,
                at=NOW,
                policy=policy,
                simulated_root_der=platform.root_certificate_der(),
            )
        assert info.value.reason == "debug_not_allowed"


def test_simulated_collateral_outside_its_window_is_refused(
    platform: Any, collateral: Collateral
) -> None:
    for at, reason in (
        (collateral.not_before - 1, "collateral_not_yet_valid"),
        (collateral.not_after + 1, "collateral_expired"),
    ):
        with pytest.raises(VerificationError) as info:
            verify_quote(
                _quote(platform),
                collateral,
                at=at,
                policy=AppraisalPolicy(allow_simulation=True),
                simulated_root_der=platform.root_certificate_der(),
            )
        assert info.value.reason == reason


def test_quote_of_another_simulated_platform_is_refused(
    platform: Any, collateral: Collateral, tmp_path: Path
) -> None:
    other = simulation.SimulatedPlatform.init(tmp_path / "other", now=NOW)
    with pytest.raises(VerificationError) as info:
        verify_quote(
            _quote(other),
            collateral,
            at=NOW,
            policy=AppraisalPolicy(allow_simulation=True),
            simulated_root_der=platform.root_certificate_der(),
        )
    assert info.value.reason in {"untrusted_root", "bad_chain", "bad_crl"}


def test_simulated_collateral_is_valid_on_its_last_second(
    platform: Any, collateral: Collateral
) -> None:
    """The simulated platform promises validity on [issue, issue + validity], both ends."""
    window = platform.collateral_window()
    for at in (window.not_before, window.not_after):
        verify_quote(
            _quote(platform),
            collateral,
            at=at,
            policy=AppraisalPolicy(allow_simulation=True),
            simulated_root_der=platform.root_certificate_der(),
        )


def test_revoked_pck_certificate_is_refused(
    platform: Any, collateral: Collateral, tmp_path: Path
) -> None:
    """A PCK CRL (validly signed by the PCK CA) that lists the quote's PCK certificate."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    directory = Path(platform.directory)
    ca_key_file, ca_file = directory / "pck_platform_ca.key", directory / "pck_platform_ca.pem"
    if not ca_key_file.is_file() or not ca_file.is_file():
        pytest.skip("the simulated platform keeps its PCK CA elsewhere")
    ca_key = serialization.load_pem_private_key(ca_key_file.read_bytes(), password=None)
    ca = x509.load_pem_x509_certificate(ca_file.read_bytes())
    old = x509.load_der_x509_crl(collateral.pck_crl)
    revoked = (
        x509.RevokedCertificateBuilder()
        .serial_number(platform.pck_certificate.serial_number)
        .revocation_date(dt.datetime.fromtimestamp(NOW - 60, dt.UTC))
        .build()
    )
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(old.last_update_utc)
        .next_update(old.next_update_utc or old.last_update_utc)
        .add_revoked_certificate(revoked)
        .add_extension(x509.CRLNumber(2), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    revoking = collateral.model_copy(
        update={"pck_crl": crl.public_bytes(serialization.Encoding.DER)}
    )
    with pytest.raises(VerificationError) as info:
        verify_quote(
            _quote(platform),
            revoking,
            at=NOW + 60,
            policy=AppraisalPolicy(allow_simulation=True),
            simulated_root_der=platform.root_certificate_der(),
        )
    assert info.value.reason == "revoked", str(info.value)
