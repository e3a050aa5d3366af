"""Release gates: what a model must show on the protected holdout before a QA owner may sign it off.

Three parts, all without service I/O:

* `ReleaseGate`: the thresholds, per product and per severity (for example critical recall
  >= 0.99, major >= 0.95, false rejects <= 2 %, review rate <= 10 %). The training service keeps
  each product's gate versioned in PostgreSQL; the YAML file (or these defaults) applies to a
  product that never had one.
* `evaluate_holdout`: per class and per severity precision/recall, false rejects, escapes,
  confusion pairs, calibration (ECE) and review rate of a model's predictions on the holdout,
  with the evidence a QA owner looks at (curve points, confusion matrix, worst misses with
  heatmaps). Its flat figures go into the model's metrics; the whole evaluation travels in the
  artifact (`evaluation.json`).
* `gate_report` / `render_html`: a gate applied to an evaluation, as JSON and as one
  self-contained HTML page (figures as inline PNG), the evidence shown at promotion.

A gate decides eligibility, never the stage: a model that passes may be promoted by a QA owner,
one that fails may not; nothing is promoted automatically.
"""

from __future__ import annotations

import html
import json
import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

GOOD = "good"
STAGE_CANDIDATE = "candidate"
WORST_MISSES = 6
THUMB_PX = 128
REVIEW_BAND = 0.85  # confidence below this goes to a person when the taxonomy sets no band


class GateConfigError(ValueError):
    """A gate document that cannot be used (unknown key, threshold outside [0, 1])."""


def _rate(value: Any, key: str) -> float:
    """A threshold: a finite number >= 0 (a minimum above 1 holds every model back)."""
    if isinstance(value, bool):
        raise GateConfigError(f"{key}: expected a number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError) as exc:
        raise GateConfigError(f"{key}: expected a number, got {value!r}") from exc
    if not math.isfinite(out) or out < 0:
        raise GateConfigError(f"{key}: {out} is not a finite number >= 0")
    return out


@dataclass(frozen=True)
class ReleaseGate:
    """Thresholds on holdout figures. `min_recall` is per severity, `min_class_recall` per defect
    class; None switches a check off. A figure the holdout cannot produce (no defects of a gated
    severity) fails its check: a gate is evidence, and missing evidence is not a pass."""

    min_defect_recall: float = 0.8
    max_false_reject_rate: float = 0.1
    min_recall: Mapping[str, float] = field(default_factory=dict)  # severity -> recall
    min_class_recall: Mapping[str, float] = field(default_factory=dict)
    max_review_rate: float | None = None
    max_ece: float | None = None

    def checks(self, metrics: Mapping[str, float]) -> list[dict[str, Any]]:
        """Every configured check: {"name", "metric", "op", "threshold", "value", "passed"}."""
        out: list[dict[str, Any]] = []

        def check(name: str, metric: str, op: str, threshold: float | None) -> None:
            if threshold is None:
                return
            value = metrics.get(metric)
            ok = value is not None and (value >= threshold if op == ">=" else value <= threshold)
            out.append({"name": name, "metric": metric, "op": op, "threshold": threshold,
                        "value": value, "passed": bool(ok)})  # fmt: skip

        check("defect_recall", "defect_recall", ">=", self.min_defect_recall)
        check("false_reject_rate", "false_reject_rate", "<=", self.max_false_reject_rate)
        for sev, thr in sorted(self.min_recall.items()):
            check(f"recall[{sev}]", f"recall/severity/{sev}", ">=", thr)
        for cls, thr in sorted(self.min_class_recall.items()):
            check(f"recall[{cls}]", f"recall/class/{cls}", ">=", thr)
        check("review_rate", "review_rate", "<=", self.max_review_rate)
        check("ece", "ece", "<=", self.max_ece)
        return out

    def failures(self, metrics: Mapping[str, float]) -> list[str]:
        """The failed checks, each named with its value and threshold."""
        out = []
        for c in self.checks(metrics):
            if c["passed"]:
                continue
            if c["value"] is None:
                out.append(f"{c['name']} not measured on the holdout (needs {c['op']} {c['threshold']})")
            else:
                worse = "<" if c["op"] == ">=" else ">"
                out.append(f"{c['name']} {round(float(c['value']), 4)} {worse} {c['threshold']}")
        return out

    def evaluate(self, metrics: Mapping[str, float]) -> tuple[str, list[str]]:
        """(stage, failed checks). The stage is always `candidate`: passing makes a model eligible
        for a QA owner's sign-off, it never promotes it."""
        return STAGE_CANDIDATE, self.failures(metrics)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["min_recall"] = dict(self.min_recall)
        d["min_class_recall"] = dict(self.min_class_recall)
        return d

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, source: str = "gate") -> ReleaseGate:
        """A gate from its document; GateConfigError names an unknown key or a bad threshold."""
        if not isinstance(values, Mapping):
            raise GateConfigError(f"{source}: release gate must be a mapping of threshold names to numbers")
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise GateConfigError(f"{source}: unknown release gate keys {sorted(unknown)}")
        kw: dict[str, Any] = {}
        for key in ("min_defect_recall", "max_false_reject_rate"):
            if key in values:
                kw[key] = _rate(values[key], key)
        for key in ("max_review_rate", "max_ece"):
            if key in values:
                kw[key] = None if values[key] is None else _rate(values[key], key)
        for key in ("min_recall", "min_class_recall"):
            given = values.get(key) or {}
            if not isinstance(given, Mapping):
                raise GateConfigError(f"{source}: {key} must map names to recalls")
            kw[key] = {str(k): _rate(v, f"{key}.{k}") for k, v in given.items()}
        return cls(**kw)

    @classmethod
    def from_env_dict(cls, values: dict[str, Any]) -> ReleaseGate:
        """Thresholds among other settings: keys that are not thresholds are ignored."""
        return cls.from_dict({k: v for k, v in values.items() if k in cls.__dataclass_fields__})

    @classmethod
    def load(cls, path: Path) -> ReleaseGate:
        """Thresholds from a YAML file; defaults when it is absent.

        A file that exists but cannot be read is an error: silently falling back to defaults
        could make a model eligible that the plant's QA owner meant to hold back.
        """
        if not path.is_file():
            return cls()
        import yaml

        return cls.from_dict(yaml.safe_load(path.read_text(encoding="utf-8")) or {}, source=str(path))

    @classmethod
    def from_yaml(cls, text: str, *, source: str = "gate") -> ReleaseGate:
        import yaml

        try:
            doc = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise GateConfigError(f"{source}: not YAML: {exc}") from exc
        return cls.from_dict(doc, source=source)

    def to_yaml(self) -> str:
        import yaml

        return str(yaml.safe_dump(self.to_dict(), sort_keys=True))


