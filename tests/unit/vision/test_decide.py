"""Qualification rules: confident class -> taxonomy disposition; anomalies and doubt -> review."""

from __future__ import annotations

import numpy as np
import pytest

from linesight.vision.decide import ANOMALY_ALONE, ANOMALY_HEAD_SHARE, decide, find_regions
from linesight.vision.model import Prediction
from linesight.vision.taxonomy import Taxonomy, TaxonomyError, bundled_taxonomy

TILE = bundled_taxonomy("magnetic_tile")


def _heat(blob: bool = True) -> np.ndarray:
    h = np.zeros((100, 200), np.float32)
    if blob:
        h[40:60, 90:130] = 2.0  # 20 x 40 px region at the centre
    return h


def _pred(
    probs: dict[str, float], defect_p: float, anomaly: float = 0.5, heat: np.ndarray | None = None
) -> Prediction:
    return Prediction(
        anomaly_score=anomaly,
        class_probs=probs,
        heatmap=_heat() if heat is None else heat,
        defect_probability=defect_p,
        defect_threshold=0.5,
    )


def test_confident_class_gets_severity_and_disposition_with_mm() -> None:
    d = decide(
        _pred({"good": 0.02, "crack": 0.95, "blowhole": 0.03}, 0.98, anomaly=2.0), TILE, px_per_mm=10.0
    )
    assert d.verdict == "defect" and d.defect_class == "crack"
    assert len(d.regions) == 1
    r = d.regions[0]
    assert r.box == (90, 40, 130, 60) and r.area_px == 800
    assert r.area_mm2 == pytest.approx(8.0)
    assert r.length_mm == pytest.approx(3.9, abs=0.2)
    assert "center" in r.named_regions
    assert d.severity == "critical" and d.disposition == "reject"


def test_without_px_per_mm_areas_stay_in_pixels() -> None:
    d = decide(_pred({"good": 0.02, "blowhole": 0.98}, 0.98, anomaly=2.0), TILE)
    assert d.regions[0].area_mm2 is None
    assert d.severity == "major"  # area_px 800 >= 400 rule
    assert d.disposition == "reject"


def test_anomaly_without_confident_class_is_review_never_reject() -> None:
    d = decide(_pred({"good": 0.1, "crack": 0.05, "blowhole": 0.05}, 0.9, anomaly=3.0), TILE)
    assert d.verdict == "review" and d.disposition == "review"
    d2 = decide(_pred({"good": 0.9, "crack": 0.05}, 0.1, anomaly=1.8), TILE)
    assert d2.verdict == "review" and d2.disposition != "reject"
    assert "anomaly" in (d2.review_reason or "")


def test_low_confidence_and_audit_flag_go_to_review() -> None:
    d = decide(_pred({"good": 0.2, "crack": 0.6, "break": 0.2}, 0.8), TILE)
    assert d.verdict == "review"
    assert (
        d.review_reason == "looks like crack but confidence 0.60 is below the automatic-decision band (0.85)"
    )
    d2 = decide(_pred({"good": 0.01, "crack": 0.99}, 0.99), TILE, audit_passed=False)
    assert d2.verdict == "review" and "audit" in (d2.review_reason or "")
    d3 = decide(_pred({"good": 0.99, "crack": 0.01}, 0.01, heat=_heat(False)), TILE, audit_passed=False)
    assert d3.verdict == "review"
    d4 = decide(_pred({"good": 0.62, "crack": 0.38}, 0.38, heat=_heat(False)), TILE)
    assert d4.verdict == "review" and d4.disposition == "review" and d4.defect_class is None
    assert d4.review_reason == "looks good but confidence 0.62 is below the auto-pass band (0.85)"


def test_clean_pass() -> None:
    d = decide(_pred({"good": 0.99, "crack": 0.01}, 0.01, anomaly=0.4, heat=_heat(False)), TILE)
    assert d.verdict == "pass" and d.disposition == "pass" and d.regions == []
    assert d.confidence == pytest.approx(0.99)


def test_unknown_class_escalates_or_raises() -> None:
    d = decide(_pred({"good": 0.01, "scratch": 0.99}, 0.99), TILE)
    assert d.verdict == "review" and d.disposition == "escalate"
    strict = TILE.from_dict({**TILE.to_dict(), "unknown_class": {"disposition": "error"}})
    with pytest.raises(TaxonomyError, match="scratch"):
        decide(_pred({"good": 0.01, "scratch": 0.99}, 0.99), strict)


