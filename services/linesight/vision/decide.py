"""Qualification: turn a ``Prediction`` into a verdict, severity and disposition from the taxonomy.

Rules that protect the line (an automatic verdict only where the model has earned it):
  * a confident supervised class decides a defect; its disposition comes from the taxonomy table;
  * an anomaly without a confident class goes to review, never to an automatic reject; PatchCore's
    score just over its threshold does not outweigh an image head that clearly calls the frame
    good (``ANOMALY_ALONE``, ``ANOMALY_HEAD_SHARE``);
  * confidence bands separate automatic verdicts from review; an audit-flagged frame is reviewed;
  * a class the taxonomy does not know escalates (or raises, if the taxonomy says ``error``).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

import cv2
import numpy as np

from linesight.vision.components.scoring import GOOD, Prediction
from linesight.vision.geometry import measure_region
from linesight.vision.taxonomy import Taxonomy, TaxonomyError

__all__ = [
    "ANOMALY_ALONE",
    "ANOMALY_HEAD_SHARE",
    "Decision",
    "Region",
    "assess_region",
    "decide",
    "find_regions",
]

# A frame the image head calls good still goes to review for PatchCore's score alone when that
# score reaches ANOMALY_ALONE x its threshold (PatchCore's catch for a defect type no head has
# seen), or reaches the threshold while the head's defect probability is at least
# ANOMALY_HEAD_SHARE x the operating point. Chosen leave-one-session-out on magnetic tile
# (vision/README.md, review load): of the 16 frames PatchCore alone sent to review, one was a
# defect (a break at 0.87x the operating point, still reviewed), 15 good tiles 2-23 % over the
# threshold (the 10 that now pass had the head at 0.01-0.34x); review 4.8 -> 3.9 % mean,
# 6.2 -> 4.9 % worst, escapes unchanged. The figures are flat for 1.15-1.3 and 0.2-0.6.
ANOMALY_ALONE = 1.2
ANOMALY_HEAD_SHARE = 0.5


@dataclass(frozen=True)
class Region:
    """One connected component of the thresholded heatmap, measured (``geometry.py``): what the
    severity rules read, kept on the decision so a QA engineer sees why a part is major."""

    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (pixels, inclusive-exclusive)
    area_px: int
    peak: float  # max heatmap value (1.0 = anomaly threshold)
    area_mm2: float | None = None
    length_mm: float | None = None  # extent along the principal axis
    named_regions: tuple[str, ...] = ()  # taxonomy regions the defect touches (or is centred in)
    length_px: float | None = None  # extent along the principal axis, in pixels
    width_px: float | None = None  # extent across the principal axis
    width_mm: float | None = None
    angle_deg: float = 0.0  # principal axis from the image x axis
    edge_distance_px: float | None = None  # gap to the nearest image border (0: touches it)
    edge_distance_mm: float | None = None
    region_distance_px: tuple[tuple[str, float], ...] = ()  # (named region, gap px); 0 = touches
    region_distance_mm: tuple[tuple[str, float], ...] = ()
    severity: str | None = None  # this region's severity under the decided class
    severity_reason: str = ""  # the rule that set it, e.g. "length_mm >= 3"
    defect_class: str | None = None  # the class it was assessed under


@dataclass
class Decision:
    verdict: str  # "pass" | "defect" | "review"
    defect_class: str | None
    confidence: float
    anomaly_score: float
    severity: str | None
    disposition: str  # pass | reject | rework | hold | review | escalate
    regions: list[Region] = field(default_factory=list)
    review_reason: str | None = None
    taxonomy_version: str = ""
    heatmap: np.ndarray | None = field(default=None, repr=False)


def find_regions(
    heatmap: np.ndarray,
    threshold: float,
    *,
    px_per_mm: float | None = None,
    taxonomy: Taxonomy | None = None,
    min_area_frac: float = 0.0005,
) -> list[Region]:
    """Connected components of ``heatmap >= threshold``, largest first, with sizes in px and mm."""
    if heatmap.ndim != 2 or heatmap.size == 0:
        raise ValueError(f"heatmap must be a non-empty 2-D array, got shape {heatmap.shape}")
    h, w = heatmap.shape
    mask = (heatmap >= threshold).astype(np.uint8)
    # Label only the box around the pixels over the threshold (none on most frames): labelling
    # costs the same per pixel whether it finds anything or not. The box starts on even
    # coordinates so OpenCV's 2x2-block labelling numbers the components as on the whole map.
    bx, by, bw_all, bh_all = cv2.boundingRect(mask)
    if bw_all == 0 or bh_all == 0:
        return []
    ox, oy = bx & ~1, by & ~1
    n, lab, stats, _ = cv2.connectedComponentsWithStats(
        mask[oy : by + bh_all, ox : bx + bw_all], connectivity=8
    )
    min_area = max(1, int(min_area_frac * h * w))
    zones = taxonomy.zones if taxonomy else ()
    regions: list[Region] = []
    for k in range(1, n):
        lx, ly, bw, bh, area = (int(v) for v in stats[k])
        if area < min_area:
            continue
        x, y = lx + ox, ly + oy
        comp = lab[ly : ly + bh, lx : lx + bw] == k
        m = measure_region(comp, offset=(x, y), image_shape=(h, w), px_per_mm=px_per_mm, zones=zones)
        cx, cy = (x + bw / 2.0) / w, (y + bh / 2.0) / h
        named = dict.fromkeys([*m.zones_touched, *(taxonomy.region_names_at(cx, cy) if taxonomy else [])])
        dist_mm = m.zone_distance_mm or {}
        regions.append(
            Region(
                box=(x, y, x + bw, y + bh),
                area_px=area,
                peak=float(heatmap[y : y + bh, x : x + bw][comp].max()),
                area_mm2=m.area_mm2,
                length_mm=m.length_mm,
                named_regions=tuple(named),
                length_px=m.length_px,
                width_px=m.width_px,
                width_mm=m.width_mm,
                angle_deg=m.angle_deg,
                edge_distance_px=m.edge_distance_px,
                edge_distance_mm=m.edge_distance_mm,
                region_distance_px=tuple(m.zone_distance_px.items()),
                region_distance_mm=tuple(dist_mm.items()),
            )
        )
    regions.sort(key=lambda r: r.area_px, reverse=True)
    return regions


def decide(
    prediction: Prediction,
    taxonomy: Taxonomy,
    *,
    px_per_mm: float | None = None,
    audit_passed: bool = True,
    region_threshold: float = 1.0,
    anomaly_alone: float = ANOMALY_ALONE,
    anomaly_head_share: float = ANOMALY_HEAD_SHARE,
) -> Decision:
    """Qualify one prediction. ``px_per_mm`` is the station's scale (mm figures need it);
    ``anomaly_alone`` / ``anomaly_head_share``: when PatchCore's score sends a frame the head
    calls good to review (module constants)."""
    if px_per_mm is not None and not px_per_mm > 0:
        raise ValueError(f"px_per_mm must be positive, got {px_per_mm}")
    bands = taxonomy.confidence
    # the bands fitted for the product on out-of-fold scores (model/review_band.py), else the taxonomy's
    fitted = getattr(prediction, "review_band", None)
    auto_good, auto_defect = (float(fitted[0]), float(fitted[1])) if fitted else (bands.auto_accept,) * 2
    probs = prediction.class_probs
    defect_classes = {c: p for c, p in probs.items() if c != GOOD}
    best = max(defect_classes, key=lambda c: defect_classes[c]) if defect_classes else None
    best_p = defect_classes[best] if best else 0.0
    heat = prediction.heatmap
    # Every decision carries the same evidence: the anomaly score, the taxonomy it was judged by
    # and the heatmap its regions come from.
    base = functools.partial(
        Decision,
        anomaly_score=float(prediction.anomaly_score),
        taxonomy_version=taxonomy.version,
        heatmap=heat,
    )

    def regions_for(defect: bool) -> list[Region]:
        regs = find_regions(heat, region_threshold, px_per_mm=px_per_mm, taxonomy=taxonomy)
        if not regs and defect and heat.size and float(heat.max()) > 0:
            # the head found a defect PatchCore scores below threshold: localise by relative peak
            regs = find_regions(heat, 0.5 * float(heat.max()), px_per_mm=px_per_mm, taxonomy=taxonomy)
        return regs

    def review(reason: str, disposition: str, confidence: float, cls: str | None = None) -> Decision:
        return base(
            "review",
            cls,
            float(confidence),
            severity=None,
            disposition=disposition,
            regions=regions_for(True),
            review_reason=reason,
        )

    if prediction.is_defect:
        if best is None or best_p < 1e-9:
            return review(
                "anomaly without a supervised class",
                taxonomy.anomaly_disposition,
                prediction.defect_probability,
            )
        if not taxonomy.has_class(best):
            if taxonomy.unknown_class_disposition == "error":
                raise TaxonomyError(
                    f"model class {best!r} is not in taxonomy {taxonomy.product} v{taxonomy.version}"
                )
            return review(
                f"class {best!r} not in taxonomy v{taxonomy.version}",
                taxonomy.unknown_class_disposition,
                best_p,
                best,
            )
        if best in prediction.provisional_classes:
            return review(
                _too_few_examples(best, prediction),
                taxonomy.anomaly_disposition,
                best_p,
                best,
            )
        band = (
            "auto"
            if best_p >= auto_defect
            else ("review" if best_p >= min(bands.review, auto_defect) else "ambiguous")
        )
        if band == "ambiguous":
            # most of the defect mass may sit on no supervised class (an anomaly-only class)
            return review("defect without a confident class", taxonomy.ambiguous_disposition, best_p, best)
        if band == "review":
            return review(
                f"looks like {best} but confidence {best_p:.2f} is below the automatic-decision band "
                f"({auto_defect:.2f})",
                "review",
                best_p,
                best,
            )
        if not audit_passed:
            return review("audit flagged the frame", "review", best_p, best)
        found = regions_for(True)
        regions = [
            assess_region(taxonomy, _region_class(prediction, r, heat.shape, best, taxonomy), r, len(found))
            for r in found
        ]
        sev = taxonomy.get(best).default_severity
        for r in regions:
            if r.severity and taxonomy.severities.index(r.severity) > taxonomy.severities.index(sev):
                sev = r.severity
        return base(
            "defect",
            best,
            float(best_p),
            severity=sev,
            disposition=taxonomy.disposition_for(best, sev),
            regions=regions,
        )

    good_conf = 1.0 - float(prediction.defect_probability)
    head_doubts = prediction.defect_probability >= anomaly_head_share * prediction.defect_threshold
    if prediction.anomaly_score >= 1.0 and (prediction.anomaly_score >= anomaly_alone or head_doubts):
        return review(
            "anomaly score above threshold without a defect class",
            taxonomy.anomaly_disposition,
            min(1.0, prediction.anomaly_score / 2.0),
        )
    if not audit_passed:
        return review("audit flagged the frame", "review", good_conf)
    if good_conf < auto_good:
        return review(
            f"looks good but confidence {good_conf:.2f} is below the auto-pass band ({auto_good:.2f})",
            "review",
            good_conf,
        )
    return base("pass", None, good_conf, severity=None, disposition="pass", regions=[])


def assess_region(taxonomy: Taxonomy, cls: str, region: Region, count: int) -> Region:
    """The region with its severity under ``cls`` and the rule that set it (``count``: the
    part's number of regions, for ``min_count`` rules)."""
    sev, why = taxonomy.assess(
        cls,
        area_px=region.area_px,
        area_mm2=region.area_mm2,
        length_mm=region.length_mm,
        regions=region.named_regions,
        length_px=region.length_px,
        width_px=region.width_px,
        width_mm=region.width_mm,
        edge_distance_px=region.edge_distance_px,
        edge_distance_mm=region.edge_distance_mm,
        region_distance_px=dict(region.region_distance_px),
        region_distance_mm=dict(region.region_distance_mm) if region.region_distance_mm else None,
        count=count,
    )
    return dataclasses.replace(region, severity=sev, severity_reason=why, defect_class=cls)


def _region_class(
    prediction: Prediction, region: Region, shape: tuple[int, ...], default: str, taxonomy: Taxonomy
) -> str:
    """The region's own class from the segmentation head (the most frequent class of the patch
    cells under its box), so a crack's region is assessed as a crack even on a part decided for
    another class; ``default`` (the decided class) without a head or for a class the taxonomy
    does not know."""
    seg = getattr(prediction, "segmentation", None)
    names = getattr(prediction, "segmentation_classes", ())
    if seg is None or not names:
        return default
    gh, gw = seg.shape
    h, w = int(shape[0]), int(shape[1])
    x0, y0, x1, y1 = region.box
    cx0, cx1 = int(x0 * gw / w), max(int(x0 * gw / w) + 1, int(np.ceil(x1 * gw / w)))
    cy0, cy1 = int(y0 * gh / h), max(int(y0 * gh / h) + 1, int(np.ceil(y1 * gh / h)))
    cells = np.asarray(seg[cy0:cy1, cx0:cx1]).ravel()
    if cells.size == 0:
        return default
    k = int(np.bincount(cells, minlength=len(names)).argmax())
    name = names[k] if 0 < k < len(names) else default
    return name if taxonomy.has_class(name) else default


def _too_few_examples(cls: str, prediction: Prediction) -> str:
    """The review reason for a provisional class, in the plant's words: the count is what the
    model was trained on (after the holdout split), which can be well below what the dataset
    shows, so both numbers are stated."""
    n = prediction.provisional_examples.get(cls)
    if n is None or not prediction.min_examples:
        return f"{cls}: too few training examples for automatic decisions; sent to review"
    return (
        f"{cls}: only {n} training examples ({prediction.min_examples} needed for automatic decisions); "
        "sent to review"
    )
