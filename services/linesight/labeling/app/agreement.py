"""Inter-rater agreement on a shared sample: Cohen's kappa per pair and per class, Fleiss' kappa
for the group, and which classes people confuse. Labels a team cannot agree on teach a model
the disagreement, so these figures gate a taxonomy before its labels go to training."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa


@dataclass(frozen=True)
class PairKappa:
    rater_a: str
    rater_b: str
    kappa: float
    frames: int


@dataclass(frozen=True)
class AgreementFigures:
    frames: int  # frames every rater labeled (the ones the group figures use)
    raters: list[str]
    fleiss_kappa: float
    pairs: list[PairKappa]
    classes: dict[str, float]  # one-vs-rest Cohen's kappa, averaged over rater pairs
    confusion: list[tuple[str, str, int]]  # (label, other label, how often two raters split so)
    disagreement_by_class: dict[str, float] = field(default_factory=dict)
    disagreement_by_station: dict[str, float] = field(default_factory=dict)
    disagreement_by_part: dict[str, float] = field(default_factory=dict)
    disagreement_by_reviewer: dict[str, float] = field(default_factory=dict)


def _kappa(a: list[str], b: list[str]) -> float:
    """Cohen's kappa; 1.0 when both raters used one identical label throughout (sklearn says NaN:
    no variance, but they did agree on every frame)."""
    value = float(cohen_kappa_score(a, b))
    if math.isnan(value):
        return 1.0 if a == b else 0.0
    return value


def agreement(labels: Mapping[str, Mapping[str, str]]) -> AgreementFigures:
    """`labels[rater][frame] = label`. Pair figures use the frames both raters labeled; the group
    (Fleiss) figure uses the frames every rater labeled. Needs at least two raters."""
    raters = sorted(r for r, frames in labels.items() if frames)
    if len(raters) < 2:
        raise ValueError(f"agreement needs at least two raters with labels, got {raters}")
    pairs: list[PairKappa] = []
    per_class: dict[str, list[float]] = {}
    confusion: Counter[tuple[str, str]] = Counter()
    classes = sorted({lab for frames in labels.values() for lab in frames.values()})
    for a, b in combinations(raters, 2):
        common = sorted(set(labels[a]) & set(labels[b]))
        if not common:
            continue
        la = [labels[a][f] for f in common]
        lb = [labels[b][f] for f in common]
        pairs.append(PairKappa(a, b, _kappa(la, lb), len(common)))
        for cls in classes:
            per_class.setdefault(cls, []).append(
                _kappa([x == cls for x in la], [y == cls for y in lb])  # type: ignore[misc]
            )
        for x, y in zip(la, lb, strict=True):
            if x != y:
                confusion[tuple(sorted((x, y)))] += 1  # type: ignore[index]
    shared = sorted(set.intersection(*(set(labels[r]) for r in raters)))
    group = float("nan")
    if shared:
        table, _ = aggregate_raters(np.array([[labels[r][f] for r in raters] for f in shared], dtype=object))
        group = float(fleiss_kappa(table, method="fleiss"))
        if math.isnan(group):  # every rating the same label: perfect agreement, zero variance
            group = 1.0
    return AgreementFigures(
        frames=len(shared),
        raters=raters,
        fleiss_kappa=group,
        pairs=pairs,
        classes={c: float(np.mean(v)) for c, v in per_class.items()},
        confusion=[(a, b, n) for (a, b), n in confusion.most_common()],
    )


def pass_agreement(rows: Iterable[tuple[str, str, str, str]]) -> AgreementFigures:
    """Agreement of the two-pass workflow from (labeler, first label, reviewer, reviewed label)
    rows, one per second pass: the reviewed label is the first one when accepted, the correction
    when rejected. Every labeler/reviewer pair gets its Cohen's kappa over the frames it shared;
    the group figure is Fleiss' kappa over all rows (two ratings per frame, whoever gave them).
    Needs no shared sample: this is the figure the daily work produces anyway."""
    by_pair: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for labeler, first, reviewer, reviewed in rows:
        by_pair.setdefault((labeler, reviewer), []).append((first, reviewed))
    if not by_pair:
        raise ValueError("no reviewed first passes yet")
    pairs: list[PairKappa] = []
    per_class: dict[str, list[float]] = {}
    confusion: Counter[tuple[str, str]] = Counter()
    classes = sorted({lab for both in by_pair.values() for pair in both for lab in pair})
    for (labeler, reviewer), both in sorted(by_pair.items()):
        la, lb = [a for a, _ in both], [b for _, b in both]
        pairs.append(PairKappa(labeler, reviewer, _kappa(la, lb), len(both)))
        for cls in classes:
            per_class.setdefault(cls, []).append(
                _kappa([x == cls for x in la], [y == cls for y in lb])  # type: ignore[misc]
            )
        for x, y in both:
            if x != y:
                confusion[tuple(sorted((x, y)))] += 1  # type: ignore[index]
    ratings = [pair for both in by_pair.values() for pair in both]
    table, _ = aggregate_raters(np.array(ratings, dtype=object))
    group = float(fleiss_kappa(table, method="fleiss"))
    if math.isnan(group):  # every rating the same label: perfect agreement, zero variance
        group = 1.0
    return AgreementFigures(
        frames=len(ratings),
        raters=sorted({p for key in by_pair for p in key}),
        fleiss_kappa=group,
        pairs=pairs,
        classes={c: float(np.mean(v)) for c, v in per_class.items()},
        confusion=[(a, b, n) for (a, b), n in confusion.most_common()],
    )


def disagreement_rates(rows: Iterable[tuple[str, bool]]) -> dict[str, float]:
    """Share of rejected second passes per key, from (key, accepted) rows."""
    total: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    for key, accepted in rows:
        total[key] += 1
        if not accepted:
            rejected[key] += 1
    return {k: rejected[k] / n for k, n in sorted(total.items())}
