"""The sealpod premain against a real coordinator over TLS, as Gramine would start it.

No SGX here: the premain runs as ``python3 -I -B -m sealpod.cli.premain`` (the command line the
Gramine manifest gives it) with ``--attestation-dir`` pointing at a fake ``/dev/attestation``
whose ``user_report_data`` and ``quote`` are FIFOs answered by the simulated SGX platform, and
with the simulated collateral from ``SEALPOD_COLLATERAL_FILE``. "In-enclave" mounts are
directories of the test. The premain then execs a small shell script that prints what it got.

Expected values come from the deployment manifest written here and from independent checks
(the certificate's key matches the key file and chains to the pinned root), never from the
premain.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from images import Coordinator, running_coordinator
from test_coordinator_pccs import FakePCCS, pccs  # noqa: F401 (the fixture)

from sealpod.pki import public_key_der, verify_chain
from sealpod.tee import EnclaveIdentity, SimulatedPlatform

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

IDENTITY = EnclaveIdentity(mr_enclave=bytes.fromhex("5e" * 32), mr_signer=bytes.fromhex("a1" * 32))
OTHER_MRENCLAVE = "77" * 32

SCRIPT = """#!/bin/sh
touch "{ran}"
echo "argv=$0 $*"
echo "token=$API_TOKEN"
echo "greeting=$GREETING"
echo "settings=${{SEALPOD_COORDINATOR}}${{SEALPOD_SERVICE}}${{SEALPOD_COLLATERAL_FILE}}"
echo "token_file=$(cat "{secrets}/token")"
exit 7
"""


class FakeAttestationDevice:
    """A directory that answers like Gramine's /dev/attestation for an enclave of IDENTITY:
    what is written to ``user_report_data`` comes back in a simulated quote from ``quote``."""

    def __init__(self, root: Path, platform: SimulatedPlatform, key_names: list[str]) -> None:
        self.root = root
        root.mkdir()
        os.mkfifo(root / "user_report_data")
        os.mkfifo(root / "quote")
        (root / "attestation_type").write_text("dcap\n")
        (root / "keys").mkdir()
        for name in key_names:  # Gramine shows the key names the manifest's mounts use
            (root / "keys" / name).write_bytes(b"")
        self.quotes = 0
        self._platform = platform
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            with open(self.root / "user_report_data", "rb") as fh:
                data = fh.read()
            if self._stop:
                return
            quote = self._platform.quote(
                data, mr_enclave=IDENTITY.mr_enclave, mr_signer=IDENTITY.mr_signer
            )
            self.quotes += 1
            with open(self.root / "quote", "wb") as fh:
                fh.write(quote)

    def close(self) -> None:
        self._stop = True
        with open(self.root / "user_report_data", "wb"):
            pass
        self._thread.join(timeout=5)


@dataclass
class Setup:
    coordinator: Coordinator
    platform: SimulatedPlatform
    collateral_file: Path
    mounts: Path


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> SimulatedPlatform:
    return SimulatedPlatform.init(tmp_path_factory.mktemp("sim") / "platform")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, platform: SimulatedPlatform) -> Iterator[Setup]:
    work = tmp_path_factory.mktemp("premain")
    collateral_file = work / "collateral.json"
    collateral_file.write_text(json.dumps(platform.collateral()))
    # The "in-enclave" mounts are per-test directories below this one; the deployment manifest
    # names absolute paths, so they are fixed here and emptied by each test.
    mounts = work / "enclave"
    secrets, data = mounts / "secrets", mounts / "data"
    with running_coordinator(work, platform.directory) as coordinator:
        coordinator.set_manifest(
            {
                "version": 1,
                "packages": {
                    "app": {"mrenclave": [IDENTITY.mr_enclave.hex()]},
                    "other": {"mrenclave": [OTHER_MRENCLAVE]},
                },
                "services": {
                    "app": {
                        "package": "app",
                        "max_instances": 10,
                        "files": {
                            f"{secrets}/token": "{{ secrets.api_token | hex }}",
                            f"{secrets}/tls/cert.pem": "{{ sealpod.cert_chain | pem }}",
                            f"{secrets}/tls/key.pem": "{{ sealpod.private_key | pem }}",
                        },
                        "env": {"API_TOKEN": "{{ secrets.api_token | hex }}", "GREETING": "hi"},
                        "argv": ["ignored-argv0", "from-manifest"],
                        "volumes": {"data": str(data)},
                    },
                    "stranger": {"package": "other", "env": {"API_TOKEN": "x"}},
                    "leaky": {
                        "package": "app",
                        "files": {
                            f"{secrets}/fine": "ok",
                            f"{mounts}/plain/leak": "{{ secrets.api_token | hex }}",
                        },
                        "volumes": {"data": str(data)},
                    },
                },
                "secrets": {"api_token": {"type": "symmetric-key", "size": 128}},
                "volumes": {"data": {"rollback_protected": False}},
                "policy": {"allow_simulation": True},
            }
        )
        yield Setup(coordinator, platform, collateral_file, mounts)


@dataclass
class Enclave:
    secrets: Path
    data: Path
    device: FakeAttestationDevice
    script: Path
    ran: Path


@pytest.fixture
def enclave(setup: Setup, tmp_path: Path) -> Iterator[Enclave]:
    import shutil

    shutil.rmtree(setup.mounts, ignore_errors=True)
    secrets, data = setup.mounts / "secrets", setup.mounts / "data"
    secrets.mkdir(parents=True)
    data.mkdir()
    device = FakeAttestationDevice(
        tmp_path / "attestation", setup.platform, ["sealpod_volume_data"]
    )
    ran = tmp_path / "ran"
    script = tmp_path / "app.sh"
    script.write_text(SCRIPT.format(ran=ran, secrets=secrets))
    script.chmod(0o755)
    try:
        yield Enclave(secrets, data, device, script, ran)
    finally:
        device.close()


def run_premain(
    setup: Setup,
    enclave: Enclave,
    service: str,
    *,
    options: tuple[str, ...] = (),
    settings: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "GREETING": "from-the-image",
        "SEALPOD_COORDINATOR": setup.coordinator.url,
        "SEALPOD_COORDINATOR_ROOT": setup.coordinator.root_pem.decode(),
        "SEALPOD_SERVICE": service,
        "SEALPOD_INSTANCE": f"{service}-1",
        "SEALPOD_COLLATERAL_FILE": str(setup.collateral_file),
        **(settings or {}),
    }
    env = {name: value for name, value in env.items() if value}
    command = [
        sys.executable, "-I", "-B", "-m", "sealpod.cli.premain",
        "--tmpfs", str(enclave.secrets),
        "--encrypted", f"data={enclave.data}",
        "--attestation-dir", str(enclave.device.root),
        *options,
        "--", str(enclave.script), "from-image",
    ]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


def written(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_secrets_arrive_and_the_entrypoint_sees_them(setup: Setup, enclave: Enclave) -> None:
    done = run_premain(setup, enclave, "app")
    assert done.returncode == 7, done.stderr
    lines = dict(line.split("=", 1) for line in done.stdout.splitlines())
    # The coordinator's argv replaced the image's arguments; argv[0] stays the entrypoint.
    assert lines["argv"] == f"{enclave.script} from-manifest"
    token = lines["token"]
    assert len(token) == 32 and int(token, 16) >= 0  # a 128-bit secret, hex
    assert lines["token_file"] == token
    assert lines["greeting"] == "hi"  # the service's env over the image's
    assert lines["settings"] == ""  # the premain's own settings are not passed on
    # Files only inside the tmpfs mount, exactly the manifest's.
    assert written(setup.mounts) == {"secrets/token", "secrets/tls/cert.pem", "secrets/tls/key.pem"}
    # The certificate is for the key the premain made, and chains to the pinned root.
    chain = x509.load_pem_x509_certificates((enclave.secrets / "tls/cert.pem").read_bytes())
    key = serialization.load_pem_private_key(
        (enclave.secrets / "tls/key.pem").read_bytes(), password=None
    )
    assert public_key_der(chain[0].public_key()) == public_key_der(key.public_key())
    root = x509.load_pem_x509_certificate(setup.coordinator.root_pem)
    verify_chain(chain[0], chain[1:], root, datetime.datetime.now(datetime.UTC))
    # The volume key went where Gramine takes it: 16 raw bytes under keys/<key_name>.
    volume_key = (enclave.device.root / "keys" / "sealpod_volume_data").read_bytes()
    assert len(volume_key) == 16
    assert enclave.device.quotes == 1  # one quote: the activation's (collateral from a file)


def test_volume_key_is_the_same_for_the_next_activation(setup: Setup, enclave: Enclave) -> None:
    assert run_premain(setup, enclave, "app").returncode == 7
    first = (enclave.device.root / "keys" / "sealpod_volume_data").read_bytes()
    (enclave.device.root / "keys" / "sealpod_volume_data").write_bytes(b"")
    assert run_premain(setup, enclave, "app").returncode == 7
    assert (enclave.device.root / "keys" / "sealpod_volume_data").read_bytes() == first


def test_refused_activation_starts_nothing(setup: Setup, enclave: Enclave) -> None:
    # "stranger" belongs to another package: our quote's MRENCLAVE is not its.
    done = run_premain(setup, enclave, "stranger")
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    assert not enclave.ran.exists()
    assert written(setup.mounts) == set()


def test_secret_file_outside_the_enclave_mounts_is_refused(setup: Setup, enclave: Enclave) -> None:
    done = run_premain(setup, enclave, "leaky")
    assert done.returncode == 1
    assert "secret_path_unprotected" in done.stderr
    assert "Traceback" not in done.stderr
    assert not enclave.ran.exists()
    # Nothing written, not even the file that was allowed.
    assert written(setup.mounts) == set()
    assert (enclave.device.root / "keys" / "sealpod_volume_data").read_bytes() == b""


def root_sha256(setup: Setup) -> str:
    root = x509.load_pem_x509_certificate(setup.coordinator.root_pem)
    return hashlib.sha256(root.public_bytes(serialization.Encoding.DER)).hexdigest()


def test_measured_coordinator_root_is_accepted_without_a_warning(
    setup: Setup, enclave: Enclave
) -> None:
    done = run_premain(
        setup, enclave, "app", options=("--coordinator-root-sha256", root_sha256(setup))
    )
    assert done.returncode == 7, done.stderr
    assert "not measured" not in done.stderr


def test_coordinator_root_other_than_the_measured_one_is_refused_before_attesting(
    setup: Setup, enclave: Enclave
) -> None:
    done = run_premain(setup, enclave, "app", options=("--coordinator-root-sha256", "0" * 64))
    assert done.returncode == 1
    assert "coordinator_root_mismatch" in done.stderr
    assert enclave.device.quotes == 0
    assert not enclave.ran.exists()
    assert written(setup.mounts) == set()


def test_collateral_comes_from_the_pccs(
    setup: Setup,
    enclave: Enclave,
    pccs: FakePCCS,  # noqa: F811 (the fixture)
) -> None:
    done = run_premain(
        setup,
        enclave,
        "app",
        settings={
            "SEALPOD_COLLATERAL_FILE": "",
            "SEALPOD_PCCS_URL": pccs.url,
            "SSL_CERT_FILE": str(pccs.ca_file),
        },
    )
    assert done.returncode == 7, done.stderr
    assert "/sgx/certification/v4/tcb" in pccs.requests
    # A quote over zero report data picks the platform's collateral, then the activation's.
    assert enclave.device.quotes == 2


def test_no_collateral_source_is_a_one_line_error(setup: Setup, enclave: Enclave) -> None:
    done = run_premain(setup, enclave, "app", settings={"SEALPOD_COLLATERAL_FILE": ""})
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1].startswith("error: no collateral source")
    assert not enclave.ran.exists()
