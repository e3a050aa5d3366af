"""Taxonomy document validation and change detection (no servers needed)."""

import pytest

from linesight.taxonomy.app.catalogue import TaxonomyInvalidError, changed_classes, validate
from linesight.taxonomy.service import bundled_dir


def test_bundled_documents_validate() -> None:
    product, version, classes = validate((bundled_dir() / "magnetic_tile.yaml").read_text())
    assert product == "magnetic-tile" and version and classes


def test_invalid_documents_are_refused_with_the_reason() -> None:
    with pytest.raises(TaxonomyInvalidError, match="YAML"):
        validate("classes: [")
    with pytest.raises(TaxonomyInvalidError, match="not 'other'"):
        validate((bundled_dir() / "magnetic_tile.yaml").read_text(), product="other")


def test_changed_classes() -> None:
    old = {"scratch": {"name": "scratch", "kind": "surface"}, "pit": {"name": "pit"}}
    new = {"scratch": {"name": "scratch", "kind": "directional"}, "crack": {"name": "crack"}}
    assert changed_classes(old, new) == ["crack", "pit", "scratch"]
    assert changed_classes(old, old) == []
