"""Heads, calibration and augmentation: behaviour that the accuracy targets rest on."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from linesight.vision.components.calibrate import expected_calibration_error, fit_temperature
from linesight.vision.components.heads import cross_val_logits, fit_linear_head, fit_new_class_row
from linesight.vision.components.scoring import softmax
from linesight.vision.data.augment import augment_image
from linesight.vision.taxonomy import Augmentation, TaxonomyError


def _blobs(n: int, k: int, d: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (k, d))
    y = np.repeat(np.arange(k), n)
    return (centers[y] + rng.normal(0, 1, (n * k, d))).astype(np.float32), y


def test_multiclass_head_learns_separable_classes() -> None:
    x, y = _blobs(40, 3)
    head = fit_linear_head(x, y, ["good", "a", "b"])
    assert np.mean(np.argmax(head.logits(x), axis=1) == y) > 0.95


def test_binary_head_matches_sklearn_probabilities() -> None:
    x, y = _blobs(30, 2, seed=1)
    head = fit_linear_head(x, y, ["good", "a"], c=0.1)
    z = (x - head.mean) / head.scale
    ref = LogisticRegression(C=0.1, max_iter=1000, class_weight="balanced", random_state=0).fit(z, y)
    np.testing.assert_allclose(softmax(head.logits(x))[:, 1], ref.predict_proba(z)[:, 1], atol=1e-4)


def test_head_refuses_missing_classes() -> None:
    x, y = _blobs(10, 2)
    with pytest.raises(ValueError, match="lacks classes"):
        fit_linear_head(x, y, ["good", "a", "b"])


def test_out_of_fold_logits_keep_groups_together() -> None:
    x, y = _blobs(20, 2, seed=2)
    groups = np.arange(len(y)) // 2  # pairs (an image and its augmented copy)
    oof = cross_val_logits(x, y, groups, ["good", "a"], folds=4)
    assert oof.shape == (40, 2)
    assert np.mean(np.argmax(oof, axis=1) == y) > 0.9


def test_temperature_scaling_fixes_overconfidence() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    correct = rng.random(400) < 0.7  # a 70 %-accurate classifier ...
    pred = np.where(correct, y, 1 - y)
    logits = np.zeros((400, 2))
    logits[np.arange(400), pred] = 8.0  # ... claiming ~100 % confidence
    t = fit_temperature(logits, y)
    assert t > 3.0
    before = expected_calibration_error(softmax(logits).max(axis=1), correct)
    after = expected_calibration_error(softmax(logits, t).max(axis=1), correct)
    assert after < before / 3


def test_augmentation_keeps_shape_and_only_mild_photometry() -> None:
    rng = np.random.default_rng(0)
    img = (np.arange(64 * 80) % 251).astype(np.uint8).reshape(64, 80)
    for policy in (
        Augmentation(),
        Augmentation(rotation="limited", max_rotation_deg=10),
        Augmentation(rotation="none"),
    ):
        out = augment_image(img, policy, rng)
        assert out.shape == img.shape and out.dtype == np.uint8
    still = Augmentation(rotation="none", flips=False, elastic=False, brightness=0.0, contrast=0.0)
    np.testing.assert_array_equal(augment_image(img, still, rng), img)
    flat = np.full((32, 32), 128, np.uint8)
    for _ in range(20):
        out = augment_image(flat, Augmentation(rotation="none", flips=False, elastic=False), rng)
        assert abs(int(out.mean()) - 128) <= 0.1 * 255 + 1


def test_aggressive_photometric_policy_is_rejected() -> None:
    with pytest.raises(TaxonomyError, match="mild"):
        Augmentation(brightness=0.8)


def _new_class_problem(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Standardised features, fixed old-head logits, the new-class mask and old labels: three
    old classes and a new one, more dimensions than rows (as with the pooled descriptor)."""
    rng = np.random.default_rng(seed)
    n_old, n_new, d, k = 150, 30, 200, 3
    centers = rng.normal(0, 0.5, (k + 1, d))
    old_y = np.concatenate([rng.integers(0, k, n_old), np.full(n_new, -1)])
    is_new = np.arange(n_old + n_new) >= n_old
    z = centers[np.where(is_new, k, old_y)] + rng.normal(0, 1, (n_old + n_new, d))
    z = ((z - z.mean(0)) / z.std(0)).astype(np.float32)
    old_logits = z @ rng.normal(0, 0.05, (k, d)).T + rng.normal(0, 1, (n_old + n_new, k))
    return z, old_logits, is_new, old_y


def test_warm_started_new_class_row_reaches_the_fold_optimum() -> None:
    """Out-of-fold fits start from the full-data row: they must still end at their own fold's
    optimum (same tolerance as a cold start), not near the full-data row that saw the held-out
    rows; otherwise the out-of-fold logits would leak."""
    from sklearn.model_selection import StratifiedKFold

    z, old_logits, is_new, old_y = _new_class_problem()
    w, b = fit_new_class_row(z, old_logits, is_new, old_y, c=0.3)
    start = np.concatenate([w, [b]])
    strat = np.where(is_new, -1, old_y)
    for tr, te in StratifiedKFold(n_splits=5, shuffle=True, random_state=0).split(z, strat):
        wc, bc = fit_new_class_row(z[tr], old_logits[tr], is_new[tr], old_y[tr], c=0.3)
        ww, bw = fit_new_class_row(z[tr], old_logits[tr], is_new[tr], old_y[tr], c=0.3, x0=start)
        cold, warm, full = z[te] @ wc + bc, z[te] @ ww + bw, z[te] @ w + b
        gap = float(np.abs(warm - cold).max())
        assert gap < 2e-3 * (1.0 + float(np.abs(cold).max()))
        assert float(np.abs(full - cold).max()) > 50 * gap  # the start was far; the fit moved


def test_new_class_row_refuses_a_start_of_the_wrong_size() -> None:
    z, old_logits, is_new, old_y = _new_class_problem()
    with pytest.raises(ValueError, match="x0"):
        fit_new_class_row(z, old_logits, is_new, old_y, x0=np.zeros(z.shape[1]))
    with pytest.raises(ValueError, match="x0"):
        fit_new_class_row(z, old_logits, is_new, old_y, x0=np.full(z.shape[1] + 1, np.nan))
