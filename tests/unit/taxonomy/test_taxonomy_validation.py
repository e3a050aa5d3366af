"""Taxonomy document validation: the bundled documents pass, bad ones are refused naming the field."""

import pytest
import yaml

from linesight.taxonomy.app.catalogue import TaxonomyInvalidError, parse, validate
from linesight.taxonomy.service import bundled_dir


def tile() -> dict:
    return yaml.safe_load((bundled_dir() / "magnetic_tile.yaml").read_text())


def test_bundled_documents_validate() -> None:
    product, version, classes = validate((bundled_dir() / "magnetic_tile.yaml").read_text())
    assert product == "magnetic-tile" and version and classes


def test_invalid_documents_are_refused_with_the_reason() -> None:
    with pytest.raises(TaxonomyInvalidError, match="YAML"):
        validate("classes: [")
    with pytest.raises(TaxonomyInvalidError, match="product: document is for 'magnetic-tile', not 'other'"):
        validate((bundled_dir() / "magnetic_tile.yaml").read_text(), product="other")


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda d: d["disposition"].update({"pit": {"minor": "reject"}}), "unknown class 'pit'"),
        (lambda d: d["disposition"]["crack"].update({"fatal": "reject"}), "unknown severity 'fatal'"),
        (lambda d: d["classes"][0].update({"default_severity": "fatal"}), "default_severity 'fatal'"),
        (lambda d: d["disposition"]["crack"].update({"minor": "ship"}), "disposition['crack']['minor']"),
        (lambda d: d["classes"].append({"name": "bad\x07name"}), "classes[].name"),
        (lambda d: d["classes"][0].update({"definition": "x" * 5000}), "classes.blowhole.definition"),
        (lambda d: d["classes"][0].update({"gallery": [{"frame_id": "f1", "kind": "maybe"}]}), "gallery"),
        (lambda d: d.update({"version": "latest"}), "version: 'latest' is reserved"),
        (lambda d: d.update({"ambiguous": {"reasons": [{"code": "a"}, {"code": "a"}]}}), "reasons codes"),
    ],
)
def test_each_invalid_field_is_named(edit, named: str) -> None:  # type: ignore[no-untyped-def]
    doc = tile()
    edit(doc)
    with pytest.raises(TaxonomyInvalidError) as err:
        parse(yaml.safe_dump(doc))
    assert named in str(err.value)


def test_rich_class_fields_round_trip() -> None:
    doc = tile()
    doc["classes"][0].update(
        definition="A round pore from trapped gas.",
        visible_evidence="Dark circular spot with a bright rim.",
        acceptable_variation="Pores under 0.2 mm on the back face.",
        gallery=[
            {"frame_id": "f-1", "kind": "gold"},
            {"frame_id": "f-2", "kind": "hard_negative", "note": "dust"},
        ],
    )
    doc["ambiguous"] = {"disposition": "review", "reasons": [{"code": "GLARE", "description": "reflection"}]}
    tax = parse(yaml.safe_dump(doc))
    again = parse(yaml.safe_dump(tax.to_dict()))
    assert again == tax
    assert [g.kind for g in again.get("blowhole").gallery] == ["gold", "hard_negative"]
    assert again.ambiguous_reasons[0].code == "GLARE"
