"""``sealpod sim ...`` through the real entry point."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dcap_qvl
import pytest
from cryptography import x509

from sealpod.attestation.quote import SGXReportBody, parse_quote
from sealpod.cli import main

T0 = 1_800_000_000
T0_ISO = "2027-01-15T08:00:00Z"
DAY = 24 * 3600


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


Runner = Callable[..., Run]


@pytest.fixture
def run(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Runner:
    for name in ("SEALPOD_SIM_DIR", "SEALPOD_SIM_AT", "SEALPOD_DEBUG", "SEALPOD_FORCE"):
        monkeypatch.delenv(name, raising=False)
    # never touch the real user data dir
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))

    def _run(*args: str) -> Run:
        capsys.readouterr()
        try:
            returned = main(list(args))
            code = returned if isinstance(returned, int) else 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return _run


@pytest.fixture
def platform_dir(run: Runner, tmp_path: Path) -> Path:
    directory = tmp_path / "sim"
    result = run("sim", "init", "--dir", str(directory), "--at", T0_ISO)
    assert result.code == 0, result.err
    return directory


def _verify(quote: bytes, collateral_json: str, root: bytes, now: int) -> Any:
    return dcap_qvl.verify_with_root_ca(
        quote, dcap_qvl.QuoteCollateralV3.from_json(collateral_json), root, now
    )


def test_init_quote_collateral_root_verify_end_to_end(
    run: Runner, platform_dir: Path, tmp_path: Path
) -> None:
    quote_file, coll_file, root_file = tmp_path / "q.bin", tmp_path / "c.json", tmp_path / "r.der"
    mrenclave, mrsigner = "ab" * 32, "cd" * 32
    args = ["--dir", str(platform_dir)]
    result = run(
        "sim", "quote", *args, "--report-data", "deadbeef", "--mrenclave", mrenclave,
        "--mrsigner", mrsigner, "--isv-prod-id", "3", "--isv-svn", "9", "-o", str(quote_file),
        "--json",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert result.json()["simulated"] is True
    assert run("sim", "collateral", *args, "-o", str(coll_file)).code == 0
    assert run("sim", "root", *args, "-o", str(root_file)).code == 0

    quote = quote_file.read_bytes()
    body = parse_quote(quote).body
    assert isinstance(body, SGXReportBody)
    assert body.mr_enclave.hex() == mrenclave
    assert body.mr_signer.hex() == mrsigner
    assert (body.isv_prod_id, body.isv_svn) == (3, 9)
    assert body.report_data == bytes.fromhex("deadbeef").ljust(64, b"\x00")
    result_report = _verify(quote, coll_file.read_text(), root_file.read_bytes(), T0 + 60)
    assert result_report.status == "UpToDate"


def test_every_command_says_simulated(run: Runner, platform_dir: Path, tmp_path: Path) -> None:
    args = ["--dir", str(platform_dir)]
    outputs = [
        run("sim", "show", *args),
        run("sim", "root", *args, "-o", str(tmp_path / "r.der")),
        run("sim", "collateral", *args, "-o", str(tmp_path / "c.json")),
        run("sim", "collateral", *args, "--renew", "--at", T0_ISO),
        run("sim", "quote", *args, "--report-data", "00", "-o", str(tmp_path / "q")),
    ]
    for result in outputs:
        assert result.code == 0, result.err
        assert result.out.startswith("simulated: true\n")
    for result in (
        run("sim", "show", *args, "--json"),
        run("sim", "root", *args, "-o", str(tmp_path / "r2.der"), "--json"),
    ):
        assert result.json()["simulated"] is True


def test_show_json_describes_platform(run: Runner, platform_dir: Path) -> None:
    data = run("sim", "show", "--dir", str(platform_dir), "--json", "--at", T0_ISO).json()
    assert "SIMULATED" in data["root_ca_subject"]
    assert "INSECURE" in data["root_ca_subject"]
    assert len(data["fmspc"]) == 12
    assert data["collateral_not_before"] == T0_ISO
    assert data["collateral_not_after"] == "2027-02-14T08:00:00Z"  # 30 days later
    assert data["collateral_valid_now"] is True


def test_root_is_der_or_pem(run: Runner, platform_dir: Path, tmp_path: Path) -> None:
    args = ["--dir", str(platform_dir)]
    assert run("sim", "root", *args, "-o", str(tmp_path / "r.der")).code == 0
    assert run("sim", "root", *args, "-o", str(tmp_path / "r.pem"), "--pem").code == 0
    der = x509.load_der_x509_certificate((tmp_path / "r.der").read_bytes())
    pem = x509.load_pem_x509_certificate((tmp_path / "r.pem").read_bytes())
    assert der == pem


def test_expired_collateral_is_refused_and_renew_fixes_it(
    run: Runner, platform_dir: Path, tmp_path: Path
) -> None:
    args = ["--dir", str(platform_dir)]
    later = T0 + 40 * DAY
    quote_file, root_file = tmp_path / "q.bin", tmp_path / "r.der"
    run("sim", "quote", *args, "--report-data", "01", "-o", str(quote_file))
    run("sim", "root", *args, "-o", str(root_file))
    stale = run("sim", "collateral", *args, "-o", str(tmp_path / "old.json"), "--at", str(later))
    assert stale.code == 0
    assert "valid_now: false" in stale.out
    with pytest.raises(ValueError, match=r"(?i)expired"):
        _verify(
            quote_file.read_bytes(),
            (tmp_path / "old.json").read_text(),
            root_file.read_bytes(),
            later,
        )

    renewed = run(
        "sim", "collateral", *args, "--renew", "--at", str(later), "-o", str(tmp_path / "new.json"),
        "--json",
    )  # fmt: skip
    assert renewed.code == 0, renewed.err
    assert renewed.json()["valid_now"] is True
    assert renewed.json()["renewed"] is True
    result = _verify(
        quote_file.read_bytes(), (tmp_path / "new.json").read_text(), root_file.read_bytes(), later
    )
    assert result.status == "UpToDate"


def test_renew_with_validity_days(run: Runner, platform_dir: Path, tmp_path: Path) -> None:
    result = run(
        "sim", "collateral", "--dir", str(platform_dir), "--renew", "--validity-days", "2",
        "--at", T0_ISO, "--json",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert result.json()["not_after"] == "2027-01-17T08:00:00Z"


def test_missing_platform_tells_to_run_sim_init(run: Runner, tmp_path: Path) -> None:
    for args in (
        ["sim", "show"],
        ["sim", "quote", "--report-data", "00", "-o", str(tmp_path / "q")],
        ["sim", "collateral", "-o", str(tmp_path / "c")],
        ["sim", "root", "-o", str(tmp_path / "r")],
    ):
        result = run(*args, "--dir", str(tmp_path / "absent"))
        assert result.code == 3
        assert "sealpod sim init" in result.err
        assert result.err.count("\n") == 1
        assert "Traceback" not in result.err


def test_sealpod_sim_dir_environment_variable(
    run: Runner, platform_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEALPOD_SIM_DIR", str(platform_dir))
    data = run("sim", "show", "--json").json()
    assert data["directory"] == str(platform_dir)


def test_default_directory_is_under_user_data_dir(run: Runner, tmp_path: Path) -> None:
    result = run("sim", "init", "--json")
    assert result.code == 0, result.err
    directory = Path(result.json()["directory"])
    assert directory.name == "sim"
    assert directory.parent.name == "sealpod"
    assert str(directory).startswith(str(tmp_path))


def test_init_refuses_to_overwrite_without_force(run: Runner, platform_dir: Path) -> None:
    again = run("sim", "init", "--dir", str(platform_dir))
    assert again.code == 1
    assert "--force" in again.err
    before = run("sim", "show", "--dir", str(platform_dir), "--json").json()["root_ca_sha256"]
    forced = run("sim", "init", "--dir", str(platform_dir), "--force", "--json")
    assert forced.code == 0
    assert forced.json()["root_ca_sha256"] != before


def test_corrupted_platform_is_one_line_error(run: Runner, platform_dir: Path) -> None:
    (platform_dir / "attestation.key").write_text("garbage")
    result = run("sim", "show", "--dir", str(platform_dir))
    assert result.code == 1
    assert "attestation.key" in result.err
    assert "sim init --force" in result.err
    assert result.err.count("\n") == 1


@pytest.mark.parametrize(
    "args",
    [
        ["--report-data", "zz"],
        ["--report-data", "00", "--mrenclave", "ab"],
        ["--report-data", "00", "--isv-svn", "70000"],
        ["--mrsigner", "00" * 32],
    ],
)
def test_malformed_quote_arguments_are_usage_errors(
    run: Runner, platform_dir: Path, tmp_path: Path, args: list[str]
) -> None:
    result = run("sim", "quote", "--dir", str(platform_dir), "-o", str(tmp_path / "q"), *args)
    assert result.code == 2
    assert not (tmp_path / "q").exists()


def test_report_data_longer_than_64_bytes_is_refused(
    run: Runner, platform_dir: Path, tmp_path: Path
) -> None:
    result = run(
        "sim", "quote", "--dir", str(platform_dir), "--report-data", "00" * 65, "-o",
        str(tmp_path / "q"),
    )  # fmt: skip
    assert result.code == 1
    assert "64" in result.err
    assert not (tmp_path / "q").exists()


def test_debug_enclave_quote_has_debug_bit(run: Runner, platform_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "q"
    result = run(
        "sim", "quote", "--dir", str(platform_dir), "--report-data", "00", "--debug-enclave",
        "-o", str(out), "--json",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert result.json()["debug"] is True
    body = parse_quote(out.read_bytes()).body
    assert isinstance(body, SGXReportBody)
    assert body.debug


def test_collateral_without_output_or_renew_is_a_usage_error(
    run: Runner, platform_dir: Path
) -> None:
    assert run("sim", "collateral", "--dir", str(platform_dir)).code == 2
    assert (
        run("sim", "collateral", "--dir", str(platform_dir), "-o", "x", "--validity-days", "3").code
        == 2
    )
