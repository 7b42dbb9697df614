"""Shared CLI helpers: time parsing and the byte progress bar."""

from __future__ import annotations

import pytest

import sealpod.cli._common as common
from sealpod.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "epoch"),
    [
        ("1752915678", 1752915678),
        ("2025-07-19T09:01:18Z", 1752915678),
        ("2025-07-19T09:01:18+00:00", 1752915678),
        ("2025-07-19T11:01:18+02:00", 1752915678),
        ("2025-07-19T09:01:18", 1752915678),  # naive means UTC
    ],
)
def test_parse_time_accepts_iso_8601_and_epoch(text: str, epoch: int) -> None:
    assert common.parse_time(text) == epoch


def test_parse_time_refuses_other_text() -> None:
    with pytest.raises(ConfigError, match="ISO-8601 or epoch"):
        common.parse_time("yesterday")


def test_no_progress_bar_when_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "stdout_is_terminal", lambda: False)
    with common.byte_progress("hashing", 100) as bar:
        assert bar is None


def test_progress_bar_counts_bytes_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "stdout_is_terminal", lambda: True)
    with common.byte_progress("hashing", 100) as bar:
        assert bar is not None
        bar.advance(40)
        bar.update(60, 100)
        task = bar._bar.tasks[0]
        assert (task.completed, task.total) == (60, 100)
