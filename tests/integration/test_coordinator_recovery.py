"""Recovery over real HTTPS: a coordinator whose sealing key changed (another platform) starts
in recovery, is attested through an ephemeral TLS certificate, takes k decrypted shares and
serves the old state again under the old root.
"""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from test_coordinator_server import WEB_MRENCLAVE, _audit, _backend, running_coordinator

from sealpod.coordinator import (
    RequestRefusedError,
    activate,
    pinned_client,
    submit_recovery_share,
)
from sealpod.errors import VerificationError
from sealpod.store import decrypt_recovery_share
from sealpod.tee import SimulatedPlatform

pytestmark = pytest.mark.integration

RECOVERY_KEYS = {
    name: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for name in ("r1", "r2", "r3")
}


def _manifest() -> dict[str, Any]:
    return {
        "version": 1,
        "packages": {"web": {"mrenclave": [WEB_MRENCLAVE.hex()]}},
        "services": {"web": {"package": "web", "env": {"DB_KEY": "{{ secrets.db_key | hex }}"}}},
        "secrets": {"db_key": {"type": "symmetric-key", "size": 256}},
        "recovery": {
            "keys": {
                name: key.public_key()
                .public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
                .decode()
                for name, key in RECOVERY_KEYS.items()
            },
            "threshold": 2,
        },
        "policy": {"allow_simulation": True},
    }


def test_state_is_recovered_with_k_shares_after_the_sealing_key_changed(
    tmp_path: Path,
) -> None:
    first_platform = SimulatedPlatform.init(tmp_path / "platform-a")
    with running_coordinator(tmp_path, first_platform, None) as first:
        with pinned_client(first.url, first.root_pem) as client:
            response = client.post("/api/v1/manifest", json=_manifest())
        assert response.status_code == 200, response.text
        encrypted = {
            name: base64.b64decode(share)
            for name, share in response.json()["recovery_shares"].items()
        }
        assert sorted(encrypted) == ["r1", "r2", "r3"]
        before = activate(first.url, first.root_pem, "web", "w0", _backend(first_platform))
        root_pem = first.root_pem

    shares = {
        name: decrypt_recovery_share(encrypted[name], RECOVERY_KEYS[name]) for name in encrypted
    }
    moved_platform = SimulatedPlatform.init(tmp_path / "platform-b")  # another sealing key
    with running_coordinator(tmp_path, moved_platform, None) as sealed:
        # verify_coordinator (in the harness) pinned the ephemeral certificate its quote binds.
        assert sealed.root_pem != root_pem
        with pinned_client(sealed.url, sealed.root_pem) as client:
            status = client.get("/api/v1/status").json()
            assert status["state"] == "recovery"
            assert status["recovery"]["threshold"] == 2
            assert client.get("/api/v1/manifest").json()["error"]["code"] == "recovery_mode"

        progress = submit_recovery_share(sealed.url, sealed.root_pem, shares["r1"])
        assert progress == {"threshold": 2, "received": 1, "recovered": False}
        with pytest.raises(RequestRefusedError) as duplicate:
            submit_recovery_share(sealed.url, sealed.root_pem, shares["r1"])
        assert duplicate.value.code == "duplicate_share"
        with pytest.raises(RequestRefusedError) as garbage:
            submit_recovery_share(sealed.url, sealed.root_pem, b"not a share")
        assert (garbage.value.status, garbage.value.code) == (400, "invalid_share")
        # A well-formed forgery (threshold 2, x = 1 like a genuine share) is taken, fails to
        # combine with r1, and must not stop the genuine shares from working.
        forged = b"SPRS\x01" + secrets.token_bytes(16) + bytes([2, 1]) + secrets.token_bytes(32)
        with pytest.raises(VerificationError) as failed:
            submit_recovery_share(sealed.url, sealed.root_pem, forged)
        assert failed.value.reason.startswith("recovery_share")
        done = submit_recovery_share(sealed.url, sealed.root_pem, shares["r3"])
        assert done == {"threshold": 2, "received": 3, "recovered": True}

        # TLS now presents a certificate of the old root: the old pin works again.
        with pinned_client(sealed.url, root_pem) as client:
            assert client.get("/api/v1/status").json()["state"] == "accepting-services"
        sealed.root_pem = root_pem
        after = activate(sealed.url, root_pem, "web", "w1", _backend(moved_platform))
        assert after.env["DB_KEY"] == before.env["DB_KEY"]
        assert _audit(sealed)[-2]["type"] == "state_recovered"


def test_recovery_share_is_refused_when_not_in_recovery(tmp_path: Path) -> None:
    platform = SimulatedPlatform.init(tmp_path / "platform")
    with running_coordinator(tmp_path, platform, _manifest()) as running:
        with pytest.raises(RequestRefusedError) as caught:
            submit_recovery_share(running.url, running.root_pem, b"SPRS\x01" + bytes(50))
        assert (caught.value.status, caught.value.code) == (409, "not_in_recovery")


def test_recovery_through_the_cli(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from sealpod.cli import coordinator as cli
    from sealpod.coordinator import coordinator_identity

    runner = CliRunner()
    manifest_file = tmp_path / "manifest.json"
    manifest_file.write_text(json.dumps(_manifest()))
    first_platform = SimulatedPlatform.init(tmp_path / "platform-a")
    with running_coordinator(tmp_path, first_platform, None) as first:
        root_file = tmp_path / "root.pem"
        root_file.write_bytes(first.root_pem)
        result = runner.invoke(
            cli.manifest_set,
            ["--coordinator", first.url, "--coordinator-root", str(root_file),
             str(manifest_file), "--shares-dir", str(tmp_path / "shares")],
        )  # fmt: skip
        assert result.exit_code == 0, result.exception
        assert sorted(p.name for p in (tmp_path / "shares").iterdir()) == [
            "r1.share", "r2.share", "r3.share",
        ]  # fmt: skip
    moved = SimulatedPlatform.init(tmp_path / "platform-b")
    for name in ("r1", "r2", "r3"):
        key_file = tmp_path / f"{name}.key"
        key_file.write_bytes(
            RECOVERY_KEYS[name].private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    with running_coordinator(tmp_path, moved, None) as sealed:
        outcomes = []
        for name in ("r2", "r3"):
            result = runner.invoke(
                cli.recover_command,
                ["--coordinator", sealed.url,
                 "--expect-mrenclave", coordinator_identity().mr_enclave.hex(),
                 "--allow-simulation", "--sim-dir", str(moved.directory),
                 "--share", str(tmp_path / "shares" / f"{name}.share"),
                 "--key", str(tmp_path / f"{name}.key"), "--json"],
            )  # fmt: skip
            assert result.exit_code == 0, result.exception
            outcomes.append(json.loads(result.output)["recovered"])
        assert outcomes == [False, True]
        with pinned_client(sealed.url, root_file.read_bytes()) as client:
            assert client.get("/api/v1/status").json()["state"] == "accepting-services"
