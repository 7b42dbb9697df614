"""`make demo`: sealpod's attestation flow end to end, on the simulated SGX platform.

Each step runs the real ``sealpod`` command and shows it, so a newcomer can follow and repeat it.
Everything lives in one work directory (``$SEALPOD_DEMO_DIR`` or a fresh temporary one).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from sealpod.sgx import measure_blob

SEALPOD = str(Path(sys.executable).with_name("sealpod"))


def step(title: str) -> None:
    print(f"\n=== {title}")


def run(*args: str, expect: int = 0, show: bool = True) -> str:
    """Run ``sealpod ARGS``; fail the demo when the exit code is not ``expect``."""
    print("$ sealpod " + " ".join(shlex.quote(a) for a in args))
    done = subprocess.run([SEALPOD, *args], capture_output=True, text=True, check=False)
    output = done.stdout + done.stderr
    if show:
        for line in output.rstrip().splitlines():
            print(f"  {line}")
    if done.returncode != expect:
        print(f"demo failed: expected exit code {expect}, got {done.returncode}", file=sys.stderr)
        raise SystemExit(1)
    print(f"  (exit code {done.returncode}{', as expected' if expect else ''})")
    return done.stdout


def main() -> int:
    work = Path(os.environ.get("SEALPOD_DEMO_DIR") or tempfile.mkdtemp(prefix="sealpod-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    print(f"sealpod demo: attestation on the simulated SGX platform (work dir: {work})")

    step("1. Create a simulated SGX platform (simulated Intel PKI, quoting key, collateral)")
    run("sim", "init", "--dir", "sim", "--force")

    step("2. Sign an enclave: key, measurement (MRENCLAVE), SIGSTRUCT")
    run("key", "generate", "-o", "enclave-key.pem", "--force")
    # The enclave here is a stand-in blob; `sealpod build` measures real images the same way.
    mr_enclave = measure_blob(b"sealpod demo enclave\n" * 100, enclave_size=1 << 20).hex()
    print(f"  MRENCLAVE of the demo enclave: {mr_enclave}")
    run(
        "sigstruct", "sign", "--key", "enclave-key.pem", "--mrenclave", mr_enclave,
        "--isv-prod-id", "1", "--isv-svn", "2", "-o", "enclave.sig",
    )  # fmt: skip
    inspected = run("sigstruct", "inspect", "enclave.sig", "--json", show=False)
    sig = json.loads(inspected)
    mr_signer = sig["mr_signer"]
    print(f"  mr_signer={mr_signer} signature_valid={sig['signature_valid']}")

    step("3. The enclave asks for a quote binding 64 bytes of its own data (e.g. a key hash)")
    report_data = hashlib.sha256(b"public key of the enclave").hexdigest() + "00" * 32
    run(
        "sim", "quote", "--dir", "sim", "--report-data", report_data,
        "--mrenclave", mr_enclave, "--mrsigner", mr_signer,
        "--isv-prod-id", "1", "--isv-svn", "2", "-o", "quote.bin",
    )  # fmt: skip
    run("sim", "collateral", "--dir", "sim", "-o", "collateral.json")
    run("sim", "root", "--dir", "sim", "-o", "sim-root.der")
    run("quote", "inspect", "quote.bin")

    step("4. Verify it: same verifier as hardware quotes, simulated root, simulation allowed")
    policy = {
        "mrsigner": mr_signer,
        "isv_prod_id": 1,
        "min_isv_svn": 2,
        "expected_report_data": report_data,
        "allow_simulation": True,
    }
    Path("policy.json").write_text(json.dumps(policy, indent=2))
    run(
        "quote", "verify", "quote.bin", "--collateral", "collateral.json",
        "--trust-root", "sim-root.der", "--policy", "policy.json",
    )  # fmt: skip

    step("5. A production policy refuses it")
    print("  ... against the default trust anchor, the Intel SGX Root CA:")
    run("quote", "verify", "quote.bin", "--collateral", "collateral.json", expect=1)
    print("  ... against the simulated root, but without --allow-simulation:")
    run(
        "quote", "verify", "quote.bin", "--collateral", "collateral.json",
        "--trust-root", "sim-root.der", expect=1,
    )  # fmt: skip
    print("  ... when the enclave is not at the required security version (min_isv_svn 3):")
    Path("policy-svn3.json").write_text(json.dumps({**policy, "min_isv_svn": 3}))
    run(
        "quote", "verify", "quote.bin", "--collateral", "collateral.json",
        "--trust-root", "sim-root.der", "--policy", "policy-svn3.json", expect=1,
    )  # fmt: skip

    step("6. A tampered quote (one bit of the report data flipped) is refused")
    raw = bytearray(Path("quote.bin").read_bytes())
    raw[48 + 320] ^= 0x01  # first byte of report_data in the SGX report body
    Path("tampered.bin").write_bytes(bytes(raw))
    run(
        "quote", "verify", "tampered.bin", "--collateral", "collateral.json",
        "--trust-root", "sim-root.der", "--allow-simulation", expect=1,
    )  # fmt: skip

    print("\nDemo complete: a simulated quote was accepted only where the policy allowed")
    print("simulation, and refused by a production policy and after tampering.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
