"""Crash safety: a writer killed with SIGKILL at random moments leaves old or new state.

A child process runs transactions in a loop; each writes records ``a`` and ``b`` (equal, of a
size that varies with the counter so records span pages) and the ``counter``. The parent kills
it at a random moment, reopens the store (full integrity check included) and checks that
``a == b == payload(counter)``, that the state version moved exactly with the counter, and that
the counter never went back.
"""

from __future__ import annotations

import hashlib
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from sealpod.store import open_store

KEY = bytes(range(32))

_CHILD = r"""
import hashlib, sys
from sealpod.store import open_store

def payload(n):
    return hashlib.sha256(str(n).encode()).hexdigest().encode() * (1 + n % 97)

store = open_store(sys.argv[1], bytes.fromhex(sys.argv[2]), verify=False)
sys.stdout.write("ready\n")
sys.stdout.flush()
while True:
    with store.transaction() as tx:
        n = int(tx.get("crash", "counter")) + 1
        tx.put("crash", "a", payload(n))
        tx.put("crash", "b", payload(n))
        tx.put("crash", "counter", str(n).encode())
"""


def payload(n: int) -> bytes:
    return hashlib.sha256(str(n).encode()).hexdigest().encode() * (1 + n % 97)


def _initialise(url: str) -> int:
    with open_store(url, KEY) as store, store.transaction() as tx:
        tx.put("crash", "counter", b"0")
        tx.put("crash", "a", payload(0))
        tx.put("crash", "b", payload(0))
        return tx.version


def _check(url: str, base_version: int, previous: int) -> int:
    with open_store(url, KEY) as store:  # verify_integrity runs here
        counter = int(store.get("crash", "counter") or b"-1")
        assert counter >= previous, "a committed transaction was lost"
        assert store.get("crash", "a") == payload(counter)
        assert store.get("crash", "b") == payload(counter)
        assert store.version == base_version + counter
    return counter


def _run_child(url: str, rng: random.Random) -> None:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(sys.path)
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, url, KEY.hex()],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environment,
    )
    try:
        assert child.stdout is not None
        ready, _, _ = select.select([child.stdout], [], [], 30)
        assert ready, "the child did not start"
        line = child.stdout.readline()
        assert line == b"ready\n", line + (child.stderr.read() if child.stderr else b"")
        time.sleep(rng.uniform(0.0, 0.25))
        assert child.poll() is None, child.stderr.read() if child.stderr else b""
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        if child.stdout:
            child.stdout.close()
        if child.stderr:
            child.stderr.close()


def crash_rounds(url: str, *, seconds: float, seed: int) -> tuple[int, int]:
    """Kill writers for ``seconds``; return (rounds, final counter)."""
    rng = random.Random(seed)
    base_version = _initialise(url)
    counter, rounds = 0, 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        _run_child(url, rng)
        counter = _check(url, base_version, counter)
        rounds += 1
    return rounds, counter


def test_sqlite_store_survives_sigkill_during_transactions(tmp_path: Path) -> None:
    seed = random.SystemRandom().randrange(2**32)
    rounds, counter = crash_rounds(f"sqlite://{tmp_path / 'state.db'}", seconds=10, seed=seed)
    assert rounds >= 5, f"only {rounds} rounds (seed {seed})"
    assert counter > rounds, f"the writer made too little progress (seed {seed})"
