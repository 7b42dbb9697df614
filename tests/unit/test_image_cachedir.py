"""The default cache directory is platformdirs' user cache directory, found without it."""

from __future__ import annotations

from pathlib import Path

import platformdirs
import pytest

from sealpod.image import sealpod_cache_dir


@pytest.mark.parametrize(
    ("xdg", "home"),
    [
        (None, "/home/alice"),
        (None, "/home/alice/"),
        (None, "/"),
        ("/var/cache/xdg", "/home/alice"),
        ("/var/cache/xdg/", "/home/alice"),
        ("relative/cache", "/home/alice"),
        ("", "/home/alice"),
        ("   ", "/root"),
        (None, "relative-home"),
        (None, None),
    ],
)
def test_default_cache_dir_is_platformdirs_user_cache_dir(
    monkeypatch: pytest.MonkeyPatch, xdg: str | None, home: str | None
) -> None:
    monkeypatch.delenv("SEALPOD_CACHE_DIR", raising=False)
    for name, value in (("XDG_CACHE_HOME", xdg), ("HOME", home)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert sealpod_cache_dir() == Path(platformdirs.user_cache_dir("sealpod"))


def test_override_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SEALPOD_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", "/elsewhere")
    assert sealpod_cache_dir() == tmp_path
