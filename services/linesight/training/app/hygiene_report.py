"""A dataset version's hygiene report: the engine's checks (linesight.vision.data.hygiene) turned
into named findings, a `blocking` verdict, and a self-contained HTML page.

Why these findings block: a duplicate or one part across splits inflates every accuracy figure
computed on that split; an attribute that predicts the label alone (a station, the lighting, a
border) lets a model learn the shortcut instead of the defect. Balance, quality and annotation
findings are warnings: they make a model worse, not its evaluation untrustworthy.
"""

from __future__ import annotations

import base64
import html
import io
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from linesight.vision.data import hygiene
from linesight.vision.data.manifest import GOOD, Sample

BLOCKING = "blocking"
WARNING = "warning"
MAX_EXAMPLES = 10
LEAK_AUC = 0.75  # an attribute alone predicting the label this well is a shortcut
MIN_PER_CLASS = 30  # fewer defect images than this: a supervised head learns little
GOOD_DEFECT_RATIO = 3.0  # acquisition advice is close to 1:1; beyond 3:1 either way is flagged
MIN_PER_SEVERITY = 20  # a per-severity recall gate on fewer defects moves by 5 % per image
# The checks every report runs, in the order they are reported (a finding names one of them).
CHECKS = (
    "exact_duplicate",
    "near_duplicate",
    "part_straddles_split",
    "metadata_leak",
    "class_balance",
    "image_quality",
    "mixed_image_sizes",
    "annotation",
)
MIN_GOOD_PARTS = 50  # good parts teach acceptable variation; a few dozen photos of one part do not


def _finding(kind: str, severity: str, items: Sequence[str], **extra: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "severity": severity,
        "count": len(items),
        "examples": list(items[:MAX_EXAMPLES]),
        **extra,
    }


@dataclass(frozen=True)
class DuplicateEvidence:
    """Exact, perceptual-hash and embedding duplicates of a set, computed once: the version's
    splitter groups by them and the report names them."""

    hashes: hygiene.DuplicateReport
    embedding_pairs: list[hygiene.EmbeddingPair]
    seconds: dict[str, float]

    def links(self) -> list[tuple[Path, Path]]:
        """Every pair of images that shows the same part (what a split must keep together)."""
        pairs: list[tuple[Path, Path]] = [(g[0], x) for g in self.hashes.exact for x in g[1:]]
        pairs += [(n.a, n.b) for n in self.hashes.near]
        pairs += [(e.a, e.b) for e in self.embedding_pairs]
        return pairs


def find_duplicate_evidence(samples: Sequence[Sample], *, embeddings: bool = True) -> DuplicateEvidence:
    t0 = time.perf_counter()
    dups = hygiene.find_duplicates(samples)
    seconds = {"hashes": round(time.perf_counter() - t0, 2)}
    pairs: list[hygiene.EmbeddingPair] = []
    if embeddings:
        t0 = time.perf_counter()
        pairs = hygiene.embedding_near_duplicates(samples)
        seconds["embeddings"] = round(time.perf_counter() - t0, 2)
    return DuplicateEvidence(dups, pairs, seconds)


