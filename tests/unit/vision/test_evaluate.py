"""evaluate: each figure checked against a hand computation or a brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from linesight.vision.evaluation.metrics import (
    aupro,
    classification_metrics,
    cross_validate,
    cv_folds,
    detection_metrics,
    expected_calibration_error,
    image_auroc,
    pixel_auroc,
    rates_at_threshold,
    recall_at_frr,
)


def test_recall_at_frr_rejects_at_most_the_allowed_goods() -> None:
    good = np.arange(100, dtype=float) / 100  # 0.00 .. 0.99
    bad = np.array([0.5, 0.975, 0.985, 0.995, 2.0])
    y = np.r_[np.zeros(100, bool), np.ones(5, bool)]
    s = np.r_[good, bad]
    recall, thr = recall_at_frr(y, s, 0.02)
    assert thr is not None and recall is not None
    frr, _ = rates_at_threshold(y, s, thr)
    assert frr == pytest.approx(0.02)  # 0.98 and 0.99 rejected, 0.97 not
    assert recall == pytest.approx(4 / 5)  # all but 0.5 lie above the third-highest good (0.97)
    assert recall_at_frr(np.zeros(3, bool), [1.0, 2.0, 3.0]) == (None, None)


def test_rates_at_threshold() -> None:
    y = [False, False, False, False, True, True]
    s = [0.1, 0.2, 0.9, 1.0, 0.5, 1.5]
    assert rates_at_threshold(y, s, 1.0) == (0.25, 0.5)


def test_detection_metrics_null_without_goods() -> None:
    out = detection_metrics([True, True], [0.3, 0.8], threshold=1.0)
    assert set(out) >= {"image_auroc", "recall_at_frr_2pct", "threshold", "false_reject_rate", "escape_rate"}
    assert all(v is None for v in out.values())
    full = detection_metrics([False, True], [0.1, 0.9], threshold=0.5)
    assert full["image_auroc"] == 1.0 and full["false_reject_rate"] == 0.0 and full["escape_rate"] == 0.0
    assert image_auroc([False, True, False, True], [0.1, 0.2, 0.3, 0.4]) == 0.75


def test_bad_scores_rejected() -> None:
    with pytest.raises(ValueError, match="NaN"):
        image_auroc([False, True], [0.1, float("nan")])
    with pytest.raises(ValueError, match="equally long"):
        image_auroc([False, True], [0.1])


def test_classification_metrics_and_confusions() -> None:
    y = ["a", "a", "a", "b", "b", "c"]
    p = ["a", "a", "b", "b", "good", "c"]
    m = classification_metrics(y, p, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class"]["a"] == {
        "precision": 1.0,
        "recall": pytest.approx(2 / 3),
        "f1": pytest.approx(0.8),
        "support": 3,
    }
    assert m["per_class"]["b"]["precision"] == 0.5
    assert m["labels"] == ["a", "b", "c", "good"]  # "good" on a defect image is a miss, shown as a column
    assert m["top_confusions"][0] in (["a", "b", 1], ["b", "good", 1])
    with pytest.raises(ValueError, match="not among"):
        classification_metrics(["x"], ["a"], ["a"])


def test_ece() -> None:
    assert expected_calibration_error([1.0, 1.0], [True, True]) == 0.0
    assert expected_calibration_error([0.9] * 10, [True] * 5 + [False] * 5) == pytest.approx(0.4)
    with pytest.raises(ValueError):
        expected_calibration_error([1.2], [True])


def _aupro_bruteforce(masks: list[np.ndarray], maps: list[np.ndarray], limit: float) -> float:
    thresholds = np.unique(np.concatenate([h.ravel() for h in maps]))[::-1]
    neg = np.concatenate([~m.ravel() for m in masks])
    regions = []
    for m in masks:
        lab, n = ndimage.label(m, structure=np.ones((3, 3)))
        regions += [(len(regions), lab == k) for k in range(1, n + 1)]
    fprs, pros = [0.0], [0.0]
    for t in thresholds:
        pred = [h >= t for h in maps]
        fp = np.concatenate([(p & ~m).ravel() for p, m in zip(pred, masks, strict=True)]).sum()
        fprs.append(fp / neg.sum())
        region_img = [i for i, m in enumerate(masks) for _ in range(ndimage.label(m, np.ones((3, 3)))[1])]
        pros.append(np.mean([pred[region_img[r]][reg].mean() for r, reg in regions]))
    f, p = np.array(fprs), np.array(pros)
    keep = f <= limit
    i = keep.sum()
    p_lim = p[i - 1] + (p[i] - p[i - 1]) * (limit - f[i - 1]) / (f[i] - f[i - 1])
    return float(np.trapz(np.r_[p[keep], p_lim], np.r_[f[keep], limit]) / limit)


def test_aupro_matches_bruteforce_and_extremes() -> None:
    rng = np.random.default_rng(0)
    masks, maps = [], []
    for k in range(3):
        m = np.zeros((12, 12), bool)
        if k < 2:
            m[2:5, 2:6] = True
            m[8:11, 7 + k : 10] = True
        h = rng.random((12, 12)).astype(np.float32) + 0.6 * m
        masks.append(m)
        maps.append(h)
    got = aupro(masks, maps)
    assert got == pytest.approx(_aupro_bruteforce(masks, maps, 0.3), abs=1e-9)
    perfect = [m.astype(np.float32) + 0.01 * rng.random(m.shape) for m in masks]
    assert aupro(masks, perfect) == pytest.approx(1.0, abs=0.02)
    assert pixel_auroc(masks, perfect) == pytest.approx(1.0)
    assert aupro([np.zeros((4, 4), bool)], [np.zeros((4, 4))]) is None


def test_cv_folds_small_classes_leave_one_out_and_groups_intact() -> None:
    labels = ["good"] * 80 + ["crack"] * 6 + ["rare"]
    groups = [f"g{i // 2}" for i in range(80)] + [f"c{i}" for i in range(6)] + ["r0"]
    folds = cv_folds(labels, groups, small_class=60, seed=1)
    assert len(folds) == 6  # crack has 6 parts: leave one out each
    tested = sorted(i for _, test in folds for i in test)
    assert tested == list(range(86))  # everything tested once except the single-part class
    for train, test in folds:
        assert sum(labels[i] == "crack" for i in test) == 1
        assert not {groups[i] for i in train} & {groups[i] for i in test}
        assert 86 in train
    big = cv_folds(["a"] * 70 + ["b"] * 70, [str(i) for i in range(140)], n_splits=5)
    assert len(big) == 5 and all(len(t) == 28 for _, t in big)
    assert cv_folds(labels, groups, seed=1) == folds  # seeded


def test_cross_validate_with_a_callable() -> None:
    labels = ["a"] * 10 + ["b"] * 10
    groups = [str(i) for i in range(20)]
    features = [0.0] * 10 + [1.0] * 10
    calls = []

    def fit_predict(train: list[int], test: list[int]) -> list[str]:
        calls.append(len(train))
        mean_a = np.mean([features[i] for i in train if labels[i] == "a"])
        mean_b = np.mean([features[i] for i in train if labels[i] == "b"])
        return ["a" if abs(features[i] - mean_a) < abs(features[i] - mean_b) else "b" for i in test]

    res = cross_validate(labels, groups, fit_predict, seed=0)
    assert res.folds == 10 and len(calls) == 10
    assert res.metrics["accuracy"] == 1.0 and len(res.predictions) == 20
