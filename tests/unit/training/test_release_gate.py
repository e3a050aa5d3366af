"""Release gates: per-severity thresholds on holdout figures decide eligibility, never the stage;
the holdout evaluation and the gate report (JSON and self-contained HTML)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from linesight.training.app.gates import (
    GateConfigError,
    HoldoutCase,
    ReleaseGate,
    evaluate_holdout,
    gate_report,
    render_html,
    thumbnail,
)


def test_passing_the_gate_makes_a_model_eligible_never_production() -> None:
    gate = ReleaseGate(min_defect_recall=0.9, max_false_reject_rate=0.05)
    assert gate.evaluate({"defect_recall": 0.95, "false_reject_rate": 0.01}) == ("candidate", [])
    stage, why = gate.evaluate({"defect_recall": 0.5, "false_reject_rate": 0.01})
    assert stage == "candidate" and why == ["defect_recall 0.5 < 0.9"]
    stage, why = gate.evaluate({"defect_recall": 0.95, "false_reject_rate": 0.2})
    assert why == ["false_reject_rate 0.2 > 0.05"]
    assert len(gate.failures({})) == 2  # missing evidence is never a pass


def test_per_severity_class_review_and_calibration_checks() -> None:
    gate = ReleaseGate(
        min_defect_recall=0.8, max_false_reject_rate=0.02, min_recall={"critical": 0.99, "major": 0.95},
        min_class_recall={"crack": 0.9}, max_review_rate=0.1, max_ece=0.05,
    )  # fmt: skip
    metrics = {
        "defect_recall": 0.97, "false_reject_rate": 0.01, "recall/severity/critical": 1.0,
        "recall/severity/major": 0.9, "recall/class/crack": 0.95, "review_rate": 0.2, "ece": 0.01,
    }  # fmt: skip
    assert gate.failures(metrics) == ["recall[major] 0.9 < 0.95", "review_rate 0.2 > 0.1"]
    del metrics["recall/severity/critical"]  # no critical defect in the holdout: not shown, not passed
    assert "recall[critical] not measured on the holdout (needs >= 0.99)" in gate.failures(metrics)
    names = [c["name"] for c in gate.checks(metrics)]
    assert names == ["defect_recall", "false_reject_rate", "recall[critical]", "recall[major]",
                     "recall[crack]", "review_rate", "ece"]  # fmt: skip


def test_gate_documents_round_trip_and_bad_ones_are_named(tmp_path: Path) -> None:
    gate = ReleaseGate.from_yaml("min_recall: {critical: 0.99, major: 0.95}\nmax_false_reject_rate: 0.02\n")
    assert gate.min_recall == {"critical": 0.99, "major": 0.95} and gate.max_false_reject_rate == 0.02
    assert ReleaseGate.from_yaml(gate.to_yaml()) == gate
    assert ReleaseGate.load(tmp_path / "absent.yaml") == ReleaseGate()
    (tmp_path / "g.yaml").write_text("min_defect_recall: 0.95\nmax_false_reject_rate: 0.02\n")
    assert ReleaseGate.load(tmp_path / "g.yaml") == ReleaseGate(0.95, 0.02)
    for doc, match in [
        ("min_recal: {critical: 1}", "unknown release gate keys"),
        ("min_recall: 0.9", "must map names"),
        ("max_false_reject_rate: -0.1", ">= 0"),
        ("max_false_reject_rate: .nan", ">= 0"),
        ("min_recall: {critical: yes}", "expected a number"),
        ("[1, 2]", "must be a mapping"),
        ("a: [", "not YAML"),
    ]:
        with pytest.raises(GateConfigError, match=match):
            ReleaseGate.from_yaml(doc)
    assert ReleaseGate.from_env_dict({"min_defect_recall": "0.7", "unrelated": 1}).min_defect_recall == 0.7


def _case(name: str, label: str, severity: str, flagged: bool, predicted: str, p: float) -> HoldoutCase:
    conf = p if flagged else 1 - p
    return HoldoutCase(name, label, severity, flagged, predicted, p, conf, review=conf < 0.85)


def test_holdout_evaluation_per_class_and_severity_with_evidence() -> None:
    img = (np.arange(64 * 64) % 251).astype(np.uint8).reshape(64, 64)
    cases = [
        _case("g1", "good", "", False, "good", 0.05),
        _case("g2", "good", "", False, "good", 0.1),
        _case("g3", "good", "", True, "scratch", 0.7),  # a false reject
        _case("g4", "good", "", False, "good", 0.2),
        _case("c1", "crack", "critical", True, "crack", 0.99),
        _case("c2", "crack", "critical", True, "scratch", 0.9),  # caught, wrong class
        _case("s1", "scratch", "major", True, "scratch", 0.95),
        _case("s2", "scratch", "major", False, "good", 0.3),  # an escape
    ]
    ev = evaluate_holdout(cases)
    m = ev["metrics"]
    assert m["defect_recall"] == 0.75 and m["false_reject_rate"] == 0.25
    assert (m["escapes"], m["false_rejects"]) == (1.0, 1.0)
    assert m["recall/severity/critical"] == 1.0 and m["recall/severity/major"] == 0.5
    assert m["recall/class/crack"] == 1.0 and m["precision/class/crack"] == 1.0
    assert m["precision/class/scratch"] == pytest.approx(1 / 3)
    assert m["review_rate"] == pytest.approx(3 / 8)  # confidences 0.7, 0.8 (s2: 0.7) and g4 0.8
    assert 0.0 <= m["ece"] <= 1.0
    assert ev["per_severity"]["major"] == {"support": 2, "recall": 0.5, "escapes": 1}
    assert ["crack", "scratch", 1] in ev["confusion_pairs"]
    assert ["good", "scratch", 1] in ev["confusion_pairs"]
    assert ev["curves"]["roc"]["fpr"] and ev["curves"]["pr"]["recall"]
    assert [w["image"] for w in ev["worst_misses"]] == ["s2", "g3"]
    ev["worst_misses"][0]["thumbnail"] = thumbnail(img, np.ones((64, 64), np.float32))

    gate = ReleaseGate(min_recall={"critical": 0.99, "major": 0.95}, max_false_reject_rate=0.02)
    report = gate_report(gate, ev, model_version="m1", product="tile", gate_version=3)
    assert not report["passed"] and report["gate_version"] == 3
    assert report["failures"] == [
        "defect_recall 0.75 < 0.8", "false_reject_rate 0.25 > 0.02", "recall[major] 0.5 < 0.95",
    ]  # fmt: skip
    assert "thumbnail" not in json.dumps(report["worst_misses"])  # the JSON stays small
    page = render_html(report, ev)
    assert page.startswith("<!doctype html>") and "NOT eligible" in page
    assert page.count("data:image/png;base64,") >= 3  # curves, confusion matrix, a worst miss
    assert "recall[major]" in page and "src='http" not in page  # self-contained


def test_report_from_registry_figures_when_the_model_carries_no_evaluation() -> None:
    report = gate_report(
        ReleaseGate(), {}, model_version="old", product="p", gate_version=0,
        metrics={"defect_recall": 0.9, "false_reject_rate": 0.05},
    )  # fmt: skip
    assert report["passed"] and report["failures"] == []
    assert "ELIGIBLE" in render_html(report, {})
