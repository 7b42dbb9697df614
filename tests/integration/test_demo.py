"""`make demo` must keep working: run the demo script as a user would.

The demo needs root (debootstrap on first use, FUSE, bubblewrap); its Debian rootfs is the
cached one the run tests use, so with a warm cache it takes about half a minute.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="the demo needs root (debootstrap, FUSE)"),
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
]

_DEMO = Path(__file__).resolve().parents[2] / "scripts" / "demo.py"


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    env = {**os.environ, "SEALPOD_DEMO_DIR": str(tmp_path / "demo")}
    done = subprocess.run(
        [sys.executable, str(_DEMO)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-3000:]
    assert "Demo complete" in out
    # The honest-simulation contract: simulated evidence is labelled, and refused without opt-in.
    assert "simulated: true" in out
    assert "error: simulation_not_allowed" in out
    assert "error: untrusted_root" in out
    # Every line of the runtime says it is simulated.
    runtime_lines = [line for line in out.splitlines() if "sealpod run" in line and ":" in line]
    runtime_lines = [line for line in runtime_lines if line.strip().startswith("sealpod run")]
    assert runtime_lines and all("[SIMULATED]" in line for line in runtime_lines)
    # The service answered over TLS with a certificate the coordinator issued to "web", running
    # as the image's user (nobody) and holding a 256-bit password (shown only as its hash).
    answer_line = next(line for line in out.splitlines() if line.strip().startswith("answer: "))
    answer = json.loads(answer_line.strip().removeprefix("answer: "))
    assert answer["uid"] == 65534 and answer["cwd"] == "/app"
    assert re.fullmatch(r"[0-9a-f]{64}", answer["db_password_sha256"])
    assert answer["db_password"] is None
    assert "commonName=web" in out and "organizationalUnitName=SIMULATED" in out
    # SIGTERM passed through; tampering refused by the shield and by the package check.
    assert "exit status 143" in out
    assert "trusted_file_mismatch" in out and "Permission denied" in out
    assert "error: blob_digest_mismatch" in out
