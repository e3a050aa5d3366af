"""What the inspector's pages show of a product's taxonomy: per class its definition, severity
rules, dispositions and gallery (gold examples and hard negatives) beside the frame, and the
document as the taxonomy editor edits it. The taxonomy service owns the document; this module only
reads its YAML (a published version never changes, so a parsed one may be kept)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import yaml

from linesight.vision.taxonomy import DISPOSITIONS, SeverityRule, Taxonomy, TaxonomyError

__all__ = ["DISPOSITIONS", "CardCache", "ClassCards", "TaxonomyError", "class_cards", "editable", "to_yaml"]

ClassCards = dict[str, dict[str, Any]]


def _rule(rule: SeverityRule) -> str:
    """'major when area ≥ 400 px' in words a labeler reads at a glance."""
    parts = [
        f"{name.removeprefix('min_').replace('_', ' ')} ≥ {value:g}"
        for name in ("min_area_px", "min_area_mm2", "min_length_px", "min_length_mm")
        if (value := getattr(rule, name)) is not None
    ]
    if rule.region:
        parts.append(f"in region {rule.region}")
    return f"{rule.severity} when {' and '.join(parts) or 'always'}"


def class_cards(text: str) -> ClassCards:
    """Per class name: what it is, what still passes, how severe, what the line does, and the
    gallery's frames. Raises TaxonomyError for a document that does not parse."""
    tax = Taxonomy.from_yaml(text)
    cards: ClassCards = {}
    for c in tax.classes:
        table = tax.disposition.get(c.name) or tax.disposition.get("default") or {}
        cards[c.name] = {
            "name": c.name,
            "description": c.description,
            "definition": c.definition,
            "visible_evidence": c.visible_evidence,
            "acceptable_variation": c.acceptable_variation,
            "kind": c.kind,
            "default_severity": c.default_severity,
            "severity_rules": [_rule(r) for r in c.severity_rules],
            "disposition": dict(table),
            "gallery": [{"frame_id": g.frame_id, "kind": g.kind, "note": g.note} for g in c.gallery],
        }
    return cards


def editable(text: str) -> dict[str, Any]:
    """The document as a plain mapping (what the editor edits; keys it does not show travel along)."""
    doc = yaml.safe_load(text)
    if not isinstance(doc, dict):
        raise TaxonomyError("a taxonomy document is a mapping")
    return doc


def to_yaml(doc: dict[str, Any]) -> str:
    """The edited mapping as the YAML the taxonomy service stores; checked here first so a typo
    is named before anything is sent (the service checks again)."""
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    try:
        Taxonomy.from_yaml(text, source="the edited document")
    except TaxonomyError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:  # a value of the wrong shape
        raise TaxonomyError(f"the edited document: malformed entry: {exc}") from exc
    return text


class CardCache:
    """Parsed published versions, newest use last; drafts are never kept (they change)."""

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self._cards: OrderedDict[tuple[str, str], ClassCards] = OrderedDict()

    def get(self, product: str, version: str) -> ClassCards | None:
        hit = self._cards.get((product, version))
        if hit is not None:
            self._cards.move_to_end((product, version))
        return hit

    def put(self, product: str, version: str, cards: ClassCards) -> None:
        self._cards[(product, version)] = cards
        while len(self._cards) > self.size:
            self._cards.popitem(last=False)
