"""Quotes verified per second end to end (parse, verify, appraise) vs the raw dcap-qvl call.

sealpod: ``verify_quote(quote, collateral, at=..., policy=...)`` on the dcap-qvl sample SGX quote
(parse with ``parse_quote``, dcap-qvl under the pinned Intel root, window check, appraisal).
Baseline (same run, same quote and collateral object): ``dcap_qvl.verify_with_root_ca``.
The two are interleaved in short rounds so that load from other processes hits both alike. The
ratio uses this process's CPU time per call (other jobs on a shared machine do not distort it);
the wall-clock rates are the second row. Bar: ratio >= 0.8.

    .venv/bin/python benchmarks/bench_verify.py        # or: benchmarks/run_all.py verify
    SEALPOD_BENCH_SECONDS (default 1.5) is the time per side; SEALPOD_SHARED_DIR finds the vectors.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dcap_qvl

from sealpod.attestation.collateral import Collateral
from sealpod.attestation.policy import AppraisalPolicy
from sealpod.attestation.verify import intel_root, verify_quote

BAR = 0.8
_ROUND = 25  # calls per side per round


def _vectors() -> Path:
    override = os.environ.get("SEALPOD_SHARED_DIR")
    shared = Path(override) if override else Path(__file__).resolve().parents[1].parent / "shared"
    folder = shared / "attestation-vectors" / "dcap-qvl-samples"
    if not folder.is_dir():
        raise SystemExit(f"attestation vectors not found in {folder}; set SEALPOD_SHARED_DIR")
    return folder


def _interleaved(
    first: Callable[[], object], second: Callable[[], object], seconds: float
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Rates (calls/s) of two functions timed in alternating rounds: (CPU, wall) for each.

    CPU time (``time.process_time``) is this process's own cost per call, which other jobs on
    the shared machine do not distort; wall time is reported alongside.
    """
    cpu = [0.0, 0.0]
    wall = [0.0, 0.0]
    calls = 0
    while wall[0] < seconds or wall[1] < seconds:
        for index, function in enumerate((first, second)):
            start_cpu, start_wall = time.process_time(), time.perf_counter()
            for _ in range(_ROUND):
                function()
            cpu[index] += time.process_time() - start_cpu
            wall[index] += time.perf_counter() - start_wall
        calls += _ROUND
    return (calls / cpu[0], calls / wall[0]), (calls / cpu[1], calls / wall[1])


def run() -> list[dict[str, Any]]:
    """Rows for ``run_all.py`` (quotes per second, higher is better)."""
    seconds = float(os.environ.get("SEALPOD_BENCH_SECONDS", "1.5"))
    folder = _vectors()
    case = next(
        c for c in json.loads((folder / "expected.json").read_text()) if c["quote"] == "sgx_quote"
    )
    quote = (folder / case["quote"]).read_bytes()
    collateral = Collateral.from_dcap_qvl_json((folder / case["collateral"]).read_text())
    at = int(case["dcap_qvl_0_7_0"]["verify_at_now_secs"]["now_secs"])
    policy = AppraisalPolicy(
        accepted_tcb_statuses=(case["dcap_qvl_0_7_0"]["verify_at_now_secs"]["status"],)
    )
    raw_collateral = collateral.to_dcap_qvl()
    root_der = intel_root().der

    def raw() -> object:
        return dcap_qvl.verify_with_root_ca(quote, raw_collateral, root_der, at)

    def end_to_end() -> object:
        return verify_quote(quote, collateral, at=at, policy=policy)

    end_to_end()  # warm the caches (root, conversion) and check that it verifies
    raw()
    (sealpod_cpu, sealpod_wall), (baseline_cpu, baseline_wall) = _interleaved(
        end_to_end, raw, seconds
    )
    ratio = sealpod_cpu / baseline_cpu
    return [
        {
            "benchmark": "verify_quote (parse+verify+appraise) vs raw dcap_qvl.verify_with_root_ca"
            " (CPU time)",
            "sealpod": sealpod_cpu,
            "baseline": baseline_cpu,
            "ratio": ratio,
            "bar": f">= {BAR} ({'met' if ratio >= BAR else 'NOT met'})",
            "unit": "quotes/s",
        },
        {
            "benchmark": "same, wall clock (noisy on a shared machine)",
            "sealpod": sealpod_wall,
            "baseline": baseline_wall,
            "ratio": sealpod_wall / baseline_wall,
            "bar": "",
            "unit": "quotes/s",
        },
    ]


if __name__ == "__main__":
    print("| benchmark | sealpod | baseline | ratio | bar |")
    print("|---|---|---|---|---|")
    for row in run():
        print(
            f"| {row['benchmark']} | {row['sealpod']:,.0f} {row['unit']} | "
            f"{row['baseline']:,.0f} {row['unit']} | {row['ratio']:.2f} | {row['bar']} |"
        )
