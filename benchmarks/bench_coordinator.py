"""Coordinator activations per second and p50/p99 latency, against the real served coordinator.

The server is ``sealpod coordinator serve`` in a subprocess (SQLite in a temporary directory, or
a private PostgreSQL server when the Debian binaries are there), on the simulated platform, with
real TLS pinned to the coordinator's root. The load generator is one asyncio loop in this process
that keeps N HTTP/1.1 connections alive (one per simulated client) and speaks just enough HTTP
to send a request and read a ``Content-Length`` body, so that it takes as little CPU from the
server as possible on this 2-core machine.

What one activation is (measured honestly, both round trips): ``POST /api/v1/activation/nonce``,
then the client builds the simulated quote binding ``SHA-256("sealpod-activation-v1" ‖ SPKI ‖
nonce)`` (about 0.2 ms), then ``POST /api/v1/activation``. Nonces cannot be pre-fetched without
cheating on the protocol (the quote binds the nonce), so only what does not depend on the nonce
is prepared before the timed phase: one key pair and CSR per activation, the collateral JSON, the
request bodies' fixed parts. The latency of an activation spans both requests.

Baseline (same run, same connections and concurrency): two ``GET /healthz`` per operation,
i.e. the HTTP/TLS/ASGI ceiling of this machine for the same number of round trips.

The server's peak memory is its ``VmHWM`` (summed over worker processes when there are several)
after at least ``SEALPOD_BENCH_ACTIVATIONS`` (default 10,000) activations on SQLite.

    .venv/bin/python benchmarks/bench_coordinator.py      # or: benchmarks/run_all.py coordinator
    SEALPOD_BENCH_SECONDS (default 8) per measurement; SEALPOD_BENCH_CLIENTS (default 1,8,32);
    SEALPOD_BENCH_POSTGRES=0 / SEALPOD_BENCH_SQLITE=0 skip a backend; SEALPOD_BENCH_WORKERS sets
    the server's worker processes (default: one per CPU).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
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

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

BAR = ">= 200 activations/s at 32 clients, p99 <= 250 ms (SQLite)"
MRENCLAVE = "a1" * 32


def _manifest() -> dict[str, Any]:
    # A realistic service: certificate chain and key files, a shared symmetric key in env.
    return {
        "version": 1,
        "packages": {"bench": {"mrenclave": [MRENCLAVE]}},
        "services": {
            "api": {
                "package": "bench",
                "files": {
                    "/secrets/tls.crt": "{{ sealpod.cert_chain | pem }}",
                    "/secrets/tls.key": "{{ sealpod.private_key | pem }}",
                    "/secrets/ca.crt": "{{ sealpod.mesh_root | pem }}",
                },
                "env": {"DB_KEY": "{{ secrets.db_key | hex }}"},
                "argv": ["/app", "--instance={{ sealpod.instance }}"],
            }
        },
        "secrets": {"db_key": {"type": "symmetric-key", "size": 256}},
        "policy": {"allow_simulation": True},
    }


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Served:
    url: str
    host: str
    port: int
    root_pem: bytes
    process: subprocess.Popen[bytes]


def _sealpod() -> list[str]:
    candidate = Path(sys.executable).with_name("sealpod")
    return [str(candidate)] if candidate.is_file() else [sys.executable, "-m", "sealpod.cli"]


@contextlib.contextmanager
def serving(state_url: str, sim_dir: Path, workers: int | None) -> Iterator[Served]:
    """``sealpod coordinator serve`` in a subprocess, attested, with the manifest set."""
    from sealpod.coordinator import pinned_client, verify_coordinator
    from sealpod.tee import SimulatedPlatform

    port = _free_port()
    env = dict(os.environ, SEALPOD_LOG_LEVEL="ERROR")
    if workers is not None:
        env["SEALPOD_WORKERS"] = str(workers)
    command = [
        *_sealpod(), "coordinator", "serve", "--state", state_url,
        "--listen", f"127.0.0.1:{port}", "--sim-dir", str(sim_dir), "--nonce-ttl", "600",
    ]  # fmt: skip
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log)
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"the coordinator exited: {log.read().decode(errors='replace')}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the coordinator did not start")
            time.sleep(0.1)
        platform = SimulatedPlatform.load(sim_dir)
        # Any simulated identity: the shared checkout's files (hence the simulated measurement)
        # change under us, and attestation is not what is measured here.
        verified = verify_coordinator(
            url,
            allow_simulation=True,
            simulated_root_der=platform.root_certificate_der(),
        )
        with pinned_client(url, verified.root_pem) as client:
            response = client.post("/api/v1/manifest", json=_manifest())
            if response.status_code != 200:
                raise RuntimeError(f"manifest refused: {response.text}")
        yield Served(url, "127.0.0.1", port, verified.root_pem, process)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _peak_rss_kib(pid: int) -> list[int]:
    """VmHWM (KiB) of ``pid`` and of each of its child processes (the workers)."""
    peaks = []
    pids = [pid]
    with contextlib.suppress(OSError):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    for one in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{one}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]))
    return peaks


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its child processes so far."""
    total = 0
    pids = [pid]
    with contextlib.suppress(OSError):
        pids += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for one in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


