"""Manifest updates by M-of-N approval over real HTTPS (governance), and what they change:
mesh CA rotation with a trust bundle, secrets kept or reset, refusals audited.
"""

from __future__ import annotations

import copy
import datetime
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from test_coordinator_server import (  # the loopback harness of the main coordinator tests
    SIGNER,
    WEB_MRENCLAVE,
    Running,
    _audit,
    _backend,
    running_coordinator,
)

from sealpod.coordinator import (
    RequestRefusedError,
    activate,
    approve_update,
    cancel_update,
    fetch_manifest,
    pinned_client,
    propose_update,
    raise_package_svn,
)
from sealpod.errors import VerificationError
from sealpod.pki import verify_chain
from sealpod.tee import EnclaveIdentity, SimulatedPlatform, SimulationBackend

pytestmark = pytest.mark.integration

ALICE = ec.generate_private_key(ec.SECP256R1())
CAROL = ec.generate_private_key(ec.SECP256R1())
BOB = ec.generate_private_key(ec.SECP256R1())
SAM = ec.generate_private_key(ec.SECP256R1())


def _pem(key: ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


BASE: dict[str, Any] = {
    "version": 1,
    "packages": {
        "web": {"mrenclave": [WEB_MRENCLAVE.hex()]},
        "signed": {"mrsigner": SIGNER.hex(), "isv_prod_id": 9, "min_isv_svn": 1},
    },
    "services": {
        "sig": {"package": "signed"},
        "web": {
            "package": "web",
            "env": {
                "DB_KEY": "{{ secrets.db_key | hex }}",
                "KEEP": "{{ secrets.keep | hex }}",
            },
        },
    },
    "secrets": {
        "db_key": {"type": "symmetric-key", "size": 128},
        "keep": {"type": "symmetric-key", "size": 256},
    },
    "users": {
        "alice": {"public_key": _pem(ALICE), "roles": ["operators"]},
        "carol": {"public_key": _pem(CAROL), "roles": ["operators"]},
        "bob": {"public_key": _pem(BOB), "roles": []},
        "sam": {"public_key": _pem(SAM), "roles": ["svn-bumper"]},
    },
    "roles": {
        "operators": {"resource": "manifest", "actions": ["update"]},
        "svn-bumper": {"resource": "packages", "names": ["signed"], "actions": ["update"]},
    },
    "governance": {"update_threshold": 2},
    "policy": {"allow_simulation": True},
}


def _document(manifest: dict[str, Any]) -> bytes:
    return json.dumps(manifest).encode()


def _updated() -> dict[str, Any]:
    new = copy.deepcopy(BASE)
    new["secrets"]["db_key"]["size"] = 256  # redefined: must get a new value
    new["services"]["web"]["env"]["MODE"] = "v2"
    return new


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> SimulatedPlatform:
    return SimulatedPlatform.init(tmp_path_factory.mktemp("sim") / "platform")


@pytest.fixture
def coordinator(tmp_path: Any, platform: SimulatedPlatform) -> Iterator[Running]:
    with running_coordinator(tmp_path, platform, BASE) as running:
        yield running


def test_update_applies_after_m_approvals_and_rotates_the_mesh(coordinator: Running) -> None:
    url, root_pem = coordinator.url, coordinator.root_pem
    backend = _backend(coordinator.platform)
    before = activate(url, root_pem, "web", "old", backend)
    old_sha = fetch_manifest(url, root_pem).sha256

    proposal = propose_update(url, root_pem, _document(_updated()), user="alice", key=ALICE)
    assert (proposal.applied, proposal.approvals, proposal.threshold) == (False, ("alice",), 2)
    with pinned_client(url, root_pem) as client:
        pending = client.get("/api/v1/manifest/updates").json()["pending"]
    assert pending["id"] == proposal.id

    applied = approve_update(url, root_pem, proposal.id, user="carol", key=CAROL)
    assert applied.applied is True
    assert applied.approvals == ("alice", "carol")
    signed = fetch_manifest(url, root_pem)
    assert signed.sha256 == applied.manifest_sha256 != old_sha

    after = activate(url, root_pem, "web", "new", backend)
    assert after.env["MODE"] == "v2"
    assert len(bytes.fromhex(after.env["DB_KEY"])) == 32  # regenerated at its new size
    assert after.env["KEEP"] == before.env["KEEP"]  # unchanged definition: same value
    # The mesh CA rotated; the bundle still holds the previous one, so old and new services
    # trust each other during the rollout.
    assert after.certificate_chain[1] != before.certificate_chain[1]
    now = datetime.datetime.now(datetime.UTC)
    verify_chain(before.certificate, after.trust_bundle, after.root_certificate, now)
    verify_chain(after.certificate, after.trust_bundle, before.root_certificate, now)

    events = [e for e in _audit(coordinator) if e["type"] == "manifest_updated"]
    assert events[-1]["approvals"] == ["alice", "carol"]
    assert events[-1]["mesh_generation"] == 2
    assert events[-1]["secrets_reset"] == ["db_key"]


def test_update_approved_by_fewer_than_m_changes_nothing(coordinator: Running) -> None:
    url, root_pem = coordinator.url, coordinator.root_pem
    old_sha = fetch_manifest(url, root_pem).sha256
    proposal = propose_update(url, root_pem, _document(_updated()), user="alice", key=ALICE)
    with pytest.raises(RequestRefusedError) as twice:
        approve_update(url, root_pem, proposal.id, user="alice", key=ALICE)
    assert (twice.value.status, twice.value.code) == (409, "already_approved")
    last = _audit(coordinator)[-1]
    assert (last["type"], last["reason"]) == ("update_refused", "already_approved")
    assert fetch_manifest(url, root_pem).sha256 == old_sha
    result = activate(url, root_pem, "web", "w", _backend(coordinator.platform))
    assert "MODE" not in result.env


def test_user_without_the_update_role_cannot_propose_or_approve(coordinator: Running) -> None:
    url, root_pem = coordinator.url, coordinator.root_pem
    with pytest.raises(RequestRefusedError) as proposing:
        propose_update(url, root_pem, _document(_updated()), user="bob", key=BOB)
    assert (proposing.value.status, proposing.value.code) == (403, "permission_denied")
    proposal = propose_update(url, root_pem, _document(_updated()), user="alice", key=ALICE)
    with pytest.raises(RequestRefusedError) as approving:
        approve_update(url, root_pem, proposal.id, user="bob", key=BOB)
    assert approving.value.code == "permission_denied"
    last = _audit(coordinator)[-1]
    assert (last["type"], last["user"], last["reason"]) == (
        "update_refused",
        "bob",
        "permission_denied",
    )


def test_approval_signed_with_another_key_is_refused(coordinator: Running) -> None:
    url, root_pem = coordinator.url, coordinator.root_pem
    proposal = propose_update(url, root_pem, _document(_updated()), user="alice", key=ALICE)
    with pytest.raises(RequestRefusedError) as caught:
        approve_update(url, root_pem, proposal.id, user="carol", key=BOB)
    assert (caught.value.status, caught.value.code) == (401, "signature_invalid")
    with pinned_client(url, root_pem) as client:
        pending = client.get("/api/v1/manifest/updates").json()["pending"]
    assert pending["approvals"] == ["alice"]


def test_cancelled_update_cannot_be_approved(coordinator: Running) -> None:
    url, root_pem = coordinator.url, coordinator.root_pem
    proposal = propose_update(url, root_pem, _document(_updated()), user="alice", key=ALICE)
    other = _updated()
    other["services"]["web"]["env"]["MODE"] = "v3"
    with pytest.raises(RequestRefusedError) as pending:
        propose_update(url, root_pem, _document(other), user="carol", key=CAROL)
    assert (pending.value.status, pending.value.code) == (409, "update_pending")
    with pytest.raises(RequestRefusedError) as unchanged:
        propose_update(url, root_pem, _document(BASE), user="carol", key=CAROL)
    assert unchanged.value.code == "manifest_unchanged"
    cancel_update(url, root_pem, proposal.id, user="carol", key=CAROL)
    with pytest.raises(RequestRefusedError) as gone:
        approve_update(url, root_pem, proposal.id, user="carol", key=CAROL)
    assert (gone.value.status, gone.value.code) == (404, "no_such_update")
    with pinned_client(url, root_pem) as client:
        assert client.get("/api/v1/manifest/updates").json() == {"pending": None}


def test_invalid_update_is_refused_with_its_problems(coordinator: Running) -> None:
    broken = _updated()
    broken["services"]["web"]["env"]["X"] = "{{ secrets.nothing | hex }}"
    with pytest.raises(RequestRefusedError) as caught:
        propose_update(coordinator.url, coordinator.root_pem, _document(broken), user="alice",
                       key=ALICE)  # fmt: skip
    assert (caught.value.status, caught.value.code) == (422, "manifest_invalid")
    assert "services.web.env.X" in str(caught.value)


def test_single_approval_threshold_applies_at_once(
    tmp_path: Any, platform: SimulatedPlatform
) -> None:
    solo = copy.deepcopy(BASE)
    solo["governance"] = {"update_threshold": 1}
    with running_coordinator(tmp_path, platform, solo) as running:
        new = copy.deepcopy(solo)
        new["services"]["web"]["env"]["MODE"] = "solo"
        update = propose_update(
            running.url, running.root_pem, _document(new), user="alice", key=ALICE
        )
        assert update.applied is True
        result = activate(running.url, running.root_pem, "web", "s", _backend(platform))
        assert result.env["MODE"] == "solo"


def test_activations_during_an_update_see_one_manifest_each(coordinator: Running) -> None:
    url, root_pem = coordinator.url, coordinator.root_pem
    backend = _backend(coordinator.platform)
    proposal = propose_update(url, root_pem, _document(_updated()), user="alice", key=ALICE)
    results: list[Any] = []
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            results.append(activate(url, root_pem, "web", f"c{index}", backend))
        except BaseException as exc:  # collected and reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for thread in threads[:6]:
        thread.start()
    deadline = time.monotonic() + 30
    while len(results) + len(errors) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    approve_update(url, root_pem, proposal.id, user="carol", key=CAROL)
    for thread in threads[6:]:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert len(results) == 12
    kinds = []
    for result in results:
        mesh = result.certificate_chain[1].subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        seen = ("MODE" in result.env, len(result.env["DB_KEY"]), mesh[0].value[-1:])
        # Old manifest: no MODE, a 128-bit key, mesh generation 1; new: MODE, 256 bits, 2.
        assert seen in ((False, 32, "1"), (True, 64, "2")), seen
        kinds.append(seen[0])
    assert False in kinds and True in kinds
    _audit(coordinator)  # verifies the hash chain against the sealed head


def _signed_backend(platform: SimulatedPlatform, isv_svn: int) -> SimulationBackend:
    identity = EnclaveIdentity(
        mr_enclave=bytes(32), mr_signer=SIGNER, isv_prod_id=9, isv_svn=isv_svn
    )
    return SimulationBackend(platform, identity)


def test_package_svn_raise_shuts_out_old_enclave_versions(coordinator: Running) -> None:
    url, root_pem = coordinator.url, coordinator.root_pem
    old_version = _signed_backend(coordinator.platform, isv_svn=1)
    activate(url, root_pem, "sig", "v1", old_version)

    with pytest.raises(RequestRefusedError) as denied:
        raise_package_svn(url, root_pem, "signed", 2, user="bob", key=BOB)
    assert denied.value.code == "permission_denied"
    with pytest.raises(RequestRefusedError) as lower:
        raise_package_svn(url, root_pem, "signed", 1, user="sam", key=SAM)
    assert (lower.value.status, lower.value.code) == (409, "svn_not_raised")

    update = raise_package_svn(url, root_pem, "signed", 2, user="sam", key=SAM)
    assert update.applied is True
    assert fetch_manifest(url, root_pem).manifest["packages"]["signed"]["min_isv_svn"] == 2
    with pytest.raises(VerificationError) as refused:
        activate(url, root_pem, "sig", "v1-again", old_version)
    assert refused.value.reason == "isv_svn_too_low"
    activate(url, root_pem, "sig", "v2", _signed_backend(coordinator.platform, isv_svn=2))
    raised = [e for e in _audit(coordinator) if e["type"] == "package_svn_raised"]
    assert raised == [
        {"type": "package_svn_raised", "user": "sam", "package": "signed", "min_isv_svn": 2}
    ]


def test_update_through_the_cli(coordinator: Running, tmp_path: Any) -> None:
    from click.testing import CliRunner

    from sealpod.cli import coordinator as cli

    root_file = tmp_path / "root.pem"
    root_file.write_bytes(coordinator.root_pem)
    keys = {}
    for name, key in (("alice", ALICE), ("carol", CAROL)):
        keys[name] = tmp_path / f"{name}.key"
        keys[name].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    new_manifest = tmp_path / "new.json"
    new_manifest.write_text(json.dumps(_updated()))
    common = ["--coordinator", coordinator.url, "--coordinator-root", str(root_file)]
    runner = CliRunner()
    proposed = runner.invoke(
        cli.manifest_update,
        ["propose", *common, "--user-key", str(keys["alice"]), str(new_manifest), "--json"],
    )
    assert proposed.exit_code == 0, proposed.exception
    update = json.loads(proposed.output)
    assert (update["proposer"], update["applied"]) == ("alice", False)
    approved = runner.invoke(
        cli.manifest_update,
        ["approve", *common, "--user-key", str(keys["carol"]), update["id"], "--json"],
    )
    assert approved.exit_code == 0, approved.exception
    assert json.loads(approved.output)["applied"] is True
    verified = runner.invoke(cli.manifest_verify, [*common, str(new_manifest), "--json"])
    assert json.loads(verified.output)["verified"] is True
