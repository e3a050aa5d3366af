"""Evaluation report: a console table and a self-contained HTML page (embedded PNG figures).

The HTML has no external assets (figures are base64 PNGs from matplotlib's Agg backend) so it can
be mailed, attached to a model card or stored in the reports bucket and still open anywhere.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import jinja2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
from matplotlib.figure import Figure

from linesight.vision.data.imageio import encode_png, to_rgb
from linesight.vision.evaluation.learning_curve import LearningCurve
from linesight.vision.evaluation.metrics import pr_points, roc_points

__all__ = [
    "GalleryItem",
    "confusion_figure",
    "figure_to_data_uri",
    "format_table",
    "learning_curve_figure",
    "loop_curve_figure",
    "overlay_heatmap",
    "png_data_uri",
    "render_html",
    "roc_pr_figure",
]


@dataclass
class GalleryItem:
    """One worst-miss tile: the image with its heatmap overlay and why it is here."""

    image: np.ndarray
    heatmap: np.ndarray | None
    caption: str


def figure_to_data_uri(fig: Figure) -> str:
    """Render a matplotlib figure to an embedded PNG and close it (no leaked figures)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def png_data_uri(image: np.ndarray) -> str:
    """Embedded PNG of a uint8 gray/RGB array."""
    return "data:image/png;base64," + base64.b64encode(encode_png(image)).decode()


def roc_pr_figure(
    is_defect: Sequence[bool] | npt.NDArray[Any], scores: Sequence[float] | npt.NDArray[Any]
) -> str:
    """ROC (log-scaled FPR marks the 2 % operating region) and precision-recall curves."""
    fpr, tpr = roc_points(is_defect, scores)
    rec, prec = pr_points(is_defect, scores)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.8))
    a.plot(fpr, tpr, lw=2)
    a.axvline(0.02, color="grey", ls="--", lw=1, label="2 % false rejects")
    a.set(
        xlabel="false reject rate (good rejected)",
        ylabel="defect recall",
        title="ROC",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    a.legend(loc="lower right")
    b.plot(rec, prec, lw=2, color="tab:orange")
    b.set(xlabel="recall", ylabel="precision", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.01))
    return figure_to_data_uri(fig)


def confusion_figure(matrix: Sequence[Sequence[int]] | np.ndarray, labels: Sequence[str]) -> str:
    """Confusion matrix with counts (rows = true class, columns = predicted)."""
    m = np.asarray(matrix)
    n = len(labels)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * n, 0.8 + 0.6 * n))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set(xlabel="predicted", ylabel="true")
    top = m.max() if m.size else 0
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(
                j, i, str(m[i, j]), ha="center", va="center", color="white" if m[i, j] > top / 2 else "black"
            )
    return figure_to_data_uri(fig)


