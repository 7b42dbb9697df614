"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[1]


def _shared_dir() -> Path | None:
    override = os.environ.get("SEALPOD_SHARED_DIR")
    candidate = Path(override) if override else _REPO.parent / "shared"
    return candidate if candidate.is_dir() else None


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The project's shared test data (``../shared`` beside the checkout)."""
    found = _shared_dir()
    if found is None:
        pytest.skip("../shared (test vectors) is absent; set SEALPOD_SHARED_DIR to run this test")
    return found


@pytest.fixture(scope="session")
def attestation_vectors(shared_dir: Path) -> Path:
    """``../shared/attestation-vectors``: real DCAP quotes and collateral."""
    path = shared_dir / "attestation-vectors"
    if not path.is_dir():
        pytest.skip("../shared/attestation-vectors is absent")
    return path


@pytest.fixture(scope="session")
def encrypted_files_vectors(shared_dir: Path) -> Path:
    """``../shared/encrypted-files-vectors``: files written by Gramine's encrypted-files code."""
    path = shared_dir / "encrypted-files-vectors"
    if not path.is_dir():
        pytest.skip("../shared/encrypted-files-vectors is absent")
    return path


#: ``run_cli(args) -> (exit code, stdout, stderr)``, through the real ``sealpod`` entry point.
RunCLI = Callable[[list[str]], tuple[int, str, str]]


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> RunCLI:
    """Run ``sealpod ARGS`` in-process as a user would, capturing its output and exit code."""
    from sealpod.cli import main

    def run(args: list[str]) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exc_info:
            main(args)
            raise SystemExit(0)
        out, err = capsys.readouterr()
        code = exc_info.value.code
        return (code if isinstance(code, int) else 0), out, err

    return run
