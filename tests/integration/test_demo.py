"""`make demo` must keep working: run the demo script as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

_DEMO = Path(__file__).resolve().parents[2] / "scripts" / "demo.py"


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    env = {**os.environ, "SEALPOD_DEMO_DIR": str(tmp_path / "demo")}
    done = subprocess.run(
        [sys.executable, str(_DEMO)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Demo complete" in done.stdout
    # The honest-simulation contract: simulated evidence is labelled, and refused without opt-in.
    assert "simulated: true" in done.stdout
    assert "error: simulation_not_allowed" in done.stdout
    assert "error: untrusted_root" in done.stdout
