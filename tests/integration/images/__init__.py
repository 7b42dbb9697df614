"""Test images for `sealpod run`: a cached Debian rootfs plus a small layer of test files.

The Debian root filesystem (``python3`` from bookworm) is built once with debootstrap into
``$SEALPOD_CACHE_DIR/rootfs`` (shared with ``scripts/demo.py``, which uses the same name and
package list, so the cache key is the same). Packing 170 MB as a layer on every test would be
slow, so its uncompressed layer blob is cached too (``$SEALPOD_CACHE_DIR/test-layers``); every
test image is that base layer plus one small layer with the test's own files.

A tiny image (busybox-static from the host + a script) serves attack tests whose subject is
not the application.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sealpod.image import (
    ImageConfig,
    Layer,
    LayerFile,
    build_debian_rootfs,
    layer_from_directory,
    layer_from_files,
    sealpod_cache_dir,
    write_docker_archive,
    write_oci_layout,
)

#: The demo and these tests share this cache entry (same name and packages -> same key).
DEBIAN_ROOTFS_NAME = "python3"
DEBIAN_PACKAGES = ("python3",)

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
GCC = shutil.which("gcc")

#: An unmodified HTTPS service: DB password from the environment, TLS certificate and key from
#: files, stdlib only. GET / answers JSON with who it is and what it was given.
HTTPS_SERVICE = r"""
import hashlib, http.server, json, os, ssl, sys

PORT = int(os.environ.get("PORT", "8443"))
password = os.environ["DB_PASSWORD"]


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({
            "service": "web",
            "uid": os.getuid(),
            "cwd": os.getcwd(),
            "db_password_sha256": hashlib.sha256(password.encode()).hexdigest(),
            "db_password": password if os.environ.get("ECHO_PASSWORD") == "1" else None,
            "argv": sys.argv,
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain("/secrets/tls.crt", "/secrets/tls.key")
server = http.server.HTTPServer(("127.0.0.1", PORT), Handler)
server.socket = context.wrap_socket(server.socket, server_side=True)
print(f"listening on {PORT}", flush=True)
server.serve_forever()
"""


def debian_rootfs(cache_dir: Path | None = None) -> Path:
    """The cached Debian rootfs with python3 (built with debootstrap when missing)."""
    return build_debian_rootfs(DEBIAN_ROOTFS_NAME, list(DEBIAN_PACKAGES), cache_dir)


def base_layer(rootfs: Path, cache_dir: Path | None = None) -> Layer:
    """The uncompressed layer of ``rootfs``, packed once and cached beside the rootfs cache."""
    root = (cache_dir if cache_dir is not None else sealpod_cache_dir()) / "test-layers"
    entry = root / rootfs.name
    meta = entry / "layer.json"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{rootfs.name}.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not meta.exists():
            shutil.rmtree(entry, ignore_errors=True)
            work = Path(tempfile.mkdtemp(prefix=f".{rootfs.name}-", dir=root))
            layer = layer_from_directory(rootfs, work, mtime=None, owner=None, compression="none")
            (work / "layer.json").write_text(
                json.dumps(
                    {
                        "media_type": layer.media_type,
                        "digest": layer.digest,
                        "size": layer.size,
                        "diff_id": layer.diff_id,
                        "blob": layer.path.name,
                    }
                )
            )
            os.rename(work, entry)
    doc = json.loads(meta.read_text())
    return Layer(
        media_type=doc["media_type"],
        digest=doc["digest"],
        size=doc["size"],
        diff_id=doc["diff_id"],
        path=entry / doc["blob"],
    )


def busybox_layer(work: Path) -> Layer:
    """A tiny root filesystem: busybox-static as /bin/busybox, /etc/passwd and /etc/group."""
    return layer_from_files(
        {
            "bin/busybox": LayerFile(Path(BUSYBOX).read_bytes(), 0o755),
            "etc/passwd": LayerFile(b"root:x:0:0:root:/root:/bin/sh\n", 0o644),
            "etc/group": LayerFile(b"root:x:0:\n", 0o644),
        },
        work,
    )


def write_image(
    dest: Path,
    layers: list[Layer],
    *,
    argv: tuple[str, ...],
    env: Mapping[str, str] | None = None,
    working_dir: str = "/",
    user: str = "",
    image_format: Literal["oci", "docker-archive"] = "oci",
) -> str:
    """Write an image with ``layers``; returns its source spec for ``sealpod build``."""
    config = ImageConfig(
        entrypoint=argv,
        env=tuple(f"{k}={v}" for k, v in {"PATH": "/usr/bin:/bin", **(env or {})}.items()),
        working_dir=working_dir,
        user=user,
    )
    if image_format == "oci":
        write_oci_layout(dest, config, layers)
        return f"oci:{dest}"
    write_docker_archive(dest, config, layers, repo_tags=["sealpod/test:latest"])
    return f"docker-archive:{dest}"


def app_layer(work: Path, files: Mapping[str, bytes | LayerFile]) -> Layer:
    """A small layer with the test's files."""
    work.mkdir(parents=True, exist_ok=True)
    return layer_from_files(dict(files), work)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, proc: subprocess.Popen[Any] | None = None, timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the process exited with {proc.returncode} before listening")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


# -- a real coordinator on loopback -----------------------------------------------------------


@dataclass
class Coordinator:
    url: str
    root_pem: bytes
    root_file: Path
    sim_dir: Path
    server: Any

    def set_manifest(self, manifest: Mapping[str, Any]) -> None:
        from sealpod.coordinator import pinned_client

        with pinned_client(self.url, self.root_pem) as client:
            response = client.post("/api/v1/manifest", json=dict(manifest))
            if response.status_code != 200:
                raise RuntimeError(f"manifest refused: {response.text}")

    def audit(self) -> list[dict[str, Any]]:
        from sealpod.coordinator import pinned_client

        with pinned_client(self.url, self.root_pem) as client:
            return list(client.get("/api/v1/audit").json()["entries"])


@contextmanager
def running_coordinator(work: Path, sim_dir: Path) -> Iterator[Coordinator]:
    """A coordinator (SQLite state, simulation) in a thread on a loopback port, attested."""
    from sealpod.coordinator import (
        CoordinatorServer,
        CoordinatorSettings,
        coordinator_identity,
        verify_coordinator,
    )
    from sealpod.tee import SimulatedPlatform

    platform = SimulatedPlatform.load(sim_dir)
    settings = CoordinatorSettings(state_url=f"sqlite:///{work / 'state.db'}", sim_dir=sim_dir)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = CoordinatorServer.build(settings, host="127.0.0.1", port=port)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the coordinator did not start")
        time.sleep(0.02)
    url = f"https://127.0.0.1:{port}"
    try:
        verified = verify_coordinator(
            url,
            expect_mrenclave=coordinator_identity().mr_enclave,
            allow_simulation=True,
            simulated_root_der=platform.root_certificate_der(),
        )
        root_file = work / "coordinator-root.pem"
        root_file.write_bytes(verified.root_pem)
        yield Coordinator(url, verified.root_pem, root_file, sim_dir, server)
    finally:
        server.stop()
        thread.join(timeout=20)
        sock.close()
