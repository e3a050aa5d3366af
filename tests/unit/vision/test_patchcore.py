"""PatchCore: bounded coreset, kNN scores that rank anomalies high, smooth full-size maps."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from linesight.vision.components import patchcore
from linesight.vision.components.calibrate import balanced_threshold, threshold_at_frr
from linesight.vision.components.patchcore import PatchCore, PatchCoreConfig, anomaly_map, greedy_coreset


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


@pytest.mark.parametrize("search", ["onnxruntime-1", "onnxruntime-2", "blas"])
def test_batched_knn_matches_brute_force(
    search: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The same neighbours and scores from onnxruntime (1 or 2 workers) and, where onnxruntime
    cannot build the search, from BLAS, which says so."""
    if search == "blas":

        def refuse(*_args: object) -> None:
            raise RuntimeError("no onnxruntime here")

        monkeypatch.setattr(patchcore, "_onnx_search", refuse)
    rng = np.random.default_rng(4)
    good = rng.normal(0, 1, (20, 36, 12)).astype(np.float32)
    threads = int(search.rpartition("-")[2]) if search != "blas" else None
    pc = PatchCore(PatchCoreConfig(max_bank=64, max_candidates=2000, score_chunk=50), threads=threads)
    pc.fit(good, seed=0)
    caplog.set_level(logging.WARNING, logger=patchcore.__name__)
    test = rng.normal(0, 1.3, (5, 36, 12)).astype(np.float32)
    patch_scores, image_scores = pc.score(test)
    d = np.sqrt(((test[:, :, None, :] - pc.bank[None, None]) ** 2).sum(-1))  # [B, P, M]
    np.testing.assert_allclose(patch_scores, d.min(-1), rtol=1e-4, atol=1e-4)
    for i in range(len(test)):
        star = int(np.argmax(d[i].min(-1)))
        neigh = pc.bank_nn[int(np.argmin(d[i, star]))]
        dn = d[i, star, neigh].astype(np.float64)
        e = np.exp(dn - dn.max())
        assert image_scores[i] == pytest.approx(d[i, star].min() * (1 - e[0] / e.sum()), rel=1e-4)
    fell_back = any("through BLAS" in r.getMessage() for r in caplog.records)
    assert fell_back == (search == "blas")


def test_balanced_threshold_trades_false_rejects_for_escapes() -> None:
    rng = np.random.default_rng(5)
    good = 1 / (1 + np.exp(-rng.normal(-4, 2.0, 300)))
    defect = 1 / (1 + np.exp(-rng.normal(1.0, 2.0, 200)))
    thr = balanced_threshold(good, defect, 0.04)
    frr, esc = np.mean(good >= thr), np.mean(defect < thr)
    q = threshold_at_frr(good, 0.02)
    assert frr <= 0.04
    # no worse than the plain 2 % FRR quantile on the larger of the two error rates
    assert max(frr, esc) <= max(np.mean(good >= q), np.mean(defect < q))
    # separable scores: the threshold sits between the two groups, away from both
    sep = balanced_threshold(np.array([0.01, 0.02, 0.05]), np.array([0.9, 0.95]), 0.04)
    assert 0.05 < sep < 0.9
    # weighted goods: a heavy high-scoring good pushes the threshold above it
    w = balanced_threshold(
        np.array([0.1, 0.2, 0.8]), np.array([0.7, 0.9]), 0.04, good_weights=np.array([1, 1, 2])
    )
    assert w > 0.8


def test_balanced_threshold_weighs_defects() -> None:
    """A defect scoring under three goods is one escape in fifty unweighted (2 %, less than the
    goods' 3 % false rejects, so the threshold stays above the goods); weighted to 30 % of the
    defect mass (a session's confirmed escape) it pulls the threshold under itself."""
    rng = np.random.default_rng(3)
    good = np.r_[rng.uniform(0.01, 0.2, 97), [0.3, 0.3, 0.3]]
    defect = np.r_[[0.25], rng.uniform(0.8, 0.99, 49)]
    plain = balanced_threshold(good, defect, 0.04)
    assert 0.3 < plain < 0.8
    wd = np.r_[[0.3], np.full(49, 0.7 / 49)]
    weighted = balanced_threshold(good, defect, 0.04, defect_weights=wd)
    assert 0.2 < weighted <= 0.25
    # uniform weights are the unweighted rule
    assert balanced_threshold(good, defect, 0.04, defect_weights=np.ones(50)) == pytest.approx(plain)
