"""PatchCore: bounded coreset, kNN scores that rank anomalies high, smooth full-size maps."""

from __future__ import annotations

import numpy as np

from linesight.vision.calibrate import threshold_at_frr
from linesight.vision.patchcore import PatchCore, PatchCoreConfig, anomaly_map, greedy_coreset


def test_greedy_coreset_picks_isolated_points() -> None:
    rng = np.random.default_rng(0)
    cluster = rng.normal(0, 0.01, (500, 4)).astype(np.float32)
    outliers = np.array([[5, 0, 0, 0], [0, 5, 0, 0], [0, 0, 5, 0]], dtype=np.float32)
    x = np.concatenate([cluster, outliers])
    idx = greedy_coreset(x, 4, rng)
    assert {500, 501, 502} <= set(idx.tolist())


def test_bank_is_capped_and_anomalous_patches_score_higher() -> None:
    rng = np.random.default_rng(1)
    good = rng.normal(0, 1, (30, 49, 16)).astype(np.float32)
    pc = PatchCore(PatchCoreConfig(max_bank=100, max_candidates=1000))
    pc.fit(good, seed=0)
    assert pc.bank.shape == (100, 16)
    assert pc.nbytes < 100 * 16 * 4 + 100 * 9 * 8 + 1
    test = rng.normal(0, 1, (2, 49, 16)).astype(np.float32)
    test[1, 10] += 8.0  # one anomalous patch
    patch_scores, image_scores = pc.score(test)
    assert int(np.argmax(patch_scores[1])) == 10
    assert image_scores[1] > image_scores[0]


def test_fit_is_seeded() -> None:
    good = np.random.default_rng(2).normal(0, 1, (10, 16, 8)).astype(np.float32)
    a, b = PatchCore(PatchCoreConfig(max_bank=20)), PatchCore(PatchCoreConfig(max_bank=20))
    a.fit(good, seed=3)
    b.fit(good, seed=3)
    np.testing.assert_array_equal(a.bank, b.bank)


def test_anomaly_map_is_float32_at_image_size_and_smooth() -> None:
    scores = np.zeros(64, dtype=np.float32)
    scores[27] = 10.0
    m = anomaly_map(scores, (8, 8), (100, 150), (64, 64), sigma=4.0, scale=2.0)
    assert m.shape == (100, 150) and m.dtype == np.float32
    assert 0 < m.max() < 5.0  # divided by the scale, spread by the blur
    assert np.unravel_index(int(np.argmax(m)), m.shape)[0] in range(35, 65)


def test_threshold_at_frr_rejects_at_most_the_target_share() -> None:
    s = np.arange(100, dtype=np.float64)
    thr = threshold_at_frr(s, 0.02)
    assert np.mean(s >= thr) <= 0.02
    assert np.mean(s >= thr) > 0.0  # not looser than needed
