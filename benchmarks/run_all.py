"""Run every benchmark (or those named on the command line) and print one markdown table.

Each ``benchmarks/bench_*.py`` module exposes ``run() -> list[dict]``; a row has at least
``benchmark``, ``sealpod``, ``baseline``, ``ratio`` and optionally ``bar`` and ``unit``. Every
benchmark runs its baseline side by side in the same run. Results also go to
``benchmarks/results/latest.json``.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _modules(names: list[str]) -> list[str]:
    found = sorted(p.stem for p in HERE.glob("bench_*.py"))
    if not names:
        return found
    unknown = [n for n in names if f"bench_{n}" not in found and n not in found]
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(unknown)}; have {', '.join(found)}")
    return [n if n.startswith("bench_") else f"bench_{n}" for n in names]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    return "" if value is None else str(value)


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(HERE))
    rows: list[dict[str, Any]] = []
    for name in _modules(argv):
        started = time.perf_counter()
        print(f"running {name} ...", file=sys.stderr)
        module = importlib.import_module(name)
        for row in module.run():
            row.setdefault("module", name)
            rows.append(row)
        print(f"  {name}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    print("| benchmark | sealpod | baseline | ratio | bar |")
    print("|---|---|---|---|---|")
    for row in rows:
        unit = f" {row['unit']}" if row.get("unit") else ""
        print(
            f"| {row['benchmark']} | {_fmt(row.get('sealpod'))}{unit} | "
            f"{_fmt(row.get('baseline'))}{unit if row.get('baseline') is not None else ''} | "
            f"{_fmt(row.get('ratio'))} | {row.get('bar', '')} |"
        )
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "latest.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
