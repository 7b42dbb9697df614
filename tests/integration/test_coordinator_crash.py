"""Crash safety: SIGKILL the coordinator (a real ``sealpod coordinator serve`` process) at random
moments while services activate; after every restart the sealed state must open (its integrity
check passes), the audit chain must verify against its sealed head, and every activation a
client saw succeed must be in the log (issue 3 §3)."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_coordinator_server import WEB_MRENCLAVE, _backend

from sealpod.coordinator import (
    activate,
    fetch_audit,
    measure_distribution,
    pinned_client,
    verify_coordinator,
)
from sealpod.errors import NetworkError, SealpodError
from sealpod.tee import SimulatedPlatform

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_SCRIPT = (
    "import sealpod.cli as cli; "
    "cli._COMMANDS['coordinator'] = 'sealpod.cli.coordinator:coordinator'; cli.main()"
)
_MANIFEST = {
    "version": 1,
    "packages": {"web": {"mrenclave": [WEB_MRENCLAVE.hex()]}},
    "services": {"web": {"package": "web", "env": {"K": "{{ secrets.k | hex }}"}}},
    "secrets": {"k": {"type": "symmetric-key", "size": 256}},
    "policy": {"allow_simulation": True},
}


def _start(tmp_path: Path, platform: SimulatedPlatform, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", _SCRIPT, "coordinator", "serve",
         "--listen", f"127.0.0.1:{port}", "--state", f"sqlite:///{tmp_path}/state.db",
         "--sim-dir", str(platform.directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _attest(url: str, platform: SimulatedPlatform, process: subprocess.Popen[bytes]) -> bytes:
    deadline = time.monotonic() + 30
    while True:
        try:
            return verify_coordinator(
                url,
                expect_mrenclave=measure_distribution().mr_enclave,
                allow_simulation=True,
                simulated_root_der=platform.root_certificate_der(),
                timeout=2,
            ).root_pem
        except NetworkError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise
            time.sleep(0.1)


def test_sigkill_during_activations_leaves_a_consistent_state(tmp_path: Path) -> None:
    platform = SimulatedPlatform.init(tmp_path / "platform")
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    url = f"https://127.0.0.1:{port}"
    backend = _backend(platform)
    succeeded: list[str] = []
    rng = random.Random(os.getpid())
    root_pem: bytes | None = None
    for cycle in range(4):
        process = _start(tmp_path, platform, port)
        try:
            pinned = _attest(url, platform, process)
            assert root_pem in (None, pinned)  # the root survives every crash
            root_pem = pinned
            if cycle == 0:
                with pinned_client(url, root_pem) as client:
                    assert client.post("/api/v1/manifest", json=_MANIFEST).status_code == 200
            entries, head = fetch_audit(url, root_pem)  # chain verified against the sealed head
            activated = {e.event["instance"] for e in entries if e.event["type"] == "activation"}
            assert set(succeeded) <= activated
            stop = threading.Event()

            def worker(prefix: str, stop: threading.Event = stop, pinned: bytes = pinned) -> None:
                index = 0
                while not stop.is_set():
                    name = f"{prefix}-{index}"
                    try:
                        activate(url, pinned, "web", name, backend, timeout=5)
                    except (SealpodError, OSError):
                        return
                    succeeded.append(name)
                    index += 1

            workers = [threading.Thread(target=worker, args=(f"c{cycle}w{n}",)) for n in range(3)]
            for thread in workers:
                thread.start()
            time.sleep(0.3 + rng.random() * 0.7)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
        stop.set()
        for thread in workers:
            thread.join(timeout=30)
    # A final start: everything any client saw succeed is there, and nothing is corrupt.
    process = _start(tmp_path, platform, port)
    try:
        assert root_pem is not None
        _attest(url, platform, process)
        entries, head = fetch_audit(url, root_pem)
        assert head is not None and head.count == len(entries)
        activated = {e.event["instance"] for e in entries if e.event["type"] == "activation"}
        assert succeeded and set(succeeded) <= activated
        with pinned_client(url, root_pem) as client:
            status = client.get("/api/v1/status").json()
        assert status["state"] == "accepting-services"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