def test_find_regions_orders_by_area_and_rejects_bad_input() -> None:
    h = np.zeros((50, 50), np.float32)
    h[5:10, 5:10] = 1.5
    h[20:40, 20:40] = 1.2
    regs = find_regions(h, 1.0)
    assert [r.area_px for r in regs] == [400, 25]
    assert regs[1].peak == pytest.approx(1.5)
    with pytest.raises(ValueError):
        find_regions(np.zeros(5, np.float32), 1.0)
    with pytest.raises(ValueError, match="px_per_mm"):
        decide(_pred({"good": 1.0}, 0.0), TILE, px_per_mm=0.0)


def test_provisional_class_goes_to_review_with_its_name() -> None:
    p = _pred({"good": 0.01, "fray": 0.97, "crack": 0.02}, 0.99, anomaly=2.0)
    p.provisional_classes = ("fray",)
    d = decide(p, TILE)
    assert d.verdict == "review" and d.defect_class == "fray" and d.disposition == "review"
    # without recorded counts (an export from before they were) the reason still names the class
    assert d.review_reason == "fray: too few training examples for automatic decisions; sent to review"
    # the count the model was trained on, not what the dataset shows before the holdout split
    p.provisional_examples, p.min_examples = {"fray": 26}, 30
    d = decide(p, TILE)
    assert d.verdict == "review" and d.defect_class == "fray" and d.disposition == "review"
    assert (
        d.review_reason
        == "fray: only 26 training examples (30 needed for automatic decisions); sent to review"
    )


def test_region_length_and_width_are_the_rotated_shapes_axes() -> None:
    """A rotated ellipse of semi-axes 50 and 12 px measures its axes (the pixels its outline
    covers: 2a + 1 and 2b + 1) to within a pixel or two, whatever the rotation."""
    import cv2
    import numpy as np

    from linesight.vision.decide import find_regions

    heat = np.zeros((192, 192), np.float32)
    cv2.ellipse(heat, (90, 90), (50, 12), 30, 0, 360, (2.0,), -1)
    (region,) = find_regions(heat, 1.0, px_per_mm=2.0)
    assert region.length_mm is not None and region.width_mm is not None
    assert region.length_mm * 2.0 == pytest.approx(101.0, abs=1.5)
    assert region.width_mm * 2.0 == pytest.approx(25.0, abs=1.5)
    assert region.angle_deg == pytest.approx(30.0, abs=1.0)
    assert region.peak == 2.0


def test_pixel_length_rules_and_a_monitor_tier() -> None:
    doc = TILE.to_dict()
    doc["severities"] = ["monitor", "minor", "major", "critical"]
    fray = next(c for c in doc["classes"] if c["name"] == "fray")
    fray["default_severity"] = "monitor"
    fray["severity_rules"] = [{"severity": "major", "min_length_px": 39}]
    doc["disposition"]["fray"]["monitor"] = "pass"
    tax = Taxonomy.from_dict(doc)
    long_blob = decide(_pred({"good": 0.02, "fray": 0.98}, 0.98, anomaly=2.0), tax)  # 40 px long
    assert long_blob.regions[0].length_px == pytest.approx(40, abs=1)
    assert (long_blob.severity, long_blob.disposition) == ("major", "reject")
    short = np.zeros((100, 200), np.float32)
    short[40:60, 90:110] = 2.0  # 20 px long: no rule matches, the class's monitor tier
    d = decide(_pred({"good": 0.02, "fray": 0.98}, 0.98, anomaly=2.0, heat=short), tax)
    assert (d.severity, d.disposition) == ("monitor", "pass")


def test_patchcore_just_over_threshold_does_not_outweigh_a_head_that_calls_the_frame_good() -> None:
    def pred(defect_p: float, anomaly: float) -> Prediction:
        p = _pred({"good": 1 - defect_p, "crack": defect_p}, defect_p, anomaly=anomaly, heat=_heat(False))
        p.review_band = (0.5, 0.5)  # a fitted band: only the anomaly rule can send it to review
        return p

    assert decide(pred(0.05, 1.1), TILE).verdict == "pass"  # head at 0.1x the operating point
    over = decide(pred(0.05, ANOMALY_ALONE), TILE)  # far enough over: PatchCore alone decides
    assert over.verdict == "review" and "anomaly" in (over.review_reason or "")
    doubt = decide(pred(ANOMALY_HEAD_SHARE * 0.5, 1.05), TILE)  # the head itself has doubts
    assert doubt.verdict == "review" and "anomaly" in (doubt.review_reason or "")
    assert decide(pred(0.05, 1.1), TILE, anomaly_alone=1.0).verdict == "review"
    assert decide(pred(0.05, 0.9), TILE).verdict == "pass"
