"""`sealpod run` end to end: real Debian images, built into packages, activated at a real
coordinator, run unmodified in the shield; plus the attacks that need a coordinator.

Needs root, FUSE, bubblewrap and (for the first run) debootstrap; the Debian rootfs and its
layer are cached (``tests/integration/images``), so a warm run is mostly package builds.
Expected values come from the coordinator's answers and the test's own inputs, never from the
runtime under test.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from images import (
    DEBIAN_PACKAGES,
    GCC,
    HTTPS_SERVICE,
    Coordinator,
    app_layer,
    base_layer,
    debian_rootfs,
    free_port,
    running_coordinator,
    wait_for_port,
    write_image,
)

from sealpod.image import Layer, LayerFile
from sealpod.package import build_package
from sealpod.sgx import EnclaveSigningKey
from sealpod.tee import SimulatedPlatform

SEALPOD = str(Path(sys.executable).with_name("sealpod"))

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="debootstrap, FUSE mounts and bwrap need root"),
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse"),
]

NOBODY = 65534

SCRIPT = b"""#!/bin/sh
echo "script argv: $0 $*"
echo "token=$API_TOKEN"
echo "greeting=$GREETING"
echo "ca: $(head -n 1 /secrets/ca.crt)"
exit 7
"""

C_PROGRAM = rb"""
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    const char *token = getenv("API_TOKEN");
    FILE *f = fopen("/secrets/token.txt", "r");
    char line[256] = "";
    if (f == NULL || fgets(line, sizeof line, f) == NULL) { puts("no file"); return 1; }
    printf("c token env=%s file=%s\n", token ? token : "(none)", line);
    return 5;
}
"""


@dataclass
class World:
    coordinator: Coordinator
    cache: Path
    work: Path
    web: Path
    web_mrenclave: str
    script: Path
    cbin: Path | None
    web_port: int
    image_layers: list[Layer]


def _manifest(world_packages: dict[str, str], web_port: int) -> dict[str, Any]:
    return {
        "version": 1,
        "packages": {
            name: {"mrenclave": [mrenclave]} for name, mrenclave in world_packages.items()
        },
        "services": {
            "web": {
                "package": "web",
                "max_instances": 10,
                "files": {
                    "/secrets/tls.crt": "{{ sealpod.cert_chain | pem }}",
                    "/secrets/tls.key": "{{ sealpod.private_key | pem }}",
                },
                "env": {
                    "DB_PASSWORD": "{{ secrets.db_password | hex }}",
                    "PORT": str(web_port),
                    "ECHO_PASSWORD": "1",
                },
            },
            "script": {
                "package": "script",
                "files": {"/secrets/ca.crt": "{{ sealpod.mesh_root | pem }}"},
                "env": {"API_TOKEN": "{{ secrets.api_token | hex }}"},
                "argv": ["/app/run.sh", "from-manifest"],
            },
            "cbin": {
                "package": "cbin",
                "files": {"/secrets/token.txt": "{{ secrets.api_token | hex }}"},
                "env": {"API_TOKEN": "{{ secrets.api_token | hex }}"},
            },
            "stranger": {
                "package": "stranger",
                "env": {"API_TOKEN": "{{ secrets.api_token | hex }}"},
            },
        },
        "secrets": {
            "db_password": {"type": "symmetric-key", "size": 256},
            "api_token": {"type": "symmetric-key", "size": 128},
        },
        "policy": {"allow_simulation": True},
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    work = tmp_path_factory.mktemp("run")
    cache = Path(os.environ.get("SEALPOD_CACHE_DIR") or Path.home() / ".cache" / "sealpod")
    try:
        rootfs = debian_rootfs()
    except Exception as exc:
        pytest.skip(f"cannot build the Debian rootfs ({' '.join(DEBIAN_PACKAGES)}): {exc}")
    base = base_layer(rootfs)
    key = EnclaveSigningKey.generate()
    web_layers = [base, app_layer(work / "web-layer", {"app/server.py": HTTPS_SERVICE.encode()})]
    web_src = write_image(
        work / "web-oci", web_layers, argv=("python3", "server.py"), working_dir="/app",
        user="nobody",
    )  # fmt: skip
    web = build_package(web_src, work / "web.pkg", key)
    script_layers = [
        base,
        app_layer(work / "script-layer", {"app/run.sh": LayerFile(SCRIPT, 0o755)}),
    ]
    script_src = write_image(
        work / "script-oci", script_layers, argv=("/app/run.sh",), env={"GREETING": "static"}
    )
    script = build_package(script_src, work / "script.pkg", key)
    packages = {"web": web.mrenclave, "script": script.mrenclave, "stranger": "ee" * 32}
    cbin_path: Path | None = None
    if GCC is not None:
        (work / "hello.c").write_bytes(C_PROGRAM)
        subprocess.run(
            [GCC, "-static", "-O2", "-o", str(work / "hello"), str(work / "hello.c")], check=True
        )
        c_layer = app_layer(
            work / "c-layer", {"app/hello": LayerFile((work / "hello").read_bytes(), 0o755)}
        )
        c_src = write_image(work / "c-oci", [base, c_layer], argv=("/app/hello",))
        cbin = build_package(c_src, work / "cbin.pkg", key)
        packages["cbin"] = cbin.mrenclave
        cbin_path = work / "cbin.pkg"
    sim = SimulatedPlatform.init(work / "sim").directory
    web_port = free_port()
    with running_coordinator(work, sim) as coordinator:
        coordinator.set_manifest(_manifest(packages, web_port))
        yield World(
            coordinator=coordinator,
            cache=cache,
            work=work,
            web=work / "web.pkg",
            web_mrenclave=web.mrenclave,
            script=work / "script.pkg",
            cbin=cbin_path,
            web_port=web_port,
            image_layers=web_layers,
        )


def _run_args(world: World, package: Path, service: str, instance: str) -> list[str]:
    return [
        SEALPOD, "-vv", "run", str(package),
        "--coordinator", world.coordinator.url,
        "--coordinator-root", str(world.coordinator.root_file),
        "--service", service, "--instance", instance,
        "--sim-dir", str(world.coordinator.sim_dir),
    ]  # fmt: skip


def _https_get(world: World) -> tuple[dict[str, Any], x509.Certificate]:
    context = ssl.create_default_context(cadata=world.coordinator.root_pem.decode())
    with (
        socket.create_connection(("127.0.0.1", world.web_port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="web") as tls,
    ):
        tls.sendall(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n")
        data = b""
        der = tls.getpeercert(binary_form=True)
        while chunk := tls.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200"), head
    assert der is not None
    return json.loads(body), x509.load_der_x509_certificate(der)


def _shield_mounts() -> list[str]:
    return [line for line in Path("/proc/mounts").read_text().splitlines() if "sealpod" in line]


@dataclass
class WebRun:
    answer: dict[str, Any]
    certificate: x509.Certificate
    status: int
    output: str
    started: float
    coordinator_logs: str


@pytest.fixture(scope="module")
def web_run(world: World) -> WebRun:
    """The HTTPS service run once: activated, called over HTTPS, then stopped with SIGTERM."""
    started = time.time()
    mounts_before = _shield_mounts()
    # Every log record of this process (the coordinator runs in a thread here), at DEBUG.
    records: list[str] = []
    handler = _Collect(records)
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        return _web_run(world, started, mounts_before, records)
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)


class _Collect(logging.Handler):
    def __init__(self, records: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self._records = records
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self._records.append(self.format(record))


def _web_run(world: World, started: float, mounts_before: list[str], logs: list[str]) -> WebRun:
    with subprocess.Popen(
        [*_run_args(world, world.web, "web", "web-1"), "--publish", f"{world.web_port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "SEALPOD_CACHE_DIR": str(world.cache)},
    ) as proc:
        try:
            wait_for_port(world.web_port, proc)
            answer, certificate = _https_get(world)
            proc.send_signal(signal.SIGTERM)
            output, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert _shield_mounts() == mounts_before
    return WebRun(answer, certificate, proc.returncode, output.decode(), started, "\n".join(logs))


def test_unmodified_python_service_gets_its_secret_and_certificate(
    world: World, web_run: WebRun
) -> None:
    answer = web_run.answer
    password = answer["db_password"]
    assert len(password) == 64 and int(password, 16) >= 0  # 256-bit key, hex
    assert answer["db_password_sha256"] == hashlib.sha256(password.encode()).hexdigest()
    assert answer["uid"] == NOBODY  # the image's user
    assert answer["cwd"] == "/app"
    assert answer["argv"] == ["server.py"]
    names = web_run.certificate.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.DNSName)
    assert "web" in names
    # SIGTERM went to the service, which died of it; the runtime passes that status on.
    assert web_run.status == 128 + signal.SIGTERM, web_run.output
    assert "SIMULATED" in web_run.output
    audit = world.coordinator.audit()
    assert any(
        e["event"].get("instance") == "web-1" and e["event"].get("mrenclave", "") in
        ("", world.web_mrenclave) for e in audit
    )  # fmt: skip


def test_every_runtime_line_in_simulation_says_simulated(web_run: WebRun) -> None:
    runtime_lines = [line for line in web_run.output.splitlines() if line.startswith("sealpod run")]
    assert len(runtime_lines) >= 3
    assert all("[SIMULATED]" in line for line in runtime_lines)


def _files_touched_since(roots: list[Path], since: float) -> Iterator[Path]:
    for root in roots:
        if not root.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith("sealpod-shield-")]
            for name in filenames:
                path = Path(dirpath) / name
                try:
                    st = path.lstat()
                except OSError:
                    continue
                if path.is_file() and max(st.st_mtime, st.st_ctime) >= since - 1:
                    if st.st_size < 512 << 20:
                        yield path


def test_secrets_never_reach_host_disk_or_logs(world: World, web_run: WebRun) -> None:
    secret = web_run.answer["db_password"].encode()
    assert secret not in web_run.output.encode()  # runtime logs at -vv, and the app's output
    assert "SIMULATED" in web_run.coordinator_logs  # the coordinator did log the activation
    assert secret.decode() not in web_run.coordinator_logs  # the coordinator's logs at DEBUG
    roots = [
        world.cache,
        world.work,
        Path(tempfile.gettempdir()),
        Path("/dev/shm"),
        Path("/var/tmp"),
    ]
    scanned = 0
    for path in _files_touched_since(roots, web_run.started):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        scanned += 1
        assert secret not in data, f"the secret is on disk in {path}"
        assert secret.upper() not in data, f"the secret is on disk in {path}"
    assert scanned > 0  # the coordinator's state and the run's cache were written meanwhile


def test_shell_script_entrypoint_with_manifest_argv(world: World) -> None:
    done = subprocess.run(
        _run_args(world, world.script, "script", "script-1"),
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 7, done.stderr
    lines = done.stdout.splitlines()
    # The manifest's argv replaces the package's; the measured entrypoint is what runs.
    assert lines[0] == "script argv: /app/run.sh from-manifest"
    token = lines[1].removeprefix("token=")
    assert len(token) == 32 and int(token, 16) >= 0
    assert lines[2] == "greeting=static"  # the package's static env is kept
    assert lines[3] == "ca: -----BEGIN CERTIFICATE-----"


def test_c_binary_entrypoint(world: World) -> None:
    if world.cbin is None:
        pytest.skip("gcc is not installed")
    done = subprocess.run(
        _run_args(world, world.cbin, "cbin", "c-1"),
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 5, done.stderr
    env_token, _, file_token = done.stdout.strip().removeprefix("c token env=").partition(" file=")
    assert len(env_token) == 32 and env_token == file_token


def test_oci_layout_and_docker_archive_give_the_same_mrenclave(world: World) -> None:
    source = write_image(
        world.work / "web.tar", world.image_layers, argv=("python3", "server.py"),
        working_dir="/app", user="nobody", image_format="docker-archive",
    )  # fmt: skip
    info = build_package(source, world.work / "web-from-archive.pkg", EnclaveSigningKey.generate())
    assert info.mrenclave == world.web_mrenclave


def test_package_not_listed_in_manifest_gets_no_secrets_and_never_starts(world: World) -> None:
    done = subprocess.run(
        _run_args(world, world.web, "stranger", "s-1"),
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "error:" in done.stderr
    assert "starting" not in done.stderr and done.stdout == ""
    last = world.coordinator.audit()[-1]["event"]
    assert last.get("instance") == "s-1"
    assert "refus" in json.dumps(last).lower() or last.get("reason")
