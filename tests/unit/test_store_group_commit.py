"""Group commit in the sealed store, and SQLite writers in several processes.

``SealedStateStore.transact`` runs the bodies that queue up behind a commit as one group (one
database transaction): each body must still be atomic on its own, see the writes of the bodies
before it, and count as one state version. Worker processes share a SQLite file through its
cross-process writer lock: no update may be lost.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from sealpod.store import SealedStateStore, Transaction, open_store

SEALING_KEY = bytes(range(16))


class BoomError(Exception):
    pass


def _increment(tx: Transaction) -> int:
    value = int(tx.get("c", "n") or b"0") + 1
    tx.put("c", "n", str(value).encode())
    return value


def _wait_for_queue(store: SealedStateStore, length: int) -> None:
    deadline = time.monotonic() + 10
    while len(store._queue) < length:  # the bodies waiting behind the running group
        if time.monotonic() > deadline:
            pytest.fail(f"{length} transactions never queued up")
        time.sleep(0.001)


def test_failed_body_in_a_group_writes_nothing_and_the_others_commit(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path / 'state.db'}", SEALING_KEY) as store:
        store.transact(lambda tx: tx.put("c", "n", b"0"))
        base = store.version
        release = threading.Event()
        results: dict[str, Any] = {}

        def blocking(tx: Transaction) -> int:
            release.wait(10)
            return _increment(tx)

        def failing(tx: Transaction) -> None:
            _increment(tx)
            tx.put("c", "failed", b"written by a failing body")
            raise BoomError

        def run(name: str, body: Any) -> None:
            try:
                results[name] = store.transact(body)
            except BoomError as exc:
                results[name] = exc

        first = threading.Thread(target=run, args=("first", blocking))
        first.start()
        _wait_for_queue(store, 0)
        time.sleep(0.05)  # the first body now runs (and blocks) as the group leader
        others = [
            threading.Thread(target=run, args=(name, body))
            for name, body in (("second", _increment), ("boom", failing), ("third", _increment))
        ]
        for thread in others:
            thread.start()
            _wait_for_queue(store, others.index(thread) + 1)
        release.set()
        for thread in (first, *others):
            thread.join(10)

        assert isinstance(results["boom"], BoomError)
        # Run in queue order, each seeing the committed writes of those before it.
        assert (results["first"], results["second"], results["third"]) == (1, 2, 3)
        assert store.get("c", "n") == b"3"
        assert store.get("c", "failed") is None
        assert store.version == base + 3  # one version per changing body, none for the failed
        store.verify_integrity()


def test_nested_transaction_in_a_body_is_refused(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path / 'state.db'}", SEALING_KEY) as store:

        def nested(tx: Transaction) -> None:
            tx.put("c", "outer", b"1")
            store.transact(_increment)

        with pytest.raises(RuntimeError):
            store.transact(nested)
        assert store.get("c", "outer") is None
        assert store.version == 0


def _increment_many(url: str, count: int, start: Any) -> None:
    start.wait(30)
    with open_store(url, SEALING_KEY) as store:
        for _ in range(count):
            store.transact(_increment)


def test_writers_in_two_processes_lose_no_update(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    with open_store(url, SEALING_KEY) as store:
        store.transact(lambda tx: tx.put("c", "n", b"0"))
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    rounds = 25
    workers = [context.Process(target=_increment_many, args=(url, rounds, start)) for _ in range(2)]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    with open_store(url, SEALING_KEY) as store:
        assert store.get("c", "n") == str(2 * rounds).encode()
        assert store.version == 1 + 2 * rounds
        store.verify_integrity()


def test_paged_read_with_pending_writes_matches_the_merged_view(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path / 'state.db'}", SEALING_KEY) as store:
        stored = [f"k{i:02d}" for i in range(10)]

        def fill(tx: Transaction) -> None:
            for key in stored:
                tx.put("ns", key, b"v")

        store.transact(fill)

        def page(tx: Transaction) -> list[list[str]]:
            for key in ("k00", "k01", "k03"):
                tx.delete("ns", key)
            tx.put("ns", "k025", b"new")
            return [tx.keys("ns", limit=n) for n in range(1, 9)]

        pages = store.transact(page)
        # The merged view, computed here: stored minus deletions plus the new key.
        merged = sorted((set(stored) - {"k00", "k01", "k03"}) | {"k025"})
        assert pages == [merged[:n] for n in range(1, 9)]
