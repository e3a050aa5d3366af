"""Taxonomy schema: bundled examples load, round-trip, and bad documents fail with clear errors."""

from __future__ import annotations

import pytest
import yaml

from linesight.vision.taxonomy import Taxonomy, TaxonomyError, bundled_taxonomy


def _doc() -> dict:
    return yaml.safe_load(bundled_taxonomy("magnetic_tile").to_yaml())


def test_bundled_taxonomies_load_and_round_trip() -> None:
    tile = bundled_taxonomy("magnetic_tile")
    assert tile.class_names == ["blowhole", "break", "crack", "fray", "uneven"]
    assert Taxonomy.from_yaml(tile.to_yaml()) == tile
    assert bundled_taxonomy("default").class_names == ["defect"]
    # directional classes rotate only within a limited range
    assert tile.get("fray").augmentation.rotation == "limited"
    assert tile.get("crack").augmentation.rotation == "full"


def test_severity_rules_use_area_length_and_named_regions() -> None:
    tile = bundled_taxonomy("magnetic_tile")
    assert tile.severity_for("blowhole", area_px=50) == "minor"
    assert tile.severity_for("blowhole", area_px=50, area_mm2=1.5) == "major"
    assert tile.severity_for("blowhole", area_px=50, area_mm2=5.0) == "critical"
    assert tile.severity_for("crack", area_px=10, length_mm=1.0) == "major"
    assert tile.severity_for("crack", area_px=10, length_mm=1.0, regions=["center"]) == "critical"
    # a mm rule cannot fire without the station's px/mm
    assert tile.severity_for("crack", area_px=10, length_mm=None) == "major"
    assert tile.disposition_for("uneven", "critical") == "hold"
    assert tile.region_names_at(0.05, 0.5) == ["edge_left"]


def test_unknown_class_in_disposition_table_is_rejected() -> None:
    doc = _doc()
    doc["disposition"]["scratch"] = {"minor": "reject"}
    with pytest.raises(TaxonomyError, match="unknown class 'scratch'"):
        Taxonomy.from_dict(doc)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda d: d["classes"][0]["severity_rules"].append({"severity": "major", "min_area_mm2": -1}),
            ">= 0",
        ),
        (lambda d: d["classes"][0]["severity_rules"].append({"severity": "fatal"}), "unknown"),
        (
            lambda d: d["classes"][0]["severity_rules"].append({"severity": "major", "region": "nowhere"}),
            "region",
        ),
        (lambda d: d.update(confidence={"auto_accept": 0.4, "review": 0.6}), "confidence bands"),
        (lambda d: d["disposition"]["crack"].update(minor="shred"), "not in"),
        (lambda d: d.update(anomaly_only={"disposition": "reject"}), "never an automatic reject"),
        (lambda d: d["regions"].append({"name": "bad", "rect": [0.5, 0.5, 0.2, 0.9]}), "rect"),
        (lambda d: d["classes"].append({"name": "good"}), "implicit"),
        (lambda d: d["classes"].append({"name": "crack"}), "duplicate"),
        (lambda d: d["classes"][0].update(kind="diagonal"), "kind"),
        (lambda d: d.update(colour="blue"), "unknown top-level"),
    ],
)
def test_invalid_documents_fail_clearly(mutate, message: str) -> None:
    doc = _doc()
    mutate(doc)
    with pytest.raises(TaxonomyError, match=message):
        Taxonomy.from_dict(doc)


def test_missing_keys_and_bad_yaml() -> None:
    with pytest.raises(TaxonomyError, match="missing required key 'version'"):
        Taxonomy.from_yaml("product: x\nclasses: []\n")
    with pytest.raises(TaxonomyError, match="not valid YAML"):
        Taxonomy.from_yaml("product: [unclosed\n")
    with pytest.raises(TaxonomyError, match="not in taxonomy"):
        bundled_taxonomy("magnetic_tile").get("scratch")


def test_default_for_covers_given_classes() -> None:
    tax = Taxonomy.default_for(["good", "scratch", "dent"])
    assert tax.class_names == ["scratch", "dent"]
    assert tax.disposition_for("dent", tax.severity_for("dent", area_px=1)) == "reject"


def test_class_definitions_gallery_and_ambiguous_reasons() -> None:
    doc = _doc()
    doc["classes"][0].update(
        definition="Round pore.",
        visible_evidence="Dark spot, bright rim.",
        acceptable_variation="Under 0.2 mm.",
        gallery=[{"frame_id": "f-9", "kind": "hard_negative", "note": "dust"}],
    )
    doc["ambiguous"]["reasons"] = [{"code": "GLARE", "description": "reflection hides the surface"}]
    tax = Taxonomy.from_dict(doc)
    assert Taxonomy.from_yaml(tax.to_yaml()) == tax
    blowhole = tax.get("blowhole")
    assert (blowhole.definition, blowhole.gallery[0].kind) == ("Round pore.", "hard_negative")
    for bad, named in (
        ({"gallery": [{"kind": "gold"}]}, "frame_id"),
        ({"gallery": [{"frame_id": "f", "kind": "silver"}]}, "silver"),
        ({"gallery": [{"frame_id": "f", "url": "x"}]}, r"gallery entry has unknown keys \['url'\]"),
    ):
        broken = _doc()
        broken["classes"][0].update(bad)
        with pytest.raises(TaxonomyError, match=named):
            Taxonomy.from_dict(broken)
    broken = _doc()
    broken["ambiguous"]["colour"] = "red"
    with pytest.raises(TaxonomyError, match="ambiguous: unknown keys"):
        Taxonomy.from_dict(broken)
