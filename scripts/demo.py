"""`make demo`: an unmodified container image run as an attested confidential service.

Everything runs on the *simulated* SGX platform (no memory isolation; every piece says so). The
steps, each printed with the real `sealpod` command so a newcomer can repeat it:

1. create a simulated SGX platform, and see its quotes verified (accepted only where a policy
   allows simulation);
2. build a Debian root filesystem with python3 (debootstrap; cached, shared with the tests) and
   put an unmodified Python HTTPS service in it: it reads its database password from the
   environment and its TLS certificate and key from files, stdlib only;
3. `sealpod build` it into a signed confidential package, `sealpod inspect` it;
4. start a coordinator (SQLite state, simulation) on loopback and attest it;
5. set a deployment manifest that generates the password and the service's certificate;
6. `sealpod run` the package: it is verified, attested, given its secrets in memory and started;
7. call the service over HTTPS trusting only the coordinator's root;
8. tamper with one trusted file (one byte, same size) and see the run refused.

Work files live in ``$SEALPOD_DEMO_DIR`` (or a fresh temporary directory). The Debian rootfs
and its layer are cached under ``$SEALPOD_CACHE_DIR`` (default: the user's cache dir), so the
first run takes a few minutes and later ones seconds.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

from images import (
    HTTPS_SERVICE,
    app_layer,
    base_layer,
    debian_rootfs,
    free_port,
    wait_for_port,
    write_image,
)

SEALPOD = str(Path(sys.executable).with_name("sealpod"))
_T0 = time.monotonic()


def step(title: str) -> None:
    print(f"\n=== {title}   [{time.monotonic() - _T0:.1f} s]", flush=True)


def say(text: str) -> None:
    print(f"  {text}", flush=True)


def run(*args: str, expect: int = 0, show: bool = True) -> str:
    """Run ``sealpod ARGS``; fail the demo when the exit code is not ``expect``."""
    print("$ sealpod " + " ".join(shlex.quote(a) for a in args), flush=True)
    done = subprocess.run([SEALPOD, *args], capture_output=True, text=True, check=False)
    if show:
        for line in (done.stdout + done.stderr).rstrip().splitlines():
            say(line)
    if done.returncode != expect:
        print(f"demo failed: expected exit code {expect}, got {done.returncode}", file=sys.stderr)
        raise SystemExit(1)
    say(f"(exit code {done.returncode}{', as expected' if expect else ''})")
    return done.stdout


def start(*args: str) -> subprocess.Popen[str]:
    print("$ sealpod " + " ".join(shlex.quote(a) for a in args) + " &", flush=True)
    return subprocess.Popen(
        [SEALPOD, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def stop(proc: subprocess.Popen[str], what: str) -> int:
    """SIGTERM ``proc``, show its output, return its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        output, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
    print(f"  --- output of {what} ---")
    for line in (output or "").rstrip().splitlines():
        say(line)
    return proc.returncode