def learning_curve_figure(curve: LearningCurve) -> str:
    """Measured error vs training size with the fitted power law extended to 2x the data."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot(curve.sizes, curve.errors, "o", label="measured")
    if curve.fit is not None and curve.sizes:
        xs = np.linspace(min(curve.sizes), 2 * max(curve.sizes), 100)
        ax.plot(
            xs,
            [curve.fit(x) for x in xs],
            "-",
            label=f"{curve.fit.a:.2g}·n^-{curve.fit.b:.2f} + {curve.fit.c:.3f}",
        )
        ax.axvline(max(curve.sizes), color="grey", ls=":", lw=1)
    ax.set(xlabel="training images", ylabel="test error", title="Learning curve")
    ax.legend()
    return figure_to_data_uri(fig)


def loop_curve_figure(loop: Mapping[str, Any]) -> str | None:
    """False rejects and escapes on the stream's second half against labels used
    (``linesight eval --loop``); None without a curve."""
    points = [p for p in loop.get("curve") or [] if p.get("labels_used") is not None]
    if not points:
        return None
    xs = [int(p["labels_used"]) for p in points]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for key, name in (("false_reject_rate", "false rejects"), ("escape_rate", "escapes")):
        ys = [100 * p[key] if p.get(key) is not None else np.nan for p in points]
        ax.plot(xs, ys, "o-", label=name)
    ax.axhline(2.0, color="grey", ls=":", lw=1, label="2 % target")
    ax.set(xlabel="labels used", ylabel="% of second-half frames (per side)", title="The review loop")
    ax.legend()
    return figure_to_data_uri(fig)


def overlay_heatmap(
    image: np.ndarray, heatmap: np.ndarray | None, *, vmax: float = 2.0, alpha: float = 0.45
) -> np.ndarray:
    """RGB image with a JET heatmap blended in; `vmax` in heatmap units (1.0 = threshold)."""
    rgb = to_rgb(image)
    if heatmap is None:
        return rgb
    h: np.ndarray = np.asarray(heatmap, dtype=np.float32)
    if h.shape != rgb.shape[:2]:
        h = cv2.resize(h, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    scaled = np.clip(h / max(vmax, 1e-6), 0.0, 1.0)
    colour = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    weight = (alpha * scaled)[:, :, None]
    return np.asarray((rgb * (1 - weight) + colour * weight).clip(0, 255).astype(np.uint8))


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{100 * v:.1f} %" if pct else f"{v:.4g}"
    return str(v)


_PCT_KEYS = {
    "recall_at_frr_2pct",
    "false_reject_rate",
    "escape_rate",
    "accuracy",
    "review_rate",
    "precision",
    "recall",
}


def format_table(result: Mapping[str, Any]) -> str:
    """Readable console summary of an evaluation result (the --json structure)."""
    lines: list[str] = []
    det = result.get("detection") or {}
    rec = result.get("recalibrated") or {}
    lines.append("Detection (good vs defect)")
    for key in ("image_auroc", "recall_at_frr_2pct", "threshold", "false_reject_rate", "escape_rate"):
        extra = ""
        if key in ("false_reject_rate", "escape_rate") and rec:
            extra = f"   recalibrated ({rec.get('n_images')} good): {_fmt(rec.get(key), True)}"
        lines.append(f"  {key:<22}{_fmt(det.get(key), key in _PCT_KEYS):>10}{extra}")
    cls = result.get("classification") or {}
    lines.append("Classification (defect images, known defect classes)")
    lines.append(f"  {'accuracy':<22}{_fmt(cls.get('accuracy'), True):>10}")
    per = cls.get("per_class") or {}
    if per:
        lines.append(f"  {'class':<22}{'precision':>10}{'recall':>10}{'support':>9}")
        for name, v in per.items():
            prec, recall = _fmt(v.get("precision"), True), _fmt(v.get("recall"), True)
            lines.append(f"  {name:<22}{prec:>10}{recall:>10}{v.get('support', 0):>9}")
    excluded = cls.get("excluded_classes") or []
    if excluded:
        lines.append(f"  excluded (not in training): {', '.join(excluded)}")
    lines.append("Operations")
    for key, unit in (
        ("review_rate", ""),
        ("train_seconds", " s"),
        ("images_per_second", ""),
        ("peak_rss_mb", " MB"),
    ):
        lines.append(f"  {key:<22}{_fmt(result.get(key), key in _PCT_KEYS) + unit:>10}")
    loop = result.get("loop")
    if loop:
        lines.append(
            f"Review loop (budget {loop.get('review_budget')}, {loop.get('labels_used')} labels used, "
            f"{loop.get('updates')} updates, slowest {_fmt(loop.get('update_seconds_max'))} s)"
        )
        lines.append(f"  {'second half':<22}{'FRR':>10}{'escapes':>10}{'frames':>9}")
        for side in ("before", "after"):
            v = loop.get(side) or {}
            frr, esc = _fmt(v.get("false_reject_rate"), True), _fmt(v.get("escape_rate"), True)
            lines.append(f"  {side:<22}{frr:>10}{esc:>10}{v.get('frames', 0):>9}")
    from linesight.vision.evaluation.qualification import qualification_text  # localisation, review

    extra = qualification_text(result)
    return "\n".join([*lines, extra] if extra else lines)


_TEMPLATE = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string(
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
h1{font-size:1.5em} h2{font-size:1.15em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse} td,th{padding:.25em .8em;border-bottom:1px solid #eee;text-align:right}
td:first-child,th:first-child{text-align:left} .gallery{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;width:220px} figure img{width:220px;image-rendering:pixelated} figcaption{font-size:.8em}
pre{background:#f6f6f6;padding:.8em;overflow:auto} .warn{color:#a40}
</style></head><body>
<h1>{{ title }}</h1>
<p>{{ subtitle }}</p>
<h2>Summary</h2>
<pre>{{ table }}</pre>
{% if warnings %}<h2>Data warnings</h2><ul>
{% for w in warnings %}<li class="warn">{{ w }}</li>{% endfor %}
</ul>{% endif %}
{% if roc %}<h2>Detection: ROC and precision-recall</h2>
<img src="{{ roc }}" alt="ROC and PR curves">{% endif %}
{% if confusion %}<h2>Defect type: confusion matrix</h2>
<img src="{{ confusion }}" alt="confusion matrix">
{% if top_confusions %}<p>Top confusions:
{% for t, p, n in top_confusions %}{{ t }} → {{ p }} ({{ n }}){% if not loop.last %}; {% endif %}{% endfor %}
</p>{% endif %}{% endif %}
{% if gallery %}<h2>Worst misses</h2><div class="gallery">{% for g in gallery %}
<figure><img src="{{ g.src }}" alt="{{ g.caption }}"><figcaption>{{ g.caption }}</figcaption></figure>
{% endfor %}</div>{% endif %}
{% if loop_curve %}<h2>Review loop: second half of the stream</h2>
<img src="{{ loop_curve }}" alt="false rejects and escapes against labels used">
<p>Each point: the model after an update, on the stream's second half (never labelled).</p>{% endif %}
{% if curve %}<h2>Learning curve</h2>
<img src="{{ curve }}" alt="learning curve"><p>{{ curve_text }}</p>{% endif %}
{{ qualification }}
<h2>Raw figures</h2><pre>{{ raw }}</pre>
</body></html>
"""
)


