"""Agreement of the two-pass workflow: each labeler against the reviewer who checked them."""

from __future__ import annotations

import pytest
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

from linesight.labeling.app.agreement import pass_agreement

# (labeler, first pass, reviewer, what the review settled on)
ROWS = [
    ("ann", "scratch", "bob", "scratch"),
    ("ann", "crack", "bob", "crack"),
    ("ann", "pit", "bob", "pit"),
    ("ann", "stain", "bob", "stain"),
    ("ann", "stain", "bob", "pit"),
    ("cat", "good", "bob", "good"),
    ("cat", "crack", "bob", "scratch"),
    ("cat", "good", "bob", "good"),
]


def test_kappa_per_labeler_reviewer_pair() -> None:
    figures = pass_agreement(ROWS)
    pairs = {(p.rater_a, p.rater_b): (p.frames, p.kappa) for p in figures.pairs}
    assert set(pairs) == {("ann", "bob"), ("cat", "bob")}  # never the two labelers with each other
    for (labeler, reviewer), (frames, kappa) in pairs.items():
        mine = [(f, r) for lab, f, rev, r in ROWS if (lab, rev) == (labeler, reviewer)]
        assert frames == len(mine)
        assert kappa == pytest.approx(cohen_kappa_score([f for f, _ in mine], [r for _, r in mine]))
    assert figures.raters == ["ann", "bob", "cat"] and figures.frames == len(ROWS)
    table, _ = aggregate_raters([[f, r] for _, f, _, r in ROWS])
    assert figures.fleiss_kappa == pytest.approx(fleiss_kappa(table, method="fleiss"))
    assert {(a, b): n for a, b, n in figures.confusion} == {("pit", "stain"): 1, ("crack", "scratch"): 1}


def test_full_agreement_on_one_class_is_one_and_nothing_reviewed_is_an_error() -> None:
    same = pass_agreement([("ann", "good", "bob", "good")] * 3)
    assert [p.kappa for p in same.pairs] == [1.0] and same.fleiss_kappa == 1.0
    with pytest.raises(ValueError, match="no reviewed first passes"):
        pass_agreement([])
