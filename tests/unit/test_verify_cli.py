"""``sealpod quote verify``: exit codes, one-line errors, human and JSON output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from sealpod.cli import main


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    """Run ``sealpod quote verify ARGS`` through the real entry point."""
    for name in ("SEALPOD_POLICY", "SEALPOD_TRUST_ROOT", "SEALPOD_ALLOW_SIMULATION"):
        monkeypatch.delenv(name, raising=False)

    def invoke(*args: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as info:
            main(["quote", "verify", *args])
            raise SystemExit(0)
        out, err = capsys.readouterr()
        return int(info.value.code or 0), out, err

    return invoke


@pytest.fixture(scope="module")
def sgx(attestation_vectors: Path) -> dict[str, Any]:
    folder = attestation_vectors / "dcap-qvl-samples"
    case = next(
        c for c in json.loads((folder / "expected.json").read_text()) if c["quote"] == "sgx_quote"
    )
    return {
        "quote": str(folder / case["quote"]),
        "collateral": str(folder / case["collateral"]),
        "case": case,
        "at": case["dcap_qvl_0_7_0"]["verify_at_now_secs"],
    }


@pytest.fixture
def accepting_policy(tmp_path: Path, sgx: dict[str, Any]) -> str:
    path = tmp_path / "policy.yaml"
    path.write_text(f"accepted_tcb_statuses: [{sgx['at']['status']}]\n")
    return str(path)


def test_verified_quote_prints_status_identity_and_simulated(
    run: Any, sgx: dict[str, Any], accepting_policy: str
) -> None:
    code, out, err = run(
        sgx["quote"],
        "--collateral",
        sgx["collateral"],
        "--at",
        str(sgx["at"]["now_secs"]),
        "--policy",
        accepting_policy,
    )
    assert code == 0, err
    lines = dict(line.split(": ", 1) for line in out.splitlines())
    assert lines["status"] == sgx["at"]["status"]
    assert lines["advisories"] == ", ".join(sgx["at"]["advisory_ids"])
    assert lines["mr_enclave"] == sgx["case"]["quote_fields"]["mr_enclave"]
    assert lines["simulated"] == "false"


def test_json_output_and_iso_time(run: Any, sgx: dict[str, Any], accepting_policy: str) -> None:
    code, out, err = run(
        sgx["quote"],
        "--collateral",
        sgx["collateral"],
        "--at",
        sgx["at"]["now_utc"],
        "--policy",
        accepting_policy,
        "--json",
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["status"] == sgx["at"]["status"]
    assert data["advisory_ids"] == sgx["at"]["advisory_ids"]
    assert data["simulated"] is False
    assert data["verified_at"] == sgx["at"]["now_secs"]


def test_default_policy_refusal_is_one_line(run: Any, sgx: dict[str, Any]) -> None:
    code, out, err = run(
        sgx["quote"], "--collateral", sgx["collateral"], "--at", str(sgx["at"]["now_secs"])
    )
    assert code == 1
    assert out == ""
    assert err.startswith("error: tcb_status_not_accepted: ")
    assert err.count("\n") == 1


def test_expired_collateral_is_refused(
    run: Any, sgx: dict[str, Any], accepting_policy: str
) -> None:
    after = sgx["case"]["dcap_qvl_0_7_0"]["verify_after_window"]["now_secs"]
    code, _, err = run(
        sgx["quote"],
        "--collateral",
        sgx["collateral"],
        "--at",
        str(after),
        "--policy",
        accepting_policy,
    )
    assert code == 1
    assert err.startswith("error: collateral_expired: ")


def test_default_time_is_now_and_the_vector_has_expired(run: Any, sgx: dict[str, Any]) -> None:
    code, _, err = run(sgx["quote"], "--collateral", sgx["collateral"])
    assert code == 1
    assert err.startswith("error: collateral_expired: ")


def test_foreign_trust_root_file_is_refused(
    run: Any, sgx: dict[str, Any], accepting_policy: str, tmp_path: Path
) -> None:
    import datetime as dt

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name.from_rfc4514_string("CN=sealpod SIMULATED INSECURE root")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(dt.datetime(2020, 1, 1))
        .not_valid_after(dt.datetime(2040, 1, 1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    root = tmp_path / "root.pem"
    root.write_bytes(cert.public_bytes(Encoding.PEM))
    code, _, err = run(
        sgx["quote"],
        "--collateral",
        sgx["collateral"],
        "--at",
        str(sgx["at"]["now_secs"]),
        "--policy",
        accepting_policy,
        "--trust-root",
        str(root),
        "--allow-simulation",
    )
    assert code == 1
    assert err.startswith("error: untrusted_root: ")


def test_intel_root_given_as_der_file_is_not_simulated(
    run: Any, sgx: dict[str, Any], accepting_policy: str, attestation_vectors: Path
) -> None:
    root = attestation_vectors / "dcap-qvl-samples" / "IntelSGXRootCA.der"
    code, out, err = run(
        sgx["quote"],
        "--collateral",
        sgx["collateral"],
        "--at",
        str(sgx["at"]["now_secs"]),
        "--policy",
        accepting_policy,
        "--trust-root",
        str(root),
        "--json",
    )
    assert code == 0, err
    assert json.loads(out)["simulated"] is False


def test_simulated_quote_needs_allow_simulation(run: Any, tmp_path: Path) -> None:
    simulation = pytest.importorskip("sealpod.tee.simulation")
    now = 1_800_000_000
    platform = simulation.SimulatedPlatform.init(tmp_path / "platform", now=now)
    quote = tmp_path / "quote.bin"
    quote.write_bytes(platform.quote(b"x", mr_enclave=b"\1" * 32, mr_signer=b"\2" * 32))
    collateral = tmp_path / "collateral.json"
    collateral.write_text(json.dumps(platform.collateral()))
    root = tmp_path / "root.der"
    root.write_bytes(platform.root_certificate_der())
    args = [
        str(quote),
        "--collateral",
        str(collateral),
        "--at",
        str(now),
        "--trust-root",
        str(root),
    ]
    code, _, err = run(*args)
    assert code == 1
    assert err.startswith("error: simulation_not_allowed: ")
    code, out, err = run(*args, "--allow-simulation")
    assert code == 0, err
    assert "simulated: true" in out.splitlines()


def test_garbage_quote_is_one_line_error(run: Any, sgx: dict[str, Any], tmp_path: Path) -> None:
    bad = tmp_path / "quote.bin"
    bad.write_bytes(b"\x03\x00" + b"\0" * 20)
    code, _, err = run(str(bad), "--collateral", sgx["collateral"], "--at", "0")
    assert code == 1
    assert err.startswith("error: malformed_quote: ")
    assert err.count("\n") == 1


@pytest.mark.parametrize("content", ["{not json", '{"tcb_info": 1}', '{"tcbInfo": {}}'])
def test_bad_collateral_file_is_one_line_error(
    run: Any, sgx: dict[str, Any], tmp_path: Path, content: str
) -> None:
    bad = tmp_path / "collateral.json"
    bad.write_text(content)
    code, _, err = run(sgx["quote"], "--collateral", str(bad), "--at", "0")
    assert code == 1
    assert err.startswith("error: malformed_collateral: ")
    assert err.count("\n") == 1


def test_bad_policy_file_names_the_field(run: Any, sgx: dict[str, Any], tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("allow_simulaton: true\n")
    code, _, err = run(
        sgx["quote"], "--collateral", sgx["collateral"], "--at", "0", "--policy", str(policy)
    )
    assert code == 1
    assert "allow_simulaton" in err and err.count("\n") == 1


def test_missing_file_is_one_line_error(run: Any, sgx: dict[str, Any]) -> None:
    code, _, err = run("/nonexistent/quote", "--collateral", sgx["collateral"])
    assert code == 1
    assert err.startswith("error: ") and err.count("\n") == 1


def test_usage_errors_exit_2(run: Any, sgx: dict[str, Any]) -> None:
    code, _, _ = run(sgx["quote"])
    assert code == 2
    code, _, _ = run(sgx["quote"], "--collateral", sgx["collateral"], "--at", "yesterday")
    assert code == 2


def test_mounted_under_quote_group() -> None:
    from sealpod.cli.quote import quote
    from sealpod.cli.quote_verify import verify

    assert quote.commands["verify"] is verify
