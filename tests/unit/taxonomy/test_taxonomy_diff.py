"""The structured diff: classes matched by name, every changed field named, changes categorised."""

import copy

import yaml

from linesight.taxonomy.app.diff import diff
from linesight.taxonomy.service import bundled_dir
from linesight.vision.taxonomy import Taxonomy


def tile() -> dict:
    return Taxonomy.from_yaml((bundled_dir() / "magnetic_tile.yaml").read_text()).to_dict()


def test_identical_and_reordered_documents_have_no_changes() -> None:
    a = tile()
    b = copy.deepcopy(a)
    b["classes"].reverse()
    d = diff(a, b)
    assert d.changes == () and d.relabel_classes == ()


def test_changes_are_categorised_field_by_field() -> None:
    old = tile()
    new = copy.deepcopy(old)
    new["version"] = "2"
    by_name = {c["name"]: c for c in new["classes"]}
    by_name["crack"]["definition"] = "A fracture deeper than the glaze."  # meaning changed
    by_name["fray"]["severity_rules"] = [{"severity": "critical", "min_length_mm": 8.0}]  # rules only
    new["disposition"]["uneven"]["critical"] = "reject"  # disposition only
    new["classes"] = [c for c in new["classes"] if c["name"] != "break"]  # removed
    del new["disposition"]["break"]
    new["classes"].append({**by_name["blowhole"], "name": "stain"})  # added
    new["confidence"]["auto_accept"] = 0.9

    d = diff(old, new)
    assert (d.from_version, d.to_version) == ("1", "2")
    assert d.added_classes == ("stain",) and d.removed_classes == ("break",)
    assert d.redefined_classes == ("crack",)
    assert d.rule_changed_classes == ("fray", "uneven")
    assert d.relabel_classes == ("break", "crack", "stain")
    paths = {c.path: c for c in d.changes}
    assert paths["classes.crack.definition"].category == "definition"
    assert paths["classes.crack.definition"].new == "A fracture deeper than the glaze."
    assert paths["disposition.uneven.critical"].old == "hold"
    assert paths["disposition.uneven.critical"].new == "reject"
    assert paths["disposition.break"].change == "removed"
    assert (
        paths["confidence.auto_accept"].change == "changed"
        and paths["confidence.auto_accept"].class_name == ""
    )
    assert paths["classes.fray.severity_rules"].category == "severity"


def test_default_disposition_change_touches_classes_without_their_own_row() -> None:
    old = yaml.safe_load((bundled_dir() / "default.yaml").read_text())
    old = Taxonomy.from_dict(old).to_dict()
    new = copy.deepcopy(old)
    new["disposition"]["default"]["major"] = "hold"
    d = diff(old, new)
    assert d.rule_changed_classes == ("defect",) and d.redefined_classes == ()