def build_report(
    samples: Sequence[Sample],
    split_of: dict[Path, str],
    *,
    name_of: Callable[[Path], str],
    severity_of: dict[Path, str] | None = None,
    embeddings: bool = True,
    duplicates: DuplicateEvidence | None = None,
) -> tuple[dict[str, Any], list[hygiene.ImageStats]]:
    """Run every check; returns the JSON-able report and the per-image stats (for the plots).

    `duplicates`: the evidence the splitter already grouped by (find_duplicate_evidence), so the
    hashes and embeddings are not computed twice; None: computed here (`embeddings` says whether
    the backbone-embedding check runs)."""
    timings: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        out = fn()
        timings[name] = round(time.perf_counter() - t0, 2)
        return out

    findings: list[dict[str, Any]] = []
    stats: list[hygiene.ImageStats] = timed("image_stats", lambda: hygiene.image_stats(samples))
    label_of = {s.image: s.label for s in samples}

    if duplicates is None:
        duplicates = find_duplicate_evidence(samples, embeddings=embeddings)
    timings.update(duplicates.seconds)
    dups = duplicates.hashes
    cross = [g for g in dups.exact if len({split_of[p] for p in g}) > 1]
    conflict = [g for g in dups.exact if len({label_of[p] for p in g}) > 1]
    if dups.exact:
        findings.append(_finding(
            "exact_duplicate", BLOCKING if cross or conflict else WARNING,
            [" = ".join(f"{name_of(p)} [{split_of[p]}]" for p in g) for g in (cross + conflict + dups.exact)],
            groups=len(dups.exact), across_splits=len(cross), label_conflicts=len(conflict),
        ))  # fmt: skip
    near: list[tuple[Path, Path, str]] = [
        (n.a, n.b, f"hash d={n.dhash_distance}/p={n.phash_distance}") for n in dups.near
    ]
    if duplicates.embedding_pairs:
        exact_sets = [set(g) for g in dups.exact]
        seen = {frozenset((a, b)) for a, b, _ in near}
        for e in duplicates.embedding_pairs:
            key = frozenset((e.a, e.b))
            if key in seen or any(e.a in g and e.b in g for g in exact_sets):
                continue
            seen.add(key)
            near.append((e.a, e.b, f"embedding cos={e.distance:.4f}"))
    if near:
        near_cross = [t for t in near if split_of[t[0]] != split_of[t[1]]]
        ordered = near_cross + [t for t in near if t not in near_cross]
        findings.append(_finding(
            "near_duplicate", BLOCKING if near_cross else WARNING,
            [f"{name_of(a)} [{split_of[a]}] ~ {name_of(b)} [{split_of[b]}] ({how})" for a, b, how in ordered],
            across_splits=len(near_cross),
            by_method=dict(Counter(how.split(" ")[0] for _, _, how in near)),
        ))  # fmt: skip

    straddle = hygiene.straddling_parts(samples, split_of)
    if straddle:
        findings.append(_finding(
            "part_straddles_split", BLOCKING, [f"{p}: {', '.join(v)}" for p, v in straddle.items()]
        ))  # fmt: skip

    leaks: list[hygiene.LeakFinding] = timed(
        "metadata_leaks", lambda: hygiene.metadata_leaks(samples, stats, flag_at=LEAK_AUC)
    )
    flagged = [lf for lf in leaks if lf.flagged]
    if flagged:
        findings.append(_finding(
            "metadata_leak", BLOCKING, [f"{lf.attribute}: AUC {lf.auc:.3f}" for lf in flagged],
            threshold=LEAK_AUC,
        ))  # fmt: skip

    balance = hygiene.balance_report(samples, min_examples=MIN_PER_CLASS)
    findings += _balance_findings(samples, split_of, balance, severity_of)

    flags = hygiene.quality_flags(samples, stats)
    if flags:
        items = [f"{kind}: {name_of(p)}" for kind, paths in sorted(flags.items()) for p in paths]
        findings.append(_finding(
            "image_quality", WARNING, items, by_flag={k: len(v) for k, v in sorted(flags.items())}
        ))  # fmt: skip
    sizes = Counter((st.width, st.height) for st in stats)
    if len(sizes) > 1:
        common = sizes.most_common(1)[0][0]
        odd = [f"{name_of(s.image)}: {st.width}x{st.height}" for s, st in zip(samples, stats, strict=True)
               if (st.width, st.height) != common]  # fmt: skip
        findings.append(_finding("mixed_image_sizes", WARNING, odd, sizes=len(sizes)))
    ann = timed("annotations", lambda: hygiene.annotation_issues(samples, stats))
    if ann:
        findings.append(_finding("annotation", WARNING, [f"{name_of(a.image)}: {a.reason}" for a in ann]))

    # Every check that ran, with its count: a kind missing from `findings` was checked and clean.
    checks = dict.fromkeys(CHECKS, 0) | {f["kind"]: f["count"] for f in findings}
    per_split: dict[str, Counter[str]] = defaultdict(Counter)
    for s in samples:
        per_split[split_of[s.image]][s.label] += 1
    report = {
        "images": len(samples),
        "blocking": any(f["severity"] == BLOCKING for f in findings),
        "findings": findings,
        "checks": checks,
        "clean": [kind for kind, n in checks.items() if n == 0],
        "class_counts": balance.class_counts,
        "severity_counts": dict(
            sorted(Counter((severity_of or {}).get(s.image, "") or "unspecified" for s in samples).items())
        ),
        "parts_per_class": balance.parts_per_class,
        "by_split": {k: dict(sorted(v.items())) for k, v in sorted(per_split.items())},
        "by_station": balance.by_station,
        "by_batch": balance.by_batch,
        "leak_auc": {lf.attribute: round(lf.auc, 4) for lf in leaks},
        "duplicates": {"exact_groups": len(dups.exact), "near_pairs": len(near)},
        "seconds": timings,
    }
    return report, stats


