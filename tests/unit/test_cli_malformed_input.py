"""Every command, given malformed input: one line on stderr, exit 1, never a traceback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

RunCLI = Callable[[list[str]], tuple[int, str, str]]  # the `run_cli` fixture (conftest)


GARBAGE = b"\x03\x00\x02\x00 this is not what you think it is \xff\xfe" * 3


@pytest.fixture
def garbage(tmp_path: Path) -> Path:
    path = tmp_path / "garbage.bin"
    path.write_bytes(GARBAGE)
    return path


@pytest.fixture
def good_quote(attestation_vectors: Path) -> Path:
    return attestation_vectors / "dcap-qvl-samples" / "sgx_quote"


@pytest.fixture
def good_collateral(attestation_vectors: Path) -> Path:
    return attestation_vectors / "dcap-qvl-samples" / "sgx_quote_collateral.json"


CASES = {
    "quote inspect garbage": ["quote", "inspect", "{garbage}"],
    "quote verify garbage quote": ["quote", "verify", "{garbage}", "--collateral", "{collateral}"],
    "quote verify garbage collateral": ["quote", "verify", "{quote}", "--collateral", "{garbage}"],
    "quote verify garbage trust root": [
        "quote", "verify", "{quote}", "--collateral", "{collateral}", "--trust-root", "{garbage}",
    ],
    "quote verify garbage policy": [
        "quote", "verify", "{quote}", "--collateral", "{collateral}", "--policy", "{garbage}",
    ],
    "sigstruct inspect garbage": ["sigstruct", "inspect", "{garbage}"],
    "sigstruct verify garbage": ["sigstruct", "verify", "{garbage}"],
    "sigstruct sign garbage key": [
        "sigstruct", "sign", "--key", "{garbage}", "--mrenclave", "00" * 32, "-o", "{out}",
    ],
    "key show garbage": ["key", "show", "{garbage}"],
    "fs decrypt garbage": ["fs", "decrypt", "-k", "{key16}", "-i", "{garbage}", "-o", "{out}"],
    "fs verify garbage": ["fs", "verify", "-k", "{key16}", "{garbage}"],
    "fs encrypt garbage key": ["fs", "encrypt", "-k", "{garbage}", "-i", "{garbage}", "-o", "{out}"],
    "manifest check garbage": ["manifest", "check", "{garbage}"],
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_input_is_one_line_and_exit_1(
    case: str,
    tmp_path: Path,
    garbage: Path,
    good_quote: Path,
    good_collateral: Path,
    run_cli: RunCLI,
) -> None:
    key16 = tmp_path / "key16"
    key16.write_bytes(bytes(range(16)))
    values = {
        "garbage": str(garbage),
        "quote": str(good_quote),
        "collateral": str(good_collateral),
        "out": str(tmp_path / "out"),
        "key16": str(key16),
    }
    args = [part.format(**values) for part in CASES[case]]
    code, out, err = run_cli(args)
    if case.startswith("manifest check"):
        # `manifest check` reports problems as its result, on stdout, followed by a summary.
        err, out = out.splitlines()[0] + "\n", ""
    assert code == 1, (case, err)
    lines = [line for line in err.splitlines() if not line.startswith("WARNING ")]
    assert len(lines) == 1, (case, err)
    assert lines[0].startswith("error: "), (case, err)
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists(), "nothing half-written"


def test_missing_simulated_platform_is_an_environment_error(
    tmp_path: Path, run_cli: RunCLI
) -> None:
    code, _, err = run_cli(
        ["sim", "quote", "--dir", str(tmp_path / "absent"), "--report-data", "00" * 64, "-o",
         str(tmp_path / "q")])  # fmt: skip
    assert code == 3
    assert err.count("\n") == 1 and "sealpod sim init" in err
