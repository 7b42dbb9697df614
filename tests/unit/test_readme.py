"""The README's manifest example is a valid manifest (with its placeholders filled in)."""

from __future__ import annotations

import json
from pathlib import Path

from sealpod.manifest import load_manifest

_REPO = Path(__file__).resolve().parents[2]
_DATA = _REPO / "tests" / "data" / "manifests"


def test_readme_manifest_example_is_valid() -> None:
    readme = (_REPO / "README.md").read_text()
    start = readme.index("```yaml\nversion: 1") + len("```yaml\n")
    example = readme[start : readme.index("```", start)]
    filled = (
        example.replace('"<64 hex>"', json.dumps("ab" * 32))
        .replace('"-----BEGIN CERTIFICATE-----…"', json.dumps((_DATA / "alice.crt").read_text()))
        .replace(
            '"-----BEGIN PUBLIC KEY-----…"',
            json.dumps((_DATA / "recovery-rsa2048.pub").read_text()),
        )
    )
    manifest = load_manifest(filled)
    assert set(manifest.services) == {"web"}
    assert manifest.policy.allow_simulation is True