def _balance_findings(
    samples: Sequence[Sample],
    split_of: dict[Path, str],
    balance: hygiene.BalanceReport,
    severity_of: dict[Path, str] | None = None,
) -> list[dict[str, Any]]:
    """The acquisition advice as checks: good and defect close to 1:1, enough images per defect
    class, enough distinct good parts, every defect with a severity and enough of each severity
    for its gate, and every class present in every split."""
    items: list[str] = []
    counts = balance.class_counts
    good = counts.get(GOOD, 0)
    defect = sum(n for c, n in counts.items() if c != GOOD)
    if good == 0:
        items.append("no good images: the model cannot learn acceptable variation")
    elif defect and not (1 / GOOD_DEFECT_RATIO <= good / defect <= GOOD_DEFECT_RATIO):
        items.append(f"good:defect is {good}:{defect}; acquisition advice is close to 1:1")
    items += [f"{c}: {counts[c]} images (< {MIN_PER_CLASS})" for c in balance.small_classes]
    good_parts = balance.parts_per_class.get(GOOD, 0)
    if 0 < good_parts < MIN_GOOD_PARTS:
        items.append(f"only {good_parts} distinct good parts (< {MIN_GOOD_PARTS}): little normal variation")
    if severity_of is not None:  # per-severity gates need every defect's severity
        unrated = Counter(s.label for s in samples if s.label != GOOD and not severity_of.get(s.image))
        items += [f"{c}: {n} defect image(s) without a severity (per-severity gates cannot count them)"
                  for c, n in sorted(unrated.items())]  # fmt: skip
        rated = Counter(severity_of[s.image] for s in samples if s.label != GOOD and severity_of.get(s.image))
        items += [f"severity {sev}: {n} defect image(s) (< {MIN_PER_SEVERITY}): its gate is measured on few"
                  for sev, n in sorted(rated.items()) if n < MIN_PER_SEVERITY]  # fmt: skip
    splits = sorted(set(split_of.values()))
    for c in sorted(counts):
        missing = [sp for sp in splits if not any(s.label == c and split_of[s.image] == sp for s in samples)]
        if missing:
            items.append(f"{c}: absent from split(s) {', '.join(missing)}")
    return (
        [_finding("class_balance", WARNING, items, imbalance_ratio=round(balance.imbalance_ratio, 2))]
        if items
        else []
    )


# --- HTML ------------------------------------------------------------------------------------


def png_base64(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def render_html(version: str, product: str, report: dict[str, Any], samples: Sequence[Sample],
                stats: Sequence[hygiene.ImageStats]) -> str:  # fmt: skip
    """One self-contained page (plots embedded as base64 PNG): it can be mailed or archived."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots: list[tuple[str, str]] = []
    by_split: dict[str, dict[str, int]] = report["by_split"]
    classes = sorted(report["class_counts"])
    fig, ax = plt.subplots(figsize=(7, 3))
    bottom = [0] * len(classes)
    for sp, counts in by_split.items():
        vals = [counts.get(c, 0) for c in classes]
        ax.bar(classes, vals, bottom=bottom, label=sp)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.set_ylabel("images")
    ax.legend()
    ax.tick_params(axis="x", rotation=30)
    plots.append(("Images per class and split", png_base64(fig)))
    plt.close(fig)

    if report["leak_auc"]:
        fig, ax = plt.subplots(figsize=(7, 2.8))
        names = list(report["leak_auc"])
        ax.barh(names, [report["leak_auc"][n] for n in names])
        ax.axvline(LEAK_AUC, color="red", linestyle="--", label=f"flag at {LEAK_AUC}")
        ax.set_xlim(0.4, 1.0)
        ax.set_xlabel("cross-validated AUC of the attribute alone")
        ax.legend()
        plots.append(("Metadata leakage", png_base64(fig)))
        plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(8, 2.8))
    for ax, attr, title in ((axes[0], "brightness", "brightness"), (axes[1], "border", "border colour")):
        for lab in classes:
            vals = [getattr(st, attr) for s, st in zip(samples, stats, strict=True) if s.label == lab]
            ax.hist(vals, bins=30, alpha=0.5, label=lab)
        ax.set_title(title)
    axes[0].legend(fontsize=7)
    plots.append(("Brightness and border colour by class", png_base64(fig)))
    plt.close(fig)

    rows = "".join(
        f"<tr class='{html.escape(f['severity'])}'><td>{html.escape(f['kind'])}</td>"
        f"<td>{html.escape(f['severity'])}</td><td>{f['count']}</td>"
        f"<td>{'<br>'.join(html.escape(str(e)) for e in f['examples'])}</td></tr>"
        for f in report["findings"]
    )
    figs = "".join(f"<h2>{html.escape(t)}</h2><img src='data:image/png;base64,{b}'>" for t, b in plots)
    verdict = (
        "BLOCKING: not usable for a production model unless a QA owner waives"
        if report["blocking"]
        else "no blocking finding"
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>Dataset {html.escape(version)} hygiene</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px;vertical-align:top;font-size:13px}"
        "tr.blocking td{background:#fdd}tr.warning td{background:#ffe}</style></head><body>"
        f"<h1>Dataset {html.escape(version)} ({html.escape(product)})</h1>"
        f"<p>{report['images']} images; {html.escape(verdict)}.</p>"
        f"<p>Checked and clean: {html.escape(', '.join(report.get('clean', [])) or 'none')}.</p>"
        f"<table><tr><th>kind</th><th>severity</th><th>count</th><th>examples</th></tr>{rows}</table>"
        f"{figs}<h2>Counts</h2><pre>{html.escape(_counts_text(report))}</pre></body></html>"
    )


def _counts_text(report: dict[str, Any]) -> str:
    import json

    keys = (
        "class_counts",
        "severity_counts",
        "by_split",
        "by_station",
        "by_batch",
        "seeded_holdout",
        "leak_auc",
        "seconds",
    )
    return json.dumps({k: report.get(k) for k in keys}, indent=1)
