"""Simulated quotes per second from ``SimulatedPlatform.quote()``, and their verification rate.

Baseline (same run): one bare ECDSA P-256/SHA-256 signature over 432 bytes (header + report
body), the only signature a simulated quote needs per call: like the real QE, the platform signs
its QE report once per load. The second row times dcap-qvl verifying that quote against the same
baseline.

    .venv/bin/python benchmarks/bench_sim_quotes.py        # or: benchmarks/run_all.py sim_quotes
    SEALPOD_BENCH_SECONDS=2 sets the time per measurement (default 1.5 s).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dcap_qvl
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from sealpod.tee.simulation import SimulatedPlatform


def _rate(function: Callable[[], object], seconds: float) -> float:
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(50):
            function()
        count += 50
    return count / (time.perf_counter() - start)


def run() -> list[dict[str, Any]]:
    """Rows for ``run_all.py`` (operations per second, higher is better)."""
    seconds = float(os.environ.get("SEALPOD_BENCH_SECONDS", "1.5"))
    with tempfile.TemporaryDirectory(prefix="bench-sim-") as tmp:
        now = int(time.time())
        platform = SimulatedPlatform.init(Path(tmp) / "sim", now=now)
        mr_enclave, mr_signer = b"\x11" * 32, b"\x22" * 32

        def make_quote() -> bytes:
            return platform.quote(b"bench", mr_enclave=mr_enclave, mr_signer=mr_signer)

        key = ec.generate_private_key(ec.SECP256R1())
        message = bytes(432)

        def bare_sign() -> bytes:
            return key.sign(message, ec.ECDSA(hashes.SHA256()))

        quote = make_quote()
        collateral = dcap_qvl.QuoteCollateralV3.from_json(json.dumps(platform.collateral()))
        root = platform.root_certificate_der()

        def verify() -> object:
            return dcap_qvl.verify_with_root_ca(quote, collateral, root, now + 1)

        baseline = _rate(bare_sign, seconds)
        quotes = _rate(make_quote, seconds)
        verifies = _rate(verify, seconds)
    return [
        {
            "benchmark": "simulated quote() vs bare ECDSA P-256 sign",
            "sealpod": quotes,
            "baseline": baseline,
            "ratio": quotes / baseline,
            "unit": "ops/s",
        },
        {
            "benchmark": "dcap-qvl verify of a simulated quote vs bare ECDSA P-256 sign",
            "sealpod": verifies,
            "baseline": baseline,
            "ratio": verifies / baseline,
            "unit": "ops/s",
        },
    ]


if __name__ == "__main__":
    for row in run():
        print(
            f"{row['benchmark']}: {row['sealpod']:,.0f} {row['unit']} "
            f"(baseline {row['baseline']:,.0f}, ratio {row['ratio']:.2f})"
        )
