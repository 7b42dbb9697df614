"""AppraisalPolicy: loading, validation, and each appraisal rule on hand-made verified evidence."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from sealpod.attestation.policy import AppraisalPolicy
from sealpod.attestation.verify import VerifiedEvidence
from sealpod.errors import ConfigError, VerificationError

MRENCLAVE = bytes(range(32))
MRSIGNER = bytes(range(32, 64))
MRTD = bytes(range(48))
REPORT_DATA = b"nonce".ljust(64, b"\0")


def _sgx(**changes: Any) -> VerifiedEvidence:
    evidence = VerifiedEvidence(
        status="UpToDate",
        advisory_ids=(),
        tee="sgx",
        report_data=REPORT_DATA,
        debug=False,
        fmspc="00A067110000",
        simulated=False,
        verified_at=1_700_000_000,
        trust_root_sha256=b"\0" * 32,
        mr_enclave=MRENCLAVE,
        mr_signer=MRSIGNER,
        isv_prod_id=7,
        isv_svn=3,
    )
    return dataclasses.replace(evidence, **changes)


def _tdx(**changes: Any) -> VerifiedEvidence:
    evidence = VerifiedEvidence(
        status="UpToDate",
        advisory_ids=(),
        tee="tdx",
        report_data=REPORT_DATA,
        debug=False,
        fmspc="B0C06F000000",
        simulated=False,
        verified_at=1_700_000_000,
        trust_root_sha256=b"\0" * 32,
        mr_td=MRTD,
        rtmrs=(b"\1" * 48, b"\2" * 48, b"\3" * 48, b"\4" * 48),
    )
    return dataclasses.replace(evidence, **changes)


def _refused(policy: AppraisalPolicy, evidence: VerifiedEvidence, reason: str) -> None:
    with pytest.raises(VerificationError) as info:
        policy.appraise(evidence)
    assert info.value.reason == reason


# -- defaults and loading ----------------------------------------------------------------------


def test_defaults_are_the_safe_ones() -> None:
    policy = AppraisalPolicy()
    assert policy.accepted_tcb_statuses == ("UpToDate", "SWHardeningNeeded")
    assert policy.allow_debug is False
    assert policy.allow_simulation is False
    policy.appraise(_sgx())
    policy.appraise(_sgx(status="SWHardeningNeeded"))


def test_policy_is_frozen() -> None:
    policy = AppraisalPolicy()
    with pytest.raises(ValueError, match="frozen"):
        policy.allow_simulation = True  # type: ignore[misc]


def test_load_yaml_and_json(tmp_path: Path) -> None:
    yaml_file = tmp_path / "policy.yaml"
    yaml_file.write_text(
        "accepted_tcb_statuses: [UpToDate]\n"
        f"mrenclave: ['{MRENCLAVE.hex()}']\n"
        f"mrsigner: '{MRSIGNER.hex().upper()}'\n"
        "isv_prod_id: 7\nmin_isv_svn: 2\n"
        "rejected_advisories: [intel-sa-00615]\n"
    )
    policy = AppraisalPolicy.from_file(yaml_file)
    assert policy.mrenclave == (MRENCLAVE,)
    assert policy.mrsigner == MRSIGNER
    assert policy.rejected_advisories == ("INTEL-SA-00615",)
    json_file = tmp_path / "policy.json"
    json_file.write_text(json.dumps(policy.to_dict()))
    assert AppraisalPolicy.from_file(json_file) == policy


def test_empty_policy_file_is_the_default(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert AppraisalPolicy.from_file(path) == AppraisalPolicy()


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({"allow_simulaton": True}, "allow_simulaton"),
        ({"accepted_tcb_statuses": ["UptoDate"]}, "accepted_tcb_statuses"),
        ({"accepted_tcb_statuses": ["Revoked"]}, "accepted_tcb_statuses"),
        ({"mrenclave": ["00" * 31]}, "mrenclave"),
        ({"mrenclave": ["zz" * 32]}, "mrenclave"),
        ({"mrenclave": []}, "mrenclave"),
        ({"mrsigner": "00" * 32}, "isv_prod_id"),
        ({"isv_prod_id": 1}, "mrsigner"),
        ({"isv_prod_id": 70000, "mrsigner": "00" * 32}, "isv_prod_id"),
        ({"mr_td": "00" * 32}, "mr_td"),
        ({"expected_report_data": "00" * 32}, "expected_report_data"),
        ({"mrenclave": ["00" * 32], "mr_td": "00" * 48}, "TDX"),
        ({"tee": "sgx", "rtmr0": "00" * 48}, "tee"),
    ],
)
def test_invalid_policy_names_the_field(document: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        AppraisalPolicy.from_mapping(document)
    assert field in str(info.value)


def test_unreadable_policy_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        AppraisalPolicy.from_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ConfigError):
        AppraisalPolicy.from_file(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n")
    with pytest.raises(ConfigError):
        AppraisalPolicy.from_file(listed)


# -- appraisal rules -----------------------------------------------------------------------------


def test_status_not_accepted_is_refused() -> None:
    _refused(AppraisalPolicy(), _sgx(status="OutOfDate"), "tcb_status_not_accepted")
    AppraisalPolicy(accepted_tcb_statuses=("OutOfDate",)).appraise(_sgx(status="OutOfDate"))


def test_revoked_is_always_refused() -> None:
    _refused(AppraisalPolicy(), _sgx(status="Revoked"), "revoked")


def test_rejected_advisory_is_refused() -> None:
    policy = AppraisalPolicy(rejected_advisories=("INTEL-SA-00615",))
    _refused(policy, _sgx(advisory_ids=("INTEL-SA-00289", "INTEL-SA-00615")), "advisory_rejected")
    policy.appraise(_sgx(advisory_ids=("INTEL-SA-00289",)))


def test_wrong_mrenclave_is_refused() -> None:
    policy = AppraisalPolicy(mrenclave=(b"\xff" * 32, MRENCLAVE))
    policy.appraise(_sgx())
    _refused(policy, _sgx(mr_enclave=b"\xee" * 32), "mrenclave_mismatch")


def test_wrong_mrsigner_is_refused() -> None:
    policy = AppraisalPolicy(mrsigner=MRSIGNER, isv_prod_id=7, min_isv_svn=3)
    policy.appraise(_sgx())
    _refused(policy, _sgx(mr_signer=MRENCLAVE), "mrsigner_mismatch")


def test_wrong_isv_prod_id_is_refused() -> None:
    policy = AppraisalPolicy(mrsigner=MRSIGNER, isv_prod_id=8)
    _refused(policy, _sgx(), "isv_prod_id_mismatch")


def test_isv_svn_below_minimum_is_refused() -> None:
    policy = AppraisalPolicy(mrsigner=MRSIGNER, isv_prod_id=7, min_isv_svn=4)
    _refused(policy, _sgx(isv_svn=3), "isv_svn_too_low")
    policy.appraise(_sgx(isv_svn=4))


def test_debug_enclave_is_refused_by_default() -> None:
    _refused(AppraisalPolicy(), _sgx(debug=True), "debug_not_allowed")
    _refused(AppraisalPolicy(), _tdx(debug=True), "debug_not_allowed")


def test_allow_debug_warns_each_time(caplog: pytest.LogCaptureFixture) -> None:
    policy = AppraisalPolicy(allow_debug=True)
    with caplog.at_level(logging.WARNING, logger="sealpod.attestation.policy"):
        policy.appraise(_sgx(debug=True))
        policy.appraise(_sgx(debug=True))
    assert sum("DEBUG" in record.message for record in caplog.records) == 2


def test_report_data_mismatch_is_refused() -> None:
    policy = AppraisalPolicy(expected_report_data=REPORT_DATA)
    policy.appraise(_sgx())
    policy.appraise(_tdx())
    _refused(policy, _sgx(report_data=b"other".ljust(64, b"\0")), "report_data_mismatch")


def test_simulated_evidence_is_refused_by_default() -> None:
    _refused(AppraisalPolicy(), _sgx(simulated=True), "simulation_not_allowed")


def test_simulation_refusal_comes_before_everything_else() -> None:
    policy = AppraisalPolicy(mrenclave=(b"\xff" * 32,))
    _refused(policy, _sgx(simulated=True, status="OutOfDate"), "simulation_not_allowed")


def test_allow_simulation_warns_every_time(caplog: pytest.LogCaptureFixture) -> None:
    policy = AppraisalPolicy(allow_simulation=True)
    with caplog.at_level(logging.WARNING, logger="sealpod.attestation.policy"):
        for _ in range(3):
            policy.appraise(_sgx(simulated=True))
        policy.appraise(_sgx())
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 4
    assert sum("SIMULATED" in r.message for r in warnings) == 3


def test_tdx_identity_rules() -> None:
    policy = AppraisalPolicy(mr_td=MRTD, rtmr0=b"\1" * 48, rtmr3=b"\4" * 48)
    policy.appraise(_tdx())
    _refused(policy, _tdx(mr_td=b"\0" * 48), "mr_td_mismatch")
    _refused(policy, _tdx(rtmrs=(b"\1" * 48, b"\2" * 48, b"\3" * 48, b"\5" * 48)), "rtmr_mismatch")


def test_sgx_rules_refuse_tdx_evidence_and_back() -> None:
    _refused(AppraisalPolicy(mrenclave=(MRENCLAVE,)), _tdx(), "tee_mismatch")
    _refused(AppraisalPolicy(mr_td=MRTD), _sgx(), "tee_mismatch")
    _refused(AppraisalPolicy(tee="tdx"), _sgx(), "tee_mismatch")


def test_model_copy_validates_and_rederives() -> None:
    """A copy with new identity rules must not keep the old policy's derived state."""
    base = AppraisalPolicy()
    base.appraise(_sgx())  # derives "no identity rules"
    tdx_only = base.model_copy(update={"mr_td": MRTD})
    _refused(tdx_only, _sgx(), "tee_mismatch")
    with pytest.raises(ValueError, match="mrenclave"):
        base.model_copy(update={"mrenclave": (b"short",)})
    assert base.model_copy() is base