def https_get(port: int, server_name: str, root_pem: bytes) -> tuple[dict[str, Any], str]:
    """GET / over TLS, trusting only ``root_pem``; returns the JSON and the server cert subject."""
    context = ssl.create_default_context(cadata=root_pem.decode())
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        peer = tls.getpeercert()
        tls.sendall(f"GET / HTTP/1.0\r\nHost: {server_name}\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    subject = ", ".join(f"{k}={v}" for rdn in peer.get("subject", ()) for k, v in rdn)
    return json.loads(data.partition(b"\r\n\r\n")[2]), subject


def attestation_basics() -> None:
    step("1. A simulated SGX platform (simulated Intel PKI, quoting key, signed collateral)")
    run("sim", "init", "--dir", "sim", "--force")
    mrenclave, mrsigner = "11" * 32, "22" * 32
    run(
        "sim", "quote", "--dir", "sim", "--report-data", "ab" * 32,
        "--mrenclave", mrenclave, "--mrsigner", mrsigner, "-o", "quote.bin",
    )  # fmt: skip
    run("sim", "collateral", "--dir", "sim", "-o", "collateral.json", show=False)
    run("sim", "root", "--dir", "sim", "-o", "sim-root.der", show=False)
    say("Its quotes are real DCAP quotes, verified by the same verifier as hardware ones:")
    run(
        "quote", "verify", "quote.bin", "--collateral", "collateral.json",
        "--trust-root", "sim-root.der", "--allow-simulation",
    )  # fmt: skip
    say("... and refused by a production policy (Intel's root), or without --allow-simulation:")
    run("quote", "verify", "quote.bin", "--collateral", "collateral.json", expect=1)
    run(
        "quote", "verify", "quote.bin", "--collateral", "collateral.json",
        "--trust-root", "sim-root.der", expect=1,
    )  # fmt: skip


def attest_coordinator(url: str, sim: Path, identity: dict[str, Any]) -> bytes:
    """`sealpod verify` when this build has it, else the client library; returns the root PEM."""
    has_verify = (
        subprocess.run([SEALPOD, "verify", "--help"], capture_output=True, check=False).returncode
        == 0
    )
    if has_verify:
        run(
            "verify", "--coordinator", url, "--expect-mrenclave", identity["mrenclave"],
            "--allow-simulation", "--sim-dir", str(sim), "--out", "coordinator-root.pem",
        )  # fmt: skip
        return Path("coordinator-root.pem").read_bytes()
    from sealpod.coordinator import verify_coordinator
    from sealpod.tee import SimulatedPlatform

    say("(`sealpod verify` is not in this build yet: using the client library's")
    say(" verify_coordinator(), which the command wraps)")
    verified = verify_coordinator(
        url,
        expect_mrenclave=bytes.fromhex(identity["mrenclave"]),
        allow_simulation=True,
        simulated_root_der=SimulatedPlatform.load(sim).root_certificate_der(),
    )
    Path("coordinator-root.pem").write_bytes(verified.root_pem)
    say(f"coordinator attested (simulated: {str(verified.simulated).lower()}); "
        "its root certificate is pinned in coordinator-root.pem")  # fmt: skip
    return verified.root_pem


def set_manifest(url: str, root_pem: bytes, mrenclave: str, port: int) -> None:
    manifest = {
        "version": 1,
        "packages": {"web": {"mrenclave": [mrenclave]}},
        "services": {
            "web": {
                "package": "web",
                "max_instances": 5,
                "files": {
                    "/secrets/tls.crt": "{{ sealpod.cert_chain | pem }}",
                    "/secrets/tls.key": "{{ sealpod.private_key | pem }}",
                },
                "env": {"DB_PASSWORD": "{{ secrets.db_password | hex }}", "PORT": str(port)},
            }
        },
        "secrets": {"db_password": {"type": "symmetric-key", "size": 256, "scope": "shared"}},
        "policy": {"allow_simulation": True},
    }
    Path("manifest.json").write_text(json.dumps(manifest, indent=2))
    say("manifest.json: the service 'web' runs only the package with that MRENCLAVE; the")
    say("coordinator generates its DB_PASSWORD and issues its TLS certificate")
    has_set = (
        subprocess.run(
            [SEALPOD, "manifest", "set", "--help"], capture_output=True, check=False
        ).returncode
        == 0
    )
    if has_set:
        run(
            "manifest", "set", "manifest.json", "--coordinator", url,
            "--coordinator-root", "coordinator-root.pem",
        )  # fmt: skip
        return
    from sealpod.coordinator import pinned_client

    say("(`sealpod manifest set` is not in this build yet: POST /api/v1/manifest over the")
    say(" pinned TLS connection with the client library)")
    with pinned_client(url, root_pem) as client:
        response = client.post("/api/v1/manifest", json=manifest)
    if response.status_code != 200:
        print(f"demo failed: manifest refused: {response.text}", file=sys.stderr)
        raise SystemExit(1)
    say("manifest set")


def tampered_copy_of_unpacked_tree(cache: Path) -> Path:
    """A private copy of the package's unpacked tree (hard links: instant), for tampering.

    The shared cache must stay intact, so /app/server.py is unlinked in the copy and written
    as a new file; returns its path.
    """
    from sealpod.image import layers_cache_key, sealpod_cache_dir
    from sealpod.package import open_package, package_rootfs_layers

    image = package_rootfs_layers(open_package("web.pkg")).image
    key = layers_cache_key(image, preserve_owners=os.geteuid() == 0)
    shared_root = Path(os.environ.get("SEALPOD_CACHE_DIR") or sealpod_cache_dir())
    shared = shared_root / "layers" / key
    (cache / "layers").mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-al", str(shared), str(cache / "layers" / key)], check=True)
    server_py = cache / "layers" / key / "app" / "server.py"
    content = server_py.read_bytes()
    server_py.unlink()
    server_py.write_bytes(content)
    return server_py


def main() -> int:
    work = Path(os.environ.get("SEALPOD_DEMO_DIR") or tempfile.mkdtemp(prefix="sealpod-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    print(f"sealpod demo: an unmodified image as an attested service (work dir: {work})")
    print("Everything runs on the SIMULATED SGX platform: no memory isolation, for development.")

    attestation_basics()

    step("2. A Debian root filesystem with python3 and an unmodified HTTPS service in it")
    say("debootstrap, cached under $SEALPOD_CACHE_DIR/rootfs (minutes the first time) ...")
    rootfs = debian_rootfs()
    say(f"rootfs: {rootfs}")
    Path("server.py").write_text(HTTPS_SERVICE)
    say("server.py (stdlib only): DB password from $DB_PASSWORD, TLS cert/key from")
    say("/secrets/tls.crt and /secrets/tls.key, answers GET / with JSON")
    layers = [
        base_layer(rootfs),
        app_layer(work / "app-layer", {"app/server.py": HTTPS_SERVICE.encode()}),
    ]
    write_image(
        work / "image", layers, argv=("python3", "server.py"), working_dir="/app", user="nobody"
    )
    say("image: an OCI image layout (the Debian layer + /app/server.py), user nobody")

    step("3. Build it into a signed confidential package")
    run("key", "generate", "-o", "enclave-key.pem", "--force")
    run("build", "oci:image", "-o", "web.pkg", "--key", "enclave-key.pem")
    package = json.loads(run("inspect", "web.pkg", "--json", show=False))
    say(f"MRENCLAVE {package['mrenclave']}: the identity the manifest will name; every one of")
    say(f"its {package['trusted_files']} files is measured (sha256) into it, and the signature")
    say("(enclave.sig) is checked by `sealpod inspect` and again by every `sealpod run`")

    step("4. Start a coordinator (SQLite state, simulation) and attest it")
    identity = json.loads(run("coordinator", "identity", "--json", show=False))
    say("expected coordinator MRENCLAVE (measured from the installed sealpod, reproducible):")
    say(identity["mrenclave"])
    coordinator_port = free_port()
    url = f"https://127.0.0.1:{coordinator_port}"
    coordinator = start(
        "coordinator", "serve", "--state", f"sqlite:///{work / 'coordinator.db'}",
        "--listen", f"127.0.0.1:{coordinator_port}", "--sim-dir", "sim",
    )  # fmt: skip
    service: subprocess.Popen[str] | None = None
    try:
        wait_for_port(coordinator_port, coordinator)
        root_pem = attest_coordinator(url, work / "sim", identity)

        step("5. Set the deployment manifest")
        port = free_port()
        set_manifest(url, root_pem, package["mrenclave"], port)

        step("6. sealpod run: verify the package, attest, receive the secrets in memory, start")
        run_args = (
            "run", "web.pkg", "--coordinator", url, "--coordinator-root", "coordinator-root.pem",
            "--service", "web", "--instance", "demo-1", "--sim-dir", "sim",
            "--publish", f"{port}:{port}",
        )  # fmt: skip
        service = start(*run_args)
        wait_for_port(port, service, timeout=60)
        say(f"the service listens on 127.0.0.1:{port}")

        step("7. Call it over HTTPS, trusting only the coordinator's root certificate")
        answer, subject = https_get(port, "web", root_pem)
        say(f"server certificate: {subject}")
        say(f"answer: {json.dumps(answer)}")
        say("the service got its password (only its hash is shown) and its certificate from")
        say("the coordinator after attestation; neither was ever written to the host's disk")
        status = stop(service, "sealpod run")
        service = None
        say(f"stopped with SIGTERM: exit status {status} (128+15: the signal reached the app)")

        step("8. Tamper with one trusted file (one byte, same size): the run is refused")
        server_py = tampered_copy_of_unpacked_tree(work / "unpacked")
        data = bytearray(server_py.read_bytes())
        index = data.index(b"PORT")
        data[index] = ord("Q")  # "PORT" -> "QORT": same size
        server_py.write_bytes(bytes(data))
        say(f"changed one byte of {server_py} (the unpacked /app/server.py)")
        tampered_args = (*run_args, "--cache-dir", "unpacked")
        done = subprocess.run(
            [SEALPOD, *tampered_args], capture_output=True, text=True, timeout=120, check=False
        )
        print("$ sealpod " + " ".join(shlex.quote(a) for a in tampered_args))
        for line in (done.stdout + done.stderr).rstrip().splitlines():
            say(line)
        if done.returncode == 0 or "Permission denied" not in done.stderr:
            print("demo failed: the tampered file was served", file=sys.stderr)
            return 1
        say(f"(exit code {done.returncode}: the shield refused the tampered file with EACCES,")
        say(" python never saw its bytes, and the service did not start)")
        say("... and a package whose layer was changed is refused before anything runs:")
        from sealpod.image import open_image

        blob = open_image("oci:web.pkg").layers[1].path  # the layer holding /app/server.py
        raw = bytearray(blob.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        blob.chmod(0o644)
        blob.write_bytes(bytes(raw))
        run(*run_args[:2], "--cache-dir", "unpacked-2", expect=1)
    finally:
        if service is not None:
            stop(service, "sealpod run")
        stop(coordinator, "the coordinator")

    print("\nDemo complete: an unmodified Python HTTPS service ran from a verified package,")
    print("got its password and certificate only after (simulated) attestation, was reached")
    print("over TLS trusting only the coordinator's root, and tampering was refused.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
