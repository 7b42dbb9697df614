"""The simulated platform's JSON files are read strictly (no pydantic on the run path).

Each test edits one field of a real platform's file the way a corrupted or hand-edited file
would look and expects the platform to refuse to load it (or its collateral).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from sealpod.errors import ConfigError
from sealpod.tee import SimulatedPlatform

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z


@pytest.fixture
def platform(tmp_path: Path) -> SimulatedPlatform:
    return SimulatedPlatform.init(tmp_path / "platform", now=T0)


def _edit(path: Path, name: str, value: Any) -> None:
    document = json.loads(path.read_bytes())
    if value is _DROP:
        del document[name]
    else:
        document[name] = value
    path.write_text(json.dumps(document))


_DROP = object()


def test_written_files_load_back_unchanged(platform: SimulatedPlatform) -> None:
    directory = platform.directory
    before = {n: (directory / n).read_bytes() for n in ("platform.json", "collateral.json")}
    loaded = SimulatedPlatform.load(directory)
    assert loaded.collateral() == json.loads(before["collateral.json"])
    document = json.loads(before["platform.json"])
    assert document["format"] == "sealpod-sim-platform/1"
    assert re.fullmatch(r"[0-9a-f]{32}", document["qe_id"])


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("qe_svn", 0x10000),
        ("qe_svn", True),
        ("qe_svn", "3"),
        ("created_at", -1),
        ("collateral_validity_seconds", 0),
        ("qe_id", "AB" * 16),
        ("qe_mr_signer", "0" * 63),
        ("qe_mr_enclave", "0" * 64 + "\n"),
        ("format", "sealpod-sim-platform/2"),
        ("unexpected", 1),
        ("tcb_evaluation_data_number", _DROP),
    ],
)
def test_invalid_platform_json_field_is_refused(
    platform: SimulatedPlatform, name: str, value: Any
) -> None:
    _edit(platform.directory / "platform.json", name, value)
    with pytest.raises(ConfigError, match=r"platform\.json"):
        SimulatedPlatform.load(platform.directory)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("pck_crl", "abc"),
        ("root_ca_crl", "ZZ"),
        ("tcb_info_signature", "00" * 63),
        ("qe_identity_signature", "00" * 65),
        ("tcb_info", 5),
        ("extra", "x"),
        ("qe_identity", _DROP),
    ],
)
def test_invalid_collateral_json_field_is_refused(
    platform: SimulatedPlatform, name: str, value: Any
) -> None:
    _edit(platform.directory / "collateral.json", name, value)
    loaded = SimulatedPlatform.load(platform.directory)
    with pytest.raises(ConfigError, match="collateral --renew"):
        loaded.collateral()
