"""Versioned defect taxonomy: classes, augmentation policy, severity rules, disposition table.

Until the taxonomy service exists a product's taxonomy is a YAML file in this schema (the
service will serve the same document). Validation is strict and names the offending field,
because a typo in a disposition table silently turning rejects into passes is a quality escape.

Example:
    >>> tax = Taxonomy.default_for(["scratch"])
    >>> tax.disposition_for("scratch", tax.severity_for("scratch", area_px=10))
    'reject'
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from linesight.vision.geometry import Zone

__all__ = [
    "DEFINITION_FIELDS",
    "DISPOSITIONS",
    "SCHEMA",
    "AmbiguousReason",
    "Augmentation",
    "ConfidenceBands",
    "DefectClass",
    "GalleryExample",
    "NamedRegion",
    "SeverityRule",
    "Taxonomy",
    "TaxonomyError",
    "bundled_taxonomy",
]

SCHEMA = "linesight.taxonomy/v1"
DISPOSITIONS = ("pass", "reject", "rework", "hold", "review", "escalate")
KINDS = ("surface", "directional")
ROTATIONS = ("full", "limited", "none")
_RULE_KEYS = (
    "min_area_px",
    "min_area_mm2",
    "min_length_px",
    "min_length_mm",
    "region",
    "min_width_px",
    "min_width_mm",
    "max_edge_distance_px",
    "max_edge_distance_mm",
    "max_region_distance_px",
    "max_region_distance_mm",
    "min_count",
)
_NUMERIC_RULE_KEYS = tuple(k for k in _RULE_KEYS if k != "region")
GALLERY_KINDS = ("gold", "hard_negative")
# What a class *means* to a labeler; a change to any of these makes existing labels suspect.
DEFINITION_FIELDS = ("description", "definition", "visible_evidence", "acceptable_variation", "kind")
_BUNDLED = Path(__file__).with_name("taxonomies")


class TaxonomyError(ValueError):
    """The taxonomy document is invalid, or a class/severity it does not define was asked for."""


@dataclass(frozen=True)
class Augmentation:
    """Per-class augmentation policy. Colour changes are limited to mild brightness/contrast:
    hue or saturation shifts destroy the reflectance cues that define surface defects."""

    rotation: str = "full"  # full 360 (surface), limited (directional, e.g. scoring), none
    max_rotation_deg: float = 15.0  # used when rotation == "limited"
    flips: bool = True
    elastic: bool = True
    brightness: float = 0.1  # max relative change
    contrast: float = 0.1

    def __post_init__(self) -> None:
        if self.rotation not in ROTATIONS:
            raise TaxonomyError(f"augmentation.rotation must be one of {ROTATIONS}, got {self.rotation!r}")
        if not 0.0 <= self.max_rotation_deg <= 180.0:
            raise TaxonomyError(
                f"augmentation.max_rotation_deg must be in [0, 180], got {self.max_rotation_deg}"
            )
        for name in ("brightness", "contrast"):
            v = getattr(self, name)
            if not 0.0 <= v <= 0.3:
                raise TaxonomyError(f"augmentation.{name} must be in [0, 0.3] (mild only), got {v}")


@dataclass(frozen=True)
class SeverityRule:
    """Assign ``severity`` when all given conditions hold on one measured region.

    Sizes (area, length along the principal axis, width across it) are lower bounds; distances
    (to the image edge, to the named ``region``) are upper bounds; ``min_count`` counts the
    part's regions. A ``region`` without a distance bound means the defect touches that region;
    with ``max_region_distance_*`` it means "within that distance of it".
    """

    severity: str
    min_area_px: float | None = None
    min_area_mm2: float | None = None
    min_length_px: float | None = None
    min_length_mm: float | None = None
    region: str | None = None
    min_width_px: float | None = None
    min_width_mm: float | None = None
    max_edge_distance_px: float | None = None
    max_edge_distance_mm: float | None = None
    max_region_distance_px: float | None = None
    max_region_distance_mm: float | None = None
    min_count: int | None = None

    def matches(
        self,
        *,
        area_px: float,
        area_mm2: float | None,
        length_mm: float | None,
        regions: Iterable[str],
        length_px: float | None = None,
        width_px: float | None = None,
        width_mm: float | None = None,
        edge_distance_px: float | None = None,
        edge_distance_mm: float | None = None,
        region_distance_px: Mapping[str, float] | None = None,
        region_distance_mm: Mapping[str, float] | None = None,
        count: int = 1,
    ) -> bool:
        """A mm rule cannot match when the station's px/mm is unknown (measured value None)."""
        lower = (
            (self.min_area_px, area_px),
            (self.min_area_mm2, area_mm2),
            (self.min_length_px, length_px),
            (self.min_length_mm, length_mm),
            (self.min_width_px, width_px),
            (self.min_width_mm, width_mm),
            (self.min_count, count),
        )
        for bound, value in lower:
            if bound is not None and (value is None or value < bound):
                return False
        for bound, value in (
            (self.max_edge_distance_px, edge_distance_px),
            (self.max_edge_distance_mm, edge_distance_mm),
        ):
            if bound is not None and (value is None or value > bound):
                return False
        if self.region is None:
            return True
        near = (
            (self.max_region_distance_px, region_distance_px),
            (self.max_region_distance_mm, region_distance_mm),
        )
        if all(bound is None for bound, _ in near):
            return self.region in set(regions)
        for bound, dists in near:
            if bound is None:
                continue
            d = None if dists is None else dists.get(self.region)
            if d is None or d > bound:
                return False
        return True

    def describe(self) -> str:
        """The rule in the plant's words, e.g. ``length_mm >= 3.0, region center``."""
        parts = []
        for key in _NUMERIC_RULE_KEYS:
            v = getattr(self, key)
            if v is None:
                continue
            if key.startswith("min_"):
                parts.append(f"{key[4:]} >= {v:g}")
            elif key.startswith("max_region_distance_"):
                parts.append(f"distance to {self.region} <= {v:g} {key.rsplit('_', 1)[1]}")
            else:
                parts.append(f"{key[4:]} <= {v:g}")
        if (
            self.region is not None
            and self.max_region_distance_px is None
            and self.max_region_distance_mm is None
        ):
            parts.append(f"touches {self.region}")
        return ", ".join(parts) or "always"