# --- evaluation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class HoldoutCase:
    """One holdout image as the model saw it (built by the trainer from a Prediction)."""

    name: str
    label: str  # true class ("good" or a defect class)
    severity: str  # true severity ("" for good)
    flagged: bool  # the model would not pass it
    predicted: str  # "good", a defect class, or "anomaly" (flagged without a class)
    defect_probability: float
    confidence: float  # calibrated probability of its own verdict
    review: bool  # the decision would go to a person (low confidence, anomaly only, provisional)
    thumbnail: str = ""  # data URI with the heatmap overlay, kept for the worst misses only


def _safe(v: float | None) -> float | None:
    return None if v is None or math.isnan(v) else round(float(v), 6)


def evaluate_holdout(cases: Sequence[HoldoutCase]) -> dict[str, Any]:
    """Figures and evidence of a model on the holdout (JSON-able).

    `metrics` holds the flat figures a gate reads: defect_recall, false_reject_rate, escapes,
    false_rejects, review_rate, ece, recall/severity/<s>, recall/class/<c>, precision/class/<c>.
    """
    from linesight.vision.evaluation.metrics import (
        classification_metrics,
        expected_calibration_error,
        pr_points,
        roc_points,
    )

    n = len(cases)
    truth = np.array([c.label != GOOD for c in cases], dtype=bool)
    flagged = np.array([c.flagged for c in cases], dtype=bool)
    metrics: dict[str, float] = {"holdout_images": float(n)}
    if truth.any():
        metrics["defect_recall"] = float(flagged[truth].mean())
        metrics["escapes"] = float((truth & ~flagged).sum())
    if (~truth).any():
        metrics["false_reject_rate"] = float(flagged[~truth].mean())
        metrics["false_rejects"] = float((~truth & flagged).sum())
    if n:
        metrics["review_rate"] = float(np.mean([c.review for c in cases]))
        metrics["ece"] = expected_calibration_error(
            [min(1.0, max(0.0, c.confidence)) for c in cases],
            [c.flagged == (c.label != GOOD) for c in cases],
        )
    # A defect counts as caught for its severity when it is not passed (any rejecting class).
    by_sev: dict[str, list[bool]] = defaultdict(list)
    by_cls: dict[str, list[bool]] = defaultdict(list)
    for c in cases:
        if c.label != GOOD:
            by_sev[c.severity or "unspecified"].append(c.flagged)
            by_cls[c.label].append(c.flagged)
    severity: dict[str, dict[str, Any]] = {}
    for sev, hits in sorted(by_sev.items()):
        metrics[f"recall/severity/{sev}"] = float(np.mean(hits))
        severity[sev] = {"support": len(hits), "recall": float(np.mean(hits)), "escapes": hits.count(False)}
    labels = sorted({c.label for c in cases})
    cls = classification_metrics([c.label for c in cases], [c.predicted for c in cases], labels) if n else {}
    per_class: dict[str, dict[str, Any]] = {}
    for name, figs in (cls.get("per_class") or {}).items():
        row: dict[str, Any] = {k: _safe(v) if isinstance(v, float) else v for k, v in figs.items()}
        if name in by_cls:
            detected = float(np.mean(by_cls[name]))  # flagged at all, whatever the class
            row["detected"] = detected
            metrics[f"recall/class/{name}"] = detected
        precision = row.get("precision")
        if precision is not None:
            metrics[f"precision/class/{name}"] = float(precision)
        per_class[name] = row
    curves: dict[str, Any] = {}
    if truth.any() and (~truth).any():
        scores = [c.defect_probability for c in cases]
        fpr, tpr = roc_points(truth, scores)
        rec, prec = pr_points(truth, scores)
        curves = {
            "roc": {"fpr": [_safe(v) for v in fpr], "tpr": [_safe(v) for v in tpr]},
            "pr": {"recall": [_safe(v) for v in rec], "precision": [_safe(v) for v in prec]},
        }
    escapes = sorted(
        (c for c in cases if c.label != GOOD and not c.flagged), key=lambda c: c.defect_probability
    )
    rejects = sorted((c for c in cases if c.label == GOOD and c.flagged), key=lambda c: -c.defect_probability)
    worst = [*escapes[: WORST_MISSES // 2 + 1], *rejects[: WORST_MISSES // 2]][:WORST_MISSES]
    return {
        "images": n,
        "metrics": {k: float(v) for k, v in metrics.items()},
        "per_class": per_class,
        "per_severity": severity,
        "confusion": {"labels": cls.get("labels", []), "matrix": cls.get("confusion_matrix", [])},
        "confusion_pairs": cls.get("top_confusions", []),
        "curves": curves,
        "worst_misses": [
            {
                "image": c.name,
                "label": c.label,
                "severity": c.severity,
                "predicted": c.predicted,
                "defect_probability": round(c.defect_probability, 4),
                "kind": "escape" if c.label != GOOD else "false_reject",
                "thumbnail": c.thumbnail,
            }
            for c in worst
        ],
        "counts": dict(Counter(c.label for c in cases)),
    }


def thumbnail(image: np.ndarray, heatmap: np.ndarray | None) -> str:
    """A small PNG data URI of `image` with its heatmap blended in (the worst-miss gallery)."""
    import cv2

    from linesight.vision.evaluation.report import overlay_heatmap, png_data_uri

    rgb = overlay_heatmap(image, heatmap)
    h, w = rgb.shape[:2]
    scale = THUMB_PX / max(h, w)
    if scale < 1:
        rgb = cv2.resize(rgb, (max(1, int(w * scale)), max(1, int(h * scale))), interpolation=cv2.INTER_AREA)
    return png_data_uri(rgb)


# --- report ----------------------------------------------------------------------------------


def gate_report(
    gate: ReleaseGate,
    evaluation: Mapping[str, Any],
    *,
    model_version: str,
    product: str,
    gate_version: int,
    metrics: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The gate applied to a model's holdout evaluation (JSON-able).

    `metrics` (the registry's) stand in when the model carries no evaluation (an artifact from
    before evaluations were packaged): the checks still run, the evidence sections are empty.
    """
    figures = dict(metrics or {})
    figures.update(evaluation.get("metrics") or {})
    checks = gate.checks(figures)
    failures = gate.failures(figures)
    return {
        "model_version": model_version,
        "product": product,
        "gate_version": gate_version,
        "gate": gate.to_dict(),
        "passed": not failures,
        "eligible": not failures,
        "checks": checks,
        "failures": failures,
        "evaluation": {k: v for k, v in evaluation.items() if k != "worst_misses"},
        "worst_misses": [
            {k: v for k, v in m.items() if k != "thumbnail"} for m in evaluation.get("worst_misses") or []
        ],
    }


def render_html(report: Mapping[str, Any], evaluation: Mapping[str, Any]) -> str:
    """One self-contained page (figures as inline PNG): it can be mailed or archived with the
    release decision."""
    from linesight.vision.evaluation.report import confusion_figure, figure_to_data_uri

    esc = html.escape
    figs: list[tuple[str, str]] = []
    curves = evaluation.get("curves") or {}
    if curves.get("roc"):
        import matplotlib.pyplot as plt

        fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
        a.plot(curves["roc"]["fpr"], curves["roc"]["tpr"], lw=2)
        a.axvline(0.02, color="grey", ls="--", lw=1, label="2 % false rejects")
        a.set(xlabel="false reject rate", ylabel="defect recall", title="ROC", xlim=(0, 1), ylim=(0, 1.01))
        a.legend(loc="lower right")
        b.plot(curves["pr"]["recall"], curves["pr"]["precision"], lw=2, color="tab:orange")
        b.set(xlabel="recall", ylabel="precision", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.01))
        figs.append(("Curves", figure_to_data_uri(fig)))
    conf = evaluation.get("confusion") or {}
    if conf.get("labels"):
        figs.append(("Confusion matrix (rows: true, columns: predicted)",
                     confusion_figure(conf["matrix"], conf["labels"])))  # fmt: skip
    rows = "".join(
        f"<tr class='{'ok' if c['passed'] else 'fail'}'><td>{esc(c['name'])}</td><td>{esc(c['op'])} "
        f"{c['threshold']}</td><td>{'n/a' if c['value'] is None else round(float(c['value']), 4)}</td>"
        f"<td>{'pass' if c['passed'] else 'FAIL'}</td></tr>"
        for c in report["checks"]
    )

    def table(title: str, data: Mapping[str, Mapping[str, Any]]) -> str:
        if not data:
            return ""
        cols = sorted({k for v in data.values() for k in v})
        head = "".join(f"<th>{esc(c)}</th>" for c in cols)
        body = "".join(
            f"<tr><td>{esc(name)}</td>" + "".join(f"<td>{esc(_fmt(v.get(c)))}</td>" for c in cols) + "</tr>"
            for name, v in data.items()
        )
        return f"<h2>{esc(title)}</h2><table><tr><th></th>{head}</tr>{body}</table>"

    misses = "".join(
        f"<figure><img src='{esc(m['thumbnail'])}' alt=''><figcaption>{esc(m['kind'])}: "
        f"{esc(m['image'])}<br>true {esc(m['label'])} {esc(m['severity'])}, predicted "
        f"{esc(m['predicted'])} (p={m['defect_probability']})</figcaption></figure>"
        if m.get("thumbnail")
        else f"<p>{esc(m['kind'])}: {esc(m['image'])} true {esc(m['label'])}, "
        f"predicted {esc(m['predicted'])}</p>"
        for m in evaluation.get("worst_misses") or []
    )
    pairs = "".join(f"<li>{esc(str(t))} &rarr; {esc(str(p))}: {n}</li>"
                    for t, p, n in evaluation.get("confusion_pairs") or [])  # fmt: skip
    verdict = (
        "ELIGIBLE for a QA owner's sign-off"
        if report["passed"]
        else "NOT eligible: " + "; ".join(report["failures"])
    )
    images = "".join(f"<h2>{esc(t)}</h2><img src='{u}' alt='{esc(t)}'>" for t, u in figs)
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>Release gate: {esc(report['model_version'])}</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1em}"
        "td,th{border:1px solid #ccc;padding:4px;font-size:13px}tr.fail td{background:#fdd}"
        "tr.ok td{background:#efe}figure{display:inline-block;margin:4px;font-size:12px}</style></head><body>"
        f"<h1>Model {esc(report['model_version'])} ({esc(report['product'])})</h1>"
        f"<p>Release gate v{report['gate_version']} on {evaluation.get('images', 0)} holdout images: "
        f"<b>{esc(verdict)}</b>.</p>"
        f"<table><tr><th>check</th><th>threshold</th><th>value</th><th>result</th></tr>{rows}</table>"
        f"{table('Per severity', evaluation.get('per_severity') or {})}"
        f"{table('Per class', evaluation.get('per_class') or {})}"
        f"<h2>Confusion pairs</h2><ul>{pairs or '<li>none</li>'}</ul>{images}"
        f"<h2>Worst misses</h2>{misses or '<p>none</p>'}"
        f"<h2>Figures</h2><pre>{esc(json.dumps(report['evaluation'].get('metrics', {}), indent=1))}</pre>"
        "</body></html>"
    )


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)