def render_html(
    result: Mapping[str, Any],
    *,
    title: str = "LineSight evaluation",
    subtitle: str = "",
    is_defect: Sequence[bool] | None = None,
    scores: Sequence[float] | None = None,
    gallery: Sequence[GalleryItem] = (),
    curve: LearningCurve | None = None,
    warnings: Sequence[str] = (),
) -> str:
    """Self-contained HTML report for one evaluation."""
    import json

    from linesight.vision.evaluation.qualification import qualification_html

    roc = None
    if is_defect is not None and scores is not None and 0 < sum(map(bool, is_defect)) < len(is_defect):
        roc = roc_pr_figure(is_defect, scores)
    cls = result.get("classification") or {}
    confusion = None
    if cls.get("confusion_matrix") and cls.get("labels"):
        confusion = confusion_figure(cls["confusion_matrix"], cls["labels"])
    tiles = [
        {"src": png_data_uri(overlay_heatmap(g.image, g.heatmap)), "caption": g.caption} for g in gallery
    ]
    curve_uri, curve_text = None, ""
    if curve is not None and curve.sizes:
        curve_uri = learning_curve_figure(curve)
        if curve.predicted_gain_from_doubling is not None:
            curve_text = (
                f"Doubling the training data ({curve.sizes[-1]} → {2 * curve.sizes[-1]} images) "
                "is predicted to "
                f"lower the error from {curve.errors[-1]:.3f} to {curve.predicted_error_at_double:.3f}. "
                + " ".join(curve.notes)
            )
    return _TEMPLATE.render(
        title=title,
        subtitle=subtitle,
        table=format_table(result),
        warnings=list(warnings),
        roc=roc,
        confusion=confusion,
        top_confusions=cls.get("top_confusions") or [],
        gallery=tiles,
        curve=curve_uri,
        curve_text=curve_text,
        loop_curve=loop_curve_figure(result["loop"]) if result.get("loop") else None,
        raw=json.dumps(result, indent=2, default=str),
        qualification=qualification_html(result),
    )
