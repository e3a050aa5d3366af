"""Report sections for qualification: localisation per class and the review-rate trade-off
(automatic false rejects, escapes, review load) with why frames went to review. Text for the
console and HTML (a table and a plot) for ``linesight eval``'s report."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jinja2
import markupsafe

__all__ = ["qualification_html", "qualification_text"]


def _f(v: Any, pct: bool = False) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{100 * v:.1f} %" if pct else f"{v:.3f}"
    return str(v)


def qualification_text(result: Mapping[str, Any]) -> str:
    """Console lines: localisation per class and the review trade-off (empty when absent)."""
    lines: list[str] = []
    loc = result.get("localization") or {}
    if loc.get("per_class"):
        lines.append(f"Localisation ({loc.get('geometry', 'masks')})")
        lines.append(f"  {'class':<18}{'pixel AUROC':>12}{'AUPRO':>8}{'region IoU':>12}{'images':>8}")
        rows = [("all", loc), *loc["per_class"].items()]
        for name, v in rows:
            lines.append(
                f"  {name:<18}{_f(v.get('pixel_auroc')):>12}{_f(v.get('aupro')):>8}"
                f"{_f(v.get('region_iou')):>12}{v.get('n_images', ''):>8}"
            )
    rev = result.get("review") or {}
    if rev:
        a_g, a_d = rev.get("band", [None, None])
        lines.append(f"Review load (band: pass {_f(a_g)} / reject {_f(a_d)}, {rev.get('band_source')})")
        lines.append(
            f"  automatic false rejects {_f(rev.get('false_reject_rate'), True)}, "
            f"escapes {_f(rev.get('escape_rate'), True)}, review {_f(rev.get('review_rate'), True)} "
            f"(of which any band reviews {_f(rev.get('band_independent_review_rate'), True)})"
        )
        lines.append(f"  {'band':>6}{'auto FRR':>10}{'escapes':>10}{'review':>10}")
        for r in rev.get("tradeoff", []):
            lines.append(
                f"  {r['auto_good']:>6.2f}{_f(r['false_reject_rate'], True):>10}"
                f"{_f(r['escape_rate'], True):>10}{_f(r['review_rate'], True):>10}"
            )
        for rule, v in (rev.get("segmentation_veto") or {}).items():
            lines.append(
                f"  what-if ({rule} veto of anomaly-only review): auto FRR "
                f"{_f(v['false_reject_rate'], True)}, escapes {_f(v['escape_rate'], True)}, review "
                f"{_f(v['review_rate'], True)} ({v['left_review_good']} good, "
                f"{v['left_review_defect']} defect frames leave review)"
            )
        for cls, reasons in (rev.get("by_class") or {}).items():
            why = ", ".join(f"{k} {n}" for k, n in reasons.items())
            lines.append(f"  reviewed {cls}: {why}")
    return "\n".join(lines)


def _tradeoff_figure(rows: list[dict[str, float]], band: list[float] | None) -> str | None:
    if not rows:
        return None
    from linesight.vision.evaluation.report import figure_to_data_uri, plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    xs = [r["auto_good"] for r in rows]
    ax.plot(xs, [100 * r["false_reject_rate"] for r in rows], "o-", label="automatic false rejects")
    ax.plot(xs, [100 * r["escape_rate"] for r in rows], "s-", label="escapes")
    ax.plot(xs, [100 * r["review_rate"] for r in rows], "^-", label="review load")
    if band:
        ax.axvline(float(band[0]), color="grey", ls="--", lw=1, label="model's pass band")
    ax.set_xlabel("confidence band (automatic above)")
    ax.set_ylabel("% of frames")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return figure_to_data_uri(fig)


_SECTION = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string(
    """{% if loc %}<h2>Localisation per class ({{ geometry }})</h2>
<table><tr><th>class</th><th>pixel AUROC</th><th>AUPRO</th><th>region IoU</th><th>images</th></tr>
{% for name, v in loc %}<tr><td>{{ name }}</td><td>{{ f(v.get('pixel_auroc')) }}</td>
<td>{{ f(v.get('aupro')) }}</td><td>{{ f(v.get('region_iou')) }}</td><td>{{ v.get('n_images', '') }}</td></tr>
{% endfor %}</table>{% endif %}
{% if rev %}<h2>Review load: automatic false rejects, escapes, review</h2>
<p>Band {{ f(rev.band[0]) }} (pass) / {{ f(rev.band[1]) }} (reject), {{ rev.band_source }}:
automatic false rejects {{ f(rev.false_reject_rate, True) }}, escapes {{ f(rev.escape_rate, True) }},
review {{ f(rev.review_rate, True) }}
(reviewed whatever the band: {{ f(rev.band_independent_review_rate, True) }}).</p>
{% if plot %}<img src="{{ plot }}" alt="review trade-off">{% endif %}
<table><tr><th>band</th><th>auto false rejects</th><th>escapes</th><th>review</th></tr>
{% for r in rev.tradeoff %}<tr><td>{{ '%.2f' % r.auto_good }}</td><td>{{ f(r.false_reject_rate, True) }}</td>
<td>{{ f(r.escape_rate, True) }}</td><td>{{ f(r.review_rate, True) }}</td></tr>{% endfor %}</table>
{% if rev.by_class %}<h3>Why frames went to review (per true class)</h3>
<table><tr><th>class</th><th>reasons</th></tr>{% for cls, reasons in rev.by_class.items() %}
<tr><td>{{ cls }}</td><td>{% for k, n in reasons.items() %}{{ k }} {{ n }}
{%- if not loop.last %}, {% endif %}{% endfor %}</td></tr>
{% endfor %}</table>{% endif %}{% endif %}"""
)


def qualification_html(result: Mapping[str, Any]) -> markupsafe.Markup:
    """The HTML sections (escaped; empty when the result has neither part)."""
    loc = result.get("localization") or {}
    rows = [("all", loc), *loc["per_class"].items()] if loc.get("per_class") else []
    rev = result.get("review") or None
    plot = _tradeoff_figure(list(rev.get("tradeoff", [])), rev.get("band")) if rev else None
    html = _SECTION.render(loc=rows, geometry=loc.get("geometry", "masks"), rev=rev, plot=plot, f=_f)
    return markupsafe.Markup(html)
