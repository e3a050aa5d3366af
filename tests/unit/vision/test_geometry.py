"""Region measurement on shapes of known size, and the severity rules that read it."""

from __future__ import annotations

import numpy as np
import pytest

from linesight.vision.decide import Region, decide, find_regions
from linesight.vision.geometry import Zone, measure_mask, measurement_errors, reference_shapes
from linesight.vision.model import Prediction
from linesight.vision.taxonomy import Taxonomy, TaxonomyError


def test_known_shapes_measure_within_five_percent() -> None:
    rows = measurement_errors(px_per_mm=10.0)
    assert len(rows) == len(reference_shapes())
    for r in rows:
        assert abs(float(r["area_err"])) <= 0.05, r
        assert abs(float(r["length_err"])) <= 0.05, r


def test_rotation_does_not_change_the_measurement() -> None:
    shapes = {name: mask for name, mask, *_ in reference_shapes()}
    flat = measure_mask(shapes["rectangle 120x40"])
    turned = measure_mask(shapes["rectangle 120x40 @30deg"])
    assert flat.length_px == pytest.approx(120.0, abs=0.5) and flat.width_px == pytest.approx(40.0, abs=0.5)
    assert turned.length_px == pytest.approx(120.0, rel=0.02)
    assert turned.angle_deg == pytest.approx(30.0, abs=1.0)
    assert flat.area_mm2 is None  # no px/mm: no mm figures


def test_edge_and_zone_distances() -> None:
    mask = np.zeros((100, 200), bool)
    mask[40:50, 20:30] = True  # 20 px from the left border
    left = Zone.from_rect("edge_left", (0.0, 0.0, 0.05, 1.0))  # x < 10 px
    face = Zone("sealing_face", ((0.12, 0.3), (0.2, 0.3), (0.2, 0.7), (0.12, 0.7)))  # x 24-40 px
    m = measure_mask(mask, px_per_mm=2.0, zones=[left, face])
    assert m.edge_distance_px == 20.0 and m.edge_distance_mm == pytest.approx(10.0)
    assert m.zone_distance_px["edge_left"] == pytest.approx(10.0, abs=1.0)
    assert m.zone_distance_px["sealing_face"] == 0.0
    assert m.zones_touched == ("sealing_face",)
    with pytest.raises(ValueError, match="empty"):
        measure_mask(np.zeros((5, 5), bool))


def _taxonomy() -> Taxonomy:
    return Taxonomy.from_dict(
        {
            "product": "seal",
            "version": "1",
            "regions": [
                {"name": "sealing_face", "polygon": [[0.6, 0.0], [1.0, 0.0], [1.0, 1.0], [0.6, 1.0]]},
            ],
            "classes": [
                {
                    "name": "crack",
                    "default_severity": "minor",
                    "severity_rules": [
                        {"severity": "major", "min_length_mm": 3.0},
                        {"severity": "major", "min_count": 3},
                        {"severity": "critical", "region": "sealing_face", "max_region_distance_mm": 1.0},
                        {"severity": "critical", "min_width_mm": 2.0},
                        {"severity": "major", "max_edge_distance_mm": 0.5},
                    ],
                }
            ],
            "disposition": {"default": {"minor": "pass", "major": "rework", "critical": "reject"}},
        }
    )


def _decide(heat: np.ndarray, tax: Taxonomy) -> tuple[str | None, list[Region]]:
    pred = Prediction(
        anomaly_score=2.0,
        class_probs={"good": 0.01, "crack": 0.99},
        heatmap=heat,
        defect_probability=0.99,
        defect_threshold=0.5,
    )
    d = decide(pred, tax, px_per_mm=10.0)
    return d.severity, d.regions


def test_severity_rules_read_length_width_distance_and_count() -> None:
    tax = _taxonomy()
    heat = np.zeros((100, 200), np.float32)
    heat[50:52, 40:60] = 2.0  # 20 px = 2 mm long, far from everything
    sev, regs = _decide(heat, tax)
    assert sev == "minor" and regs[0].severity_reason == "default for crack"
    heat[50:52, 40:80] = 2.0  # 4 mm long
    sev, regs = _decide(heat, tax)
    assert sev == "major" and regs[0].severity_reason == "length_mm >= 3"
    assert regs[0].length_mm == pytest.approx(4.0, rel=0.05)
    heat2 = np.zeros((100, 200), np.float32)
    heat2[50:52, 105:115] = 2.0  # 1 mm long, 0.5 mm from the sealing face (x >= 120)
    sev, regs = _decide(heat2, tax)
    assert sev == "critical" and "distance to sealing_face <= 1" in regs[0].severity_reason
    assert dict(regs[0].region_distance_mm)["sealing_face"] == pytest.approx(0.5, abs=0.15)
    heat3 = np.zeros((100, 200), np.float32)
    for x in (20, 40, 60):  # three small cracks: a count rule
        heat3[50:52, x : x + 5] = 2.0
    sev, regs = _decide(heat3, tax)
    assert len(regs) == 3 and sev == "major" and regs[0].severity_reason == "count >= 3"
    heat4 = np.zeros((100, 200), np.float32)
    heat4[0:4, 40:50] = 2.0  # touches the top edge
    sev, regs = _decide(heat4, tax)
    assert regs[0].edge_distance_mm == 0.0 and sev == "major"


def test_polygon_regions_round_trip_and_validate() -> None:
    tax = _taxonomy()
    again = Taxonomy.from_dict(tax.to_dict())
    assert again.regions == tax.regions and again.regions[0].contains(0.8, 0.5)
    doc = tax.to_dict()
    doc["regions"] = [{"name": "x", "polygon": [[0.1, 0.1], [0.2, 0.2]]}]
    doc["classes"][0]["severity_rules"] = []
    with pytest.raises(TaxonomyError, match="at least 3 points"):
        Taxonomy.from_dict(doc)
    doc["regions"] = [{"name": "x", "polygon": [[0.1, 0.1], [1.2, 0.2], [0.1, 0.3]]}]
    with pytest.raises(TaxonomyError, match=r"\[0, 1\]"):
        Taxonomy.from_dict(doc)


def test_find_regions_carries_the_measured_figures() -> None:
    heat = np.zeros((100, 200), np.float32)
    heat[10:30, 100:160] = 2.0
    (r,) = find_regions(heat, 1.0, px_per_mm=10.0)
    assert (r.length_px, r.width_px) == (60.0, 20.0)
    assert r.width_mm == pytest.approx(2.0) and r.edge_distance_px == 10.0
