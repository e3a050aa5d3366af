"""Heads, calibration and augmentation: behaviour that the accuracy targets rest on."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from linesight.vision.components.calibrate import expected_calibration_error, fit_temperature
from linesight.vision.components.heads import cross_val_logits, fit_linear_head
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