@dataclass(frozen=True)
class NamedRegion:
    """A named area of the part in normalised image coordinates: a rectangle (x0, y0, x1, y1 in
    [0, 1]) or, when ``polygon`` is given, that polygon (``rect`` is then its bounding box)."""

    name: str
    rect: tuple[float, float, float, float]
    polygon: tuple[tuple[float, float], ...] = ()

    def contains(self, cx: float, cy: float) -> bool:
        if self.polygon:
            pts = np.asarray(self.polygon, dtype=np.float32).reshape(-1, 1, 2)
            return bool(cv2.pointPolygonTest(pts, (float(cx), float(cy)), False) >= 0)
        x0, y0, x1, y1 = self.rect
        return x0 <= cx <= x1 and y0 <= cy <= y1

    def zone(self) -> Zone:
        return Zone(self.name, self.polygon) if self.polygon else Zone.from_rect(self.name, self.rect)


@dataclass(frozen=True)
class GalleryExample:
    """A frame that shows the class (``gold``) or looks like it but is not (``hard_negative``)."""

    frame_id: str
    kind: str = "gold"
    note: str = ""

    def __post_init__(self) -> None:
        if not self.frame_id:
            raise TaxonomyError("gallery example needs a frame_id")
        if self.kind not in GALLERY_KINDS:
            raise TaxonomyError(f"gallery example kind must be one of {GALLERY_KINDS}, got {self.kind!r}")


@dataclass(frozen=True)
class DefectClass:
    """A defect class as labelers and the line see it: what it is, how it looks, what is still fine."""

    name: str
    description: str = ""
    kind: str = "surface"
    augmentation: Augmentation = field(default_factory=Augmentation)
    severity_rules: tuple[SeverityRule, ...] = ()
    default_severity: str = "minor"
    definition: str = ""
    visible_evidence: str = ""
    acceptable_variation: str = ""
    gallery: tuple[GalleryExample, ...] = ()


