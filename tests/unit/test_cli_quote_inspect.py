"""``sealpod quote inspect`` as a user runs it (in-process through the real entry point)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

RunCLI = Callable[[list[str]], tuple[int, str, str]]  # the `run_cli` fixture (conftest)


def test_inspect_json_shows_identity(attestation_vectors: Path, run_cli: RunCLI) -> None:
    expected = json.loads((attestation_vectors / "dcap-qvl-samples" / "expected.json").read_text())[
        0
    ]
    path = attestation_vectors / "dcap-qvl-samples" / expected["quote"]
    code, out, _ = run_cli(["quote", "inspect", str(path), "--json"])
    assert code == 0
    data = json.loads(out)
    assert data["mr_enclave"] == expected["quote_fields"]["mr_enclave"]
    assert data["mr_signer"] == expected["quote_fields"]["mr_signer"]
    assert data["verified"] is False
    assert len(data["pck_chain"]) == 3
    assert data["pck"]["fmspc"] == expected["quote_fields"]["fmspc"]
    assert data["pck"]["pck_ca"] == expected["quote_fields"]["pck_ca"]


def test_inspect_shows_platform_ca_and_fmspc_of_every_vector(
    attestation_vectors: Path, run_cli: RunCLI
) -> None:
    for folder in ("dcap-qvl-samples", "automata-dcap", "go-tdx-guest-2023"):
        for entry in json.loads((attestation_vectors / folder / "expected.json").read_text()):
            code, out, _ = run_cli(
                ["quote", "inspect", str(attestation_vectors / folder / entry["quote"]), "--json"]
            )
            assert code == 0
            pck = json.loads(out)["pck"]
            assert pck["fmspc"] == entry["quote_fields"]["fmspc"], entry["name"]
            assert pck["pck_ca"] == entry["quote_fields"]["pck_ca"], entry["name"]


def test_inspect_garbage_is_one_line_exit_1(tmp_path: Path, run_cli: RunCLI) -> None:
    bad = tmp_path / "bad.quote"
    bad.write_bytes(b"\x03\x00\x02\x00" + b"\x00" * 20)
    code, out, err = run_cli(["quote", "inspect", str(bad)])
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("error: quote truncated")


def test_inspect_missing_file_is_one_line_exit_1(tmp_path: Path, run_cli: RunCLI) -> None:
    code, _, err = run_cli(["quote", "inspect", str(tmp_path / "absent")])
    assert code == 1
    assert err.count("\n") == 1 and "cannot read quote" in err


def test_inspect_without_argument_is_usage_error(run_cli: RunCLI) -> None:
    code, _, err = run_cli(["quote", "inspect"])
    assert code == 2
    assert "Missing argument" in err
