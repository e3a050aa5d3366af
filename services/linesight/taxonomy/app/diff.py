"""Structured, field-by-field difference between two taxonomy documents.

Classes are matched by name and disposition cells by (class, severity), so a reordered list is
no change. Each class change is put in a category, because consumers act on categories: a changed
*definition* makes existing labels suspect (the labeling service opens a relabel queue), while a
changed severity rule or disposition only changes what the line does (the inference service
applies it, labels stay valid).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from linesight.vision.taxonomy import DEFINITION_FIELDS

RULE_CATEGORIES = frozenset({"severity", "disposition", "augmentation"})


@dataclass(frozen=True)
class FieldChange:
    path: str
    change: str  # added | removed | changed
    old: Any = None
    new: Any = None
    class_name: str = ""
    category: str = "settings"

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path, "change": self.change, "old": self.old, "new": self.new,
            "class_name": self.class_name, "category": self.category,
        }  # fmt: skip


@dataclass(frozen=True)
class TaxonomyDiff:
    from_version: str
    to_version: str
    added_classes: tuple[str, ...] = ()
    removed_classes: tuple[str, ...] = ()
    redefined_classes: tuple[str, ...] = ()
    rule_changed_classes: tuple[str, ...] = ()
    changes: tuple[FieldChange, ...] = field(default_factory=tuple)

    @property
    def changed_classes(self) -> tuple[str, ...]:
        """Every class with any change (added, removed, any field)."""
        return tuple(sorted({c.class_name for c in self.changes if c.class_name}))

    @property
    def relabel_classes(self) -> tuple[str, ...]:
        """What existing labels may no longer hold for: added, removed and redefined classes."""
        return tuple(sorted({*self.added_classes, *self.removed_classes, *self.redefined_classes}))

    def to_json(self) -> dict[str, Any]:
        return {
            "from_version": self.from_version, "to_version": self.to_version,
            "added_classes": list(self.added_classes), "removed_classes": list(self.removed_classes),
            "redefined_classes": list(self.redefined_classes),
            "rule_changed_classes": list(self.rule_changed_classes),
            "relabel_classes": list(self.relabel_classes),
            "changes": [c.to_json() for c in self.changes],
        }  # fmt: skip


def _category(key: str) -> str:
    if key in DEFINITION_FIELDS:
        return "definition"
    if key in ("severity_rules", "default_severity"):
        return "severity"
    if key == "augmentation":
        return "augmentation"
    if key == "gallery":
        return "gallery"
    return "settings"


def _compare(path: str, old: Any, new: Any, out: list[FieldChange], **where: str) -> None:
    """Recurse through mappings; lists and scalars compare as wholes (a rule list is one rule set)."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            _compare(f"{path}.{key}", old.get(key), new.get(key), out, **where)
        return
    if old == new:
        return
    change = "added" if old is None else "removed" if new is None else "changed"
    out.append(FieldChange(path, change, old, new, **where))


def diff(old: dict[str, Any], new: dict[str, Any]) -> TaxonomyDiff:
    """`old`/`new` are `Taxonomy.to_dict()` documents (defaults filled in, so absent = default)."""
    changes: list[FieldChange] = []
    skip = {"classes", "disposition", "version", "schema"}
    for key in sorted((set(old) | set(new)) - skip):
        _compare(key, old.get(key), new.get(key), changes)

    old_classes = {c["name"]: c for c in old.get("classes", [])}
    new_classes = {c["name"]: c for c in new.get("classes", [])}
    added = sorted(set(new_classes) - set(old_classes))
    removed = sorted(set(old_classes) - set(new_classes))
    for name in added:
        changes.append(FieldChange(f"classes.{name}", "added", None, new_classes[name], name, "definition"))
    for name in removed:
        changes.append(FieldChange(f"classes.{name}", "removed", old_classes[name], None, name, "definition"))
    for name in sorted(set(old_classes) & set(new_classes)):
        a, b = old_classes[name], new_classes[name]
        for key in sorted((set(a) | set(b)) - {"name"}):
            _compare(f"classes.{name}.{key}", a.get(key), b.get(key), changes,
                     class_name=name, category=_category(key))  # fmt: skip

    old_disp, new_disp = old.get("disposition", {}), new.get("disposition", {})
    for cls in sorted(set(old_disp) | set(new_disp)):
        owner = "" if cls == "default" else cls
        _compare(f"disposition.{cls}", old_disp.get(cls), new_disp.get(cls), changes,
                 class_name=owner, category="disposition")  # fmt: skip

    kept = set(old_classes) & set(new_classes)
    redefined = sorted({c.class_name for c in changes if c.class_name in kept and c.category == "definition"})
    rule_touched = {c.class_name for c in changes if c.class_name in kept and c.category in RULE_CATEGORIES}
    if old_disp.get("default") != new_disp.get("default"):  # classes without a row of their own
        rule_touched |= {n for n in kept if n not in new_disp or n not in old_disp}
    rule_changed = sorted(rule_touched - set(redefined))
    return TaxonomyDiff(
        from_version=str(old.get("version", "")), to_version=str(new.get("version", "")),
        added_classes=tuple(added), removed_classes=tuple(removed),
        redefined_classes=tuple(redefined), rule_changed_classes=tuple(rule_changed),
        changes=tuple(changes),
    )  # fmt: skip


def as_json_text(value: Any) -> str:
    """A change's value for the wire: JSON, empty when absent on that side."""
    return "" if value is None else json.dumps(value, sort_keys=True, ensure_ascii=False)