# -- the load generator ------------------------------------------------------------------------


class _Connection:
    """One keep-alive HTTPS connection speaking minimal HTTP/1.1."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str):
        self._reader = reader
        self._writer = writer
        self._host = host.encode()

    @classmethod
    async def open(cls, served: Served, context: ssl.SSLContext) -> _Connection:
        reader, writer = await asyncio.open_connection(
            served.host, served.port, ssl=context, server_hostname=served.host
        )
        return cls(reader, writer, f"{served.host}:{served.port}")

    async def request(self, method: bytes, path: bytes, body: bytes = b"") -> tuple[int, bytes]:
        head = (
            method + b" " + path + b" HTTP/1.1\r\nHost: " + self._host + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
        )
        self._writer.write(head + body)
        header = await self._reader.readuntil(b"\r\n\r\n")
        status = int(header[9:12])
        length = 0
        for line in header.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        data = await self._reader.readexactly(length) if length else b""
        return status, data

    def close(self) -> None:
        self._writer.close()


@dataclass
class _Prepared:
    key_spki: bytes
    csr_json: str  # the CSR PEM as a JSON string literal


def prepare(count: int) -> list[_Prepared]:
    """One key pair and CSR per activation (before the timed phase)."""
    prepared = []
    for _ in range(count):
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "api")]))
            .sign(key, hashes.SHA256())
        )
        spki = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        csr_pem = csr.public_bytes(serialization.Encoding.PEM).decode()
        prepared.append(_Prepared(spki, json.dumps(csr_pem)))
    return prepared


@dataclass
class Result:
    clients: int
    completed: int
    seconds: float
    latencies: list[float]
    errors: int

    @property
    def rate(self) -> float:
        return self.completed / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _load(
    served: Served,
    clients: int,
    seconds: float,
    operation: str,
    prepared: list[_Prepared],
    backend: Any,
    collateral_json: str,
    instance_prefix: str,
) -> Result:
    context = ssl.create_default_context(cadata=served.root_pem.decode())
    connections = [await _Connection.open(served, context) for _ in range(clients)]
    latencies: list[float] = []
    errors = 0
    cursor = 0
    stop_at = time.perf_counter() + seconds

    async def activation(connection: _Connection, item: _Prepared, instance: str) -> bool:
        status, body = await connection.request(b"POST", b"/api/v1/activation/nonce")
        if status != 200:
            return False
        nonce = bytes.fromhex(json.loads(body)["nonce"])
        report_data = hashlib.sha256(
            b"sealpod-activation-v1" + item.key_spki + nonce
        ).digest() + bytes(32)
        quote = backend.quote(report_data).hex()
        request = (
            '{"service":"api","instance":"' + instance + '","csr":' + item.csr_json
            + ',"nonce":"' + nonce.hex() + '","quote":"' + quote
            + '","collateral":' + collateral_json + "}"
        )  # fmt: skip
        status, body = await connection.request(b"POST", b"/api/v1/activation", request.encode())
        return status == 200

    async def health(connection: _Connection) -> bool:
        first, _ = await connection.request(b"GET", b"/healthz")
        second, _ = await connection.request(b"GET", b"/healthz")
        return first == second == 200

    async def client(connection: _Connection) -> None:
        nonlocal cursor, errors
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            if operation == "activation":
                if cursor >= len(prepared):
                    return
                index = cursor
                cursor += 1
                ok = await activation(connection, prepared[index], f"{instance_prefix}{index}")
            else:
                ok = await health(connection)
            if ok:
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1

    began = time.perf_counter()
    await asyncio.gather(*(client(c) for c in connections))
    elapsed = time.perf_counter() - began
    for connection in connections:
        connection.close()
    return Result(clients, len(latencies), elapsed, latencies, errors)


def measure(
    served: Served,
    clients: int,
    seconds: float,
    operation: str,
    prepared: list[_Prepared] | None = None,
    *,
    sim_dir: Path | None = None,
    instance_prefix: str = "i",
) -> Result:
    """Run one timed load phase (``operation`` is ``activation`` or ``healthz``)."""
    backend: Any = None
    collateral_json = "null"
    if operation == "activation":
        from sealpod.tee import EnclaveIdentity, SimulatedPlatform, SimulationBackend

        if sim_dir is None or prepared is None:
            raise ValueError("activations need the platform and prepared CSRs")
        platform = SimulatedPlatform.load(sim_dir)
        backend = SimulationBackend(
            platform,
            EnclaveIdentity(mr_enclave=bytes.fromhex(MRENCLAVE), mr_signer=bytes(32), debug=False),
        )
        collateral_json = json.dumps(platform.collateral(), separators=(",", ":"))
    return asyncio.run(
        _load(
            served,
            clients,
            seconds,
            operation,
            prepared or [],
            backend,
            collateral_json,
            instance_prefix,
        )
    )


# -- the benchmark ---------------------------------------------------------------------------


def _row(name: str, result: Result, baseline: Result | None, bar: str = "") -> dict[str, Any]:
    return {
        "benchmark": (
            f"{name}: {result.clients} client(s), activations/s"
            f" (p50 {result.percentile(0.5) * 1000:.0f} ms, p99 {result.percentile(0.99) * 1000:.0f}"
            " ms; baseline: 2 x GET /healthz)"
        ),
        "sealpod": round(result.rate, 1),
        "baseline": None if baseline is None else round(baseline.rate, 1),
        "ratio": None if baseline is None else round(result.rate / baseline.rate, 3),
        "bar": bar,
        "unit": "/s",
        "p50_ms": round(result.percentile(0.50) * 1000, 1),
        "p99_ms": round(result.percentile(0.99) * 1000, 1),
        "baseline_p50_ms": None if baseline is None else round(baseline.percentile(0.5) * 1000, 1),
        "baseline_p99_ms": None if baseline is None else round(baseline.percentile(0.99) * 1000, 1),
        "errors": result.errors,
        "completed": result.completed,
    }


def _postgres() -> Any:
    sys.path.insert(0, str(ROOT / "tests" / "integration"))
    try:
        import postgres_fixture  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    reason = postgres_fixture.unavailable_reason()
    return None if reason is not None else postgres_fixture.running_postgres()


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run() -> list[dict[str, Any]]:
    from sealpod.tee import SimulatedPlatform

    seconds = float(os.environ.get("SEALPOD_BENCH_SECONDS", "8"))
    counts = [int(c) for c in os.environ.get("SEALPOD_BENCH_CLIENTS", "1,8,32").split(",")]
    total = int(os.environ.get("SEALPOD_BENCH_ACTIVATIONS", "10000"))
    workers_env = os.environ.get("SEALPOD_BENCH_WORKERS")
    workers = int(workers_env) if workers_env else (os.cpu_count() or 1)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    prepared = prepare(max(total, 600 * int(seconds) * len(counts)))
    _log(f"  prepared {len(prepared)} CSRs in {time.perf_counter() - started:.1f} s")
    with tempfile.TemporaryDirectory(prefix="sealpod-bench-coord-") as tmp:
        sim_dir = Path(tmp) / "platform"
        SimulatedPlatform.init(sim_dir)
        backends: list[tuple[str, Any]] = []
        if os.environ.get("SEALPOD_BENCH_SQLITE", "1") != "0":
            backends.append(("sqlite", None))
        if os.environ.get("SEALPOD_BENCH_POSTGRES", "1") != "0":
            backends.append(("postgresql", _postgres()))
        for kind, pg in backends:
            if kind == "postgresql" and pg is None:
                _log("  PostgreSQL unavailable: skipped")
                continue
            with contextlib.ExitStack() as stack:
                if kind == "sqlite":
                    state_url = f"sqlite:///{tmp}/state.db"
                else:
                    state_url = stack.enter_context(pg).create_schema("sealpod_bench")
                served = stack.enter_context(serving(state_url, sim_dir, workers))
                used = 0
                for clients in counts:
                    base = measure(served, clients, seconds / 2, "healthz")
                    cpu_before, client_before = (
                        _cpu_seconds(served.process.pid),
                        time.process_time(),
                    )
                    result = measure(
                        served,
                        clients,
                        seconds,
                        "activation",
                        prepared[used:],
                        sim_dir=sim_dir,
                        instance_prefix=f"c{clients}-",
                    )
                    used += result.completed + result.errors
                    done = max(result.completed, 1)
                    server_cpu = (_cpu_seconds(served.process.pid) - cpu_before) / done * 1000
                    client_cpu = (time.process_time() - client_before) / done * 1000
                    _log(
                        f"  {kind} {clients:>2} clients: {result.rate:7.1f} act/s "
                        f"p50 {result.percentile(0.5) * 1000:6.1f} ms "
                        f"p99 {result.percentile(0.99) * 1000:6.1f} ms errors {result.errors} | "
                        f"healthz x2 {base.rate:7.1f}/s p99 {base.percentile(0.99) * 1000:.1f} ms | "
                        f"CPU per activation: server {server_cpu:.2f} ms, client {client_cpu:.2f} ms"
                    )
                    bar = BAR if (kind == "sqlite" and clients == 32) else ""
                    row = _row(f"coordinator {kind}", result, base, bar)
                    row["server_cpu_ms"] = round(server_cpu, 2)
                    row["client_cpu_ms"] = round(client_cpu, 2)
                    rows.append(row)
                if kind == "sqlite" and total > used:
                    # Top up to ``total`` activations, then read the server's peak memory.
                    extra = measure(
                        served,
                        32,
                        3600,
                        "activation",
                        prepared[used:total],
                        sim_dir=sim_dir,
                        instance_prefix="m-",
                    )
                    used += extra.completed + extra.errors
                if kind == "sqlite":
                    peaks = _peak_rss_kib(served.process.pid)
                    _log(
                        f"  peak RSS after {used} activations: {sum(peaks) / 1024:.0f} MiB in all,"
                        f" per process {[round(p / 1024) for p in peaks]} MiB"
                    )
                    rows.append(
                        {
                            "benchmark": f"coordinator sqlite: peak RSS after {used} activations"
                            f" ({len(peaks)} processes, largest {max(peaks) / 1024:.0f} MiB)",
                            "sealpod": round(sum(peaks) / 1024, 1),
                            "baseline": None,
                            "ratio": None,
                            "bar": "",
                            "unit": "MiB",
                        }
                    )
    return rows


if __name__ == "__main__":
    for row in run():
        print(json.dumps(row))