@dataclass(frozen=True)
class AmbiguousReason:
    """Why a frame went to the ambiguous bucket, as a code labelers and reports share."""

    code: str
    description: str = ""


@dataclass(frozen=True)
class ConfidenceBands:
    """``>= auto_accept``: automatic verdict; ``>= review``: human review; below: ambiguous bucket."""

    auto_accept: float = 0.85
    review: float = 0.5

    def __post_init__(self) -> None:
        if not (0.0 <= self.review <= self.auto_accept <= 1.0):
            raise TaxonomyError(
                f"confidence bands need 0 <= review <= auto_accept <= 1, got review={self.review}, "
                f"auto_accept={self.auto_accept}"
            )

    def band(self, confidence: float) -> str:
        if confidence >= self.auto_accept:
            return "auto"
        return "review" if confidence >= self.review else "ambiguous"


@dataclass(frozen=True)
class Taxonomy:
    product: str
    version: str
    classes: tuple[DefectClass, ...]
    severities: tuple[str, ...] = ("minor", "major", "critical")
    disposition: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    regions: tuple[NamedRegion, ...] = ()
    confidence: ConfidenceBands = field(default_factory=ConfidenceBands)
    ambiguous_disposition: str = "review"
    ambiguous_reasons: tuple[AmbiguousReason, ...] = ()
    anomaly_disposition: str = "review"
    unknown_class_disposition: str = "escalate"  # "error" raises instead

    # -- construction -------------------------------------------------------------------------
    def __post_init__(self) -> None:
        self._validate()

    @classmethod
    def load(cls, path: str | Path) -> Taxonomy:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise TaxonomyError(f"cannot read taxonomy {p}: {exc}") from exc
        return cls.from_yaml(text, source=str(p))

    @classmethod
    def from_yaml(cls, text: str, *, source: str = "<yaml>") -> Taxonomy:
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise TaxonomyError(f"{source}: not valid YAML: {exc}") from exc
        if not isinstance(doc, dict):
            raise TaxonomyError(f"{source}: top level must be a mapping")
        return cls.from_dict(doc, source=source)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], *, source: str = "<dict>") -> Taxonomy:
        known = {
            "schema",
            "product",
            "version",
            "severities",
            "classes",
            "disposition",
            "regions",
            "confidence",
            "ambiguous",
            "anomaly_only",
            "unknown_class",
        }
        extra = set(doc) - known
        if extra:
            raise TaxonomyError(f"{source}: unknown top-level keys {sorted(extra)}")
        if doc.get("schema", SCHEMA) != SCHEMA:
            raise TaxonomyError(f"{source}: schema {doc.get('schema')!r} is not {SCHEMA!r}")
        for key in ("product", "version", "classes"):
            if key not in doc:
                raise TaxonomyError(f"{source}: missing required key {key!r}")
        try:
            classes = tuple(_parse_class(c) for c in doc["classes"])
            regions = tuple(_parse_region(r) for r in doc.get("regions", []) or [])
            conf = ConfidenceBands(**(doc.get("confidence") or {}))
            ambiguous = doc.get("ambiguous") or {}
            bad = set(ambiguous) - {"disposition", "reasons"}
            if bad:
                raise TaxonomyError(f"ambiguous: unknown keys {sorted(bad)}")
            reasons = tuple(
                AmbiguousReason(str(r["code"]), str(r.get("description", "")))
                for r in ambiguous.get("reasons") or []
            )
        except (TypeError, KeyError, ValueError, AttributeError) as exc:
            if isinstance(exc, TaxonomyError):
                raise TaxonomyError(f"{source}: {exc}") from None
            raise TaxonomyError(f"{source}: malformed entry: {exc}") from exc
        return cls(
            product=str(doc["product"]),
            version=str(doc["version"]),
            classes=classes,
            severities=tuple(str(s) for s in doc.get("severities", ("minor", "major", "critical"))),
            disposition={
                str(k): {str(s): str(d) for s, d in (v or {}).items()}
                for k, v in (doc.get("disposition") or {}).items()
            },
            regions=regions,
            confidence=conf,
            ambiguous_disposition=str(ambiguous.get("disposition", "review")),
            ambiguous_reasons=reasons,
            anomaly_disposition=str((doc.get("anomaly_only") or {}).get("disposition", "review")),
            unknown_class_disposition=str((doc.get("unknown_class") or {}).get("disposition", "escalate")),
        )

    @classmethod
    def default_for(cls, classes: Iterable[str], *, product: str = "generic", version: str = "0") -> Taxonomy:
        """A permissive generic taxonomy: surface defects, any confident defect is rejected."""
        names = [c for c in dict.fromkeys(classes) if c != "good"]
        return cls(
            product=product,
            version=version,
            classes=tuple(DefectClass(name=n, default_severity="major") for n in names),
            disposition={"default": {"minor": "rework", "major": "reject", "critical": "reject"}},
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "product": self.product,
            "version": self.version,
            "severities": list(self.severities),
            "confidence": {"auto_accept": self.confidence.auto_accept, "review": self.confidence.review},
            "ambiguous": {
                "disposition": self.ambiguous_disposition,
                "reasons": [{"code": r.code, "description": r.description} for r in self.ambiguous_reasons],
            },
            "anomaly_only": {"disposition": self.anomaly_disposition},
            "unknown_class": {"disposition": self.unknown_class_disposition},
            "regions": [
                {"name": r.name, "polygon": [list(p) for p in r.polygon]}
                if r.polygon
                else {"name": r.name, "rect": list(r.rect)}
                for r in self.regions
            ],
            "classes": [
                {
                    "name": c.name,
                    "description": c.description,
                    "definition": c.definition,
                    "visible_evidence": c.visible_evidence,
                    "acceptable_variation": c.acceptable_variation,
                    "gallery": [{"frame_id": g.frame_id, "kind": g.kind, "note": g.note} for g in c.gallery],
                    "kind": c.kind,
                    "augmentation": dict(c.augmentation.__dict__),
                    "default_severity": c.default_severity,
                    "severity_rules": [
                        {k: v for k, v in r.__dict__.items() if v is not None} for r in c.severity_rules
                    ],
                }
                for c in self.classes
            ],
            "disposition": {k: dict(v) for k, v in self.disposition.items()},
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    # -- queries ------------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def has_class(self, name: str) -> bool:
        return any(c.name == name for c in self.classes)

    def get(self, name: str) -> DefectClass:
        for c in self.classes:
            if c.name == name:
                return c
        raise TaxonomyError(
            f"class {name!r} is not in taxonomy {self.product} v{self.version}; known: {self.class_names}"
        )

    def augmentation_for(self, name: str) -> Augmentation:
        """The class's policy; classes the taxonomy does not know get the conservative default."""
        return self.get(name).augmentation if self.has_class(name) else Augmentation()

    def region_names_at(self, cx: float, cy: float) -> list[str]:
        return [r.name for r in self.regions if r.contains(cx, cy)]

    @property
    def zones(self) -> tuple[Zone, ...]:
        """The named regions as geometry zones (for distances and overlap)."""
        return tuple(r.zone() for r in self.regions)

    def severity_for(
        self,
        name: str,
        *,
        area_px: float,
        area_mm2: float | None = None,
        length_mm: float | None = None,
        regions: Iterable[str] = (),
        length_px: float | None = None,
        **measured: Any,
    ) -> str:
        """Highest severity among matching rules, else the class's default severity.

        ``measured`` takes the other figures ``SeverityRule.matches`` reads (width, distances,
        count)."""
        return self.assess(
            name,
            area_px=area_px,
            area_mm2=area_mm2,
            length_mm=length_mm,
            regions=regions,
            length_px=length_px,
            **measured,
        )[0]

    def assess(self, name: str, **measured: Any) -> tuple[str, str]:
        """(severity, why): the highest matching rule's severity and the rule in words, or the
        class's default with ``"default"``."""
        cls_ = self.get(name)
        if "regions" in measured:
            measured["regions"] = list(measured["regions"])
        best = self.severities.index(cls_.default_severity)
        why = f"default for {name}"
        for rule in cls_.severity_rules:
            if rule.matches(**measured):
                k = self.severities.index(rule.severity)
                if k > best:
                    best, why = k, rule.describe()
        return self.severities[best], why

    def disposition_for(self, name: str, severity: str) -> str:
        self.get(name)
        if severity not in self.severities:
            raise TaxonomyError(f"severity {severity!r} not in {list(self.severities)}")
        table = self.disposition.get(name) or self.disposition.get("default")
        if table is None or severity not in table:
            return "review"  # no rule for this case: a human decides, never an automatic reject
        return table[severity]

    # -- validation ---------------------------------------------------------------------------
    def _validate(self) -> None:
        where = f"taxonomy {self.product!r} v{self.version}"
        if not self.severities or len(set(self.severities)) != len(self.severities):
            raise TaxonomyError(f"{where}: severities must be a non-empty list of unique names")
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise TaxonomyError(
                f"{where}: duplicate class names {sorted({n for n in names if names.count(n) > 1})}"
            )
        if "good" in names:
            raise TaxonomyError(f"{where}: 'good' is implicit and must not be listed as a defect class")
        region_names = {r.name for r in self.regions}
        for r in self.regions:
            x0, y0, x1, y1 = r.rect
            if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
                raise TaxonomyError(
                    f"{where}: region {r.name!r} rect {r.rect} must satisfy 0<=x0<x1<=1, 0<=y0<y1<=1"
                )
        for c in self.classes:
            if c.kind not in KINDS:
                raise TaxonomyError(f"{where}: class {c.name!r} kind must be one of {KINDS}, got {c.kind!r}")
            if c.default_severity not in self.severities:
                raise TaxonomyError(
                    f"{where}: class {c.name!r} default_severity {c.default_severity!r} "
                    f"not in {list(self.severities)}"
                )
            for rule in c.severity_rules:
                if rule.severity not in self.severities:
                    raise TaxonomyError(f"{where}: class {c.name!r} rule severity {rule.severity!r} unknown")
                for key in _NUMERIC_RULE_KEYS:
                    v = getattr(rule, key)
                    if v is not None and (not isinstance(v, int | float) or v < 0):
                        raise TaxonomyError(f"{where}: class {c.name!r} rule {key} must be >= 0, got {v!r}")
                if rule.region is not None and rule.region not in region_names:
                    raise TaxonomyError(
                        f"{where}: class {c.name!r} rule names unknown region {rule.region!r}"
                    )
        for cname, table in self.disposition.items():
            if cname != "default" and cname not in names:
                raise TaxonomyError(
                    f"{where}: disposition table names unknown class {cname!r}; known: {names}"
                )
            for sev, disp in table.items():
                if sev not in self.severities:
                    raise TaxonomyError(f"{where}: disposition[{cname!r}] has unknown severity {sev!r}")
                if disp not in DISPOSITIONS:
                    raise TaxonomyError(
                        f"{where}: disposition[{cname!r}][{sev!r}] = {disp!r} not in {DISPOSITIONS}"
                    )
        codes = [r.code for r in self.ambiguous_reasons]
        if any(not c for c in codes) or len(set(codes)) != len(codes):
            raise TaxonomyError(f"{where}: ambiguous.reasons codes must be non-empty and unique, got {codes}")
        for label, disp in (
            ("ambiguous", self.ambiguous_disposition),
            ("anomaly_only", self.anomaly_disposition),
        ):
            if disp not in ("review", "escalate", "hold"):
                raise TaxonomyError(
                    f"{where}: {label}.disposition must be review, escalate or hold "
                    f"(never an automatic reject), got {disp!r}"
                )
        if self.unknown_class_disposition not in ("review", "escalate", "hold", "error"):
            raise TaxonomyError(f"{where}: unknown_class.disposition must be review/escalate/hold/error")


def _parse_region(doc: Mapping[str, Any]) -> NamedRegion:
    """``{name, rect: [x0, y0, x1, y1]}`` or ``{name, polygon: [[x, y], ...]}`` (normalised)."""
    bad = set(doc) - {"name", "rect", "polygon"}
    if bad:
        raise TaxonomyError(f"region {doc.get('name')!r}: unknown keys {sorted(bad)}")
    name = str(doc["name"])
    if "polygon" in doc:
        poly = tuple((float(p[0]), float(p[1])) for p in doc["polygon"])
        if len(poly) < 3:
            raise TaxonomyError(f"region {name!r}: a polygon needs at least 3 points, got {len(poly)}")
        if any(not (0.0 <= v <= 1.0) for p in poly for v in p):
            raise TaxonomyError(f"region {name!r}: polygon points must lie in [0, 1] (normalised)")
        xs, ys = [p[0] for p in poly], [p[1] for p in poly]
        return NamedRegion(name, (min(xs), min(ys), max(xs), max(ys)), poly)
    x0, y0, x1, y1 = (float(v) for v in doc["rect"])
    return NamedRegion(name, (x0, y0, x1, y1))


def _parse_class(doc: Mapping[str, Any]) -> DefectClass:
    if not isinstance(doc, Mapping) or "name" not in doc:
        raise TaxonomyError(f"class entry must be a mapping with a name, got {doc!r}")
    extra = set(doc) - {
        "name",
        "description",
        "kind",
        "augmentation",
        "severity_rules",
        "default_severity",
        "definition",
        "visible_evidence",
        "acceptable_variation",
        "gallery",
    }
    if extra:
        raise TaxonomyError(f"class {doc['name']!r}: unknown keys {sorted(extra)}")
    rules = []
    for r in doc.get("severity_rules", []) or []:
        bad = set(r) - {"severity", *_RULE_KEYS}
        if bad:
            raise TaxonomyError(f"class {doc['name']!r}: severity rule has unknown keys {sorted(bad)}")
        rules.append(SeverityRule(**r))
    kind = str(doc.get("kind", "surface"))
    aug_doc = dict(doc.get("augmentation") or {})
    if kind == "directional":
        aug_doc.setdefault("rotation", "limited")
    return DefectClass(
        name=str(doc["name"]),
        description=str(doc.get("description", "")),
        kind=kind,
        augmentation=Augmentation(**aug_doc),
        severity_rules=tuple(rules),
        default_severity=str(doc.get("default_severity", "minor")),
        definition=str(doc.get("definition", "")),
        visible_evidence=str(doc.get("visible_evidence", "")),
        acceptable_variation=str(doc.get("acceptable_variation", "")),
        gallery=tuple(_parse_example(doc["name"], g) for g in doc.get("gallery", []) or []),
    )


def _parse_example(cls_name: str, doc: Any) -> GalleryExample:
    if not isinstance(doc, Mapping) or "frame_id" not in doc:
        raise TaxonomyError(
            f"class {cls_name!r}: gallery entry must be a mapping with a frame_id, got {doc!r}"
        )
    bad = set(doc) - {"frame_id", "kind", "note"}
    if bad:
        raise TaxonomyError(f"class {cls_name!r}: gallery entry has unknown keys {sorted(bad)}")
    return GalleryExample(str(doc["frame_id"]), str(doc.get("kind", "gold")), str(doc.get("note", "")))


def bundled_taxonomy(name: str) -> Taxonomy:
    """Load an example taxonomy shipped with the package (``magnetic_tile``, ``default``)."""
    path = _BUNDLED / f"{name}.yaml"
    if not path.is_file():
        raise TaxonomyError(
            f"no bundled taxonomy {name!r}; have {sorted(p.stem for p in _BUNDLED.glob('*.yaml'))}"
        )
    return Taxonomy.load(path)
