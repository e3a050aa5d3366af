"""Release gate: which metrics promote a model to production."""

from linesight.training.app.trainer import ReleaseGate


def test_release_gate_decides_stage() -> None:
    gate = ReleaseGate(min_defect_recall=0.9, max_false_reject_rate=0.05)
    assert gate.evaluate({"defect_recall": 0.95, "false_reject_rate": 0.01}) == ("production", [])
    stage, why = gate.evaluate({"defect_recall": 0.5, "false_reject_rate": 0.01})
    assert stage == "candidate" and "defect_recall" in why[0]
    stage, why = gate.evaluate({"defect_recall": 0.95, "false_reject_rate": 0.2})
    assert stage == "candidate" and "false_reject_rate" in why[0]
    assert gate.evaluate({})[0] == "candidate"  # missing evidence never promotes


def test_gate_from_config_values() -> None:
    gate = ReleaseGate.from_env_dict({"min_defect_recall": "0.7", "unrelated": 1})
    assert gate.min_defect_recall == 0.7 and gate.max_false_reject_rate == 0.1


def test_gate_file(tmp_path) -> None:
    import pytest

    assert ReleaseGate.load(tmp_path / "absent.yaml") == ReleaseGate()
    (tmp_path / "g.yaml").write_text("min_defect_recall: 0.95\nmax_false_reject_rate: 0.02\n")
    assert ReleaseGate.load(tmp_path / "g.yaml") == ReleaseGate(0.95, 0.02)
    (tmp_path / "bad.yaml").write_text("min_recall: 0.9\n")
    with pytest.raises(ValueError, match="unknown release gate keys"):
        ReleaseGate.load(tmp_path / "bad.yaml")
