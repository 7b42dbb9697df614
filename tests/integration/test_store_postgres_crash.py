"""Crash safety against PostgreSQL: writer clients killed with SIGKILL mid-transaction."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration


def _load_crash_harness() -> Any:
    path = Path(__file__).resolve().parents[1] / "unit" / "test_store_crash.py"
    name = "_sealpod_store_crash"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_postgres_store_survives_sigkill_during_transactions(postgres_url: str) -> None:
    harness = _load_crash_harness()
    seed = random.SystemRandom().randrange(2**32)
    rounds, counter = harness.crash_rounds(postgres_url, seconds=6, seed=seed)
    assert rounds >= 3, f"only {rounds} rounds (seed {seed})"
    assert counter > rounds, f"the writer made too little progress (seed {seed})"
