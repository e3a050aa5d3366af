"""Unit tests of the drift statistics (linesight.vision.drift): PSI and KS agree on a shift and
stay quiet on the same distribution, input statistics see a lamp change, embedding shift and audit
disagreement, and the baseline's round trip through the artifact file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from linesight.vision import drift


def test_psi_is_small_on_the_same_distribution_and_large_on_a_shift() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(0.0, 1.0, 2000)
    same = rng.normal(0.0, 1.0, 200)
    moved = rng.normal(1.0, 1.0, 200)
    assert drift.psi(ref, same) < 0.1
    assert drift.psi(ref, moved) > 0.5
    assert drift.ks(ref, same)[1] > 1e-3 and drift.ks(ref, moved)[1] < 1e-6
    # a window that falls entirely outside the reference range is large but finite
    assert np.isfinite(drift.psi(ref, np.full(50, 99.0)))
    with pytest.raises(ValueError):
        drift.psi([], [1.0])


def test_input_stats_follow_brightness_contrast_and_focus() -> None:
    rng = np.random.default_rng(1)
    img = np.clip(rng.normal(100, 30, (300, 400)), 0, 255).astype(np.uint8)
    s = drift.input_stats(img)
    assert s["brightness"] == pytest.approx(100 / 255, abs=0.01)
    assert s["contrast"] == pytest.approx(30 / 255, abs=0.01)
    brighter = drift.input_stats(np.clip(img.astype(np.int32) + 60, 0, 255).astype(np.uint8))
    assert brighter["brightness"] > s["brightness"] + 0.2
    import cv2

    soft = drift.input_stats(cv2.GaussianBlur(img, (0, 0), 3.0))
    assert soft["sharpness"] < 0.2 * s["sharpness"]
    colour = drift.input_stats(np.dstack([img, img, img]))
    assert colour["brightness"] == pytest.approx(s["brightness"], abs=1e-6)
    with pytest.raises(ValueError):
        drift.input_stats(np.zeros((0, 5), np.uint8))


def _window(
    rng: np.random.Generator, n: int, anomaly_shift: float = 0.0, bright: float = 0.5
) -> dict[str, list[float]]:
    return {
        "brightness": list(rng.normal(bright, 0.02, n)),
        "anomaly_score": list(rng.gamma(4.0, 0.1, n) + anomaly_shift),
        "confidence": list(rng.beta(20, 2, n)),
    }


def test_assess_is_quiet_on_a_clean_window_and_names_what_moved() -> None:
    rng = np.random.default_rng(2)
    baseline = drift.Baseline.from_records(_window(rng, 500))
    for _ in range(20):  # twenty clean windows, no false alarm
        assert not drift.assess(baseline, _window(rng, 200)).drifted
    lamp = drift.assess(baseline, _window(rng, 200, bright=0.6))
    assert [f.kind for f in lamp.findings] == ["brightness"]
    assert not lamp.retrain_recommended  # an input-only shift is a camera check first
    assert lamp.evidence["psi_brightness"] > 0.25 and lamp.evidence["ks_p_brightness"] < 1e-3
    shifted = drift.assess(baseline, _window(rng, 200, anomaly_shift=0.3))
    assert "anomaly_score" in {f.kind for f in shifted.findings} and shifted.retrain_recommended
    # too few frames say nothing
    assert not drift.assess(baseline, _window(rng, 10, bright=0.9)).drifted


def test_embedding_shift_and_audit_disagreement() -> None:
    rng = np.random.default_rng(3)
    ref = rng.normal(0, 1, (400, 16))
    assert drift.embedding_shift(ref, rng.normal(0, 1, (200, 16))) < 0.2
    assert drift.embedding_shift(ref, rng.normal(0.5, 1, (200, 16))) > 0.4
    baseline = drift.Baseline.from_records(_window(rng, 300), embeddings=ref)
    moved = drift.assess(baseline, _window(rng, 200), embeddings=rng.normal(1.0, 1, (200, 16)))
    assert [f.kind for f in moved.findings] == ["embedding"] and moved.retrain_recommended
    quiet = drift.assess(baseline, _window(rng, 200), audit_outcomes=[False] * 45 + [True] * 5)
    assert not quiet.drifted and quiet.evidence["audit_disagreement"] == pytest.approx(0.1)
    overruled = drift.assess(baseline, _window(rng, 200), audit_outcomes=[False] * 30 + [True] * 20)
    assert [f.kind for f in overruled.findings] == ["audit_disagreement"]


def test_baseline_round_trips_through_the_artifact_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    b = drift.Baseline.from_records(_window(rng, 100), embeddings=rng.normal(0, 1, (10, 4)))
    b.audit_disagreement = 0.03
    path = tmp_path / drift.DRIFT_REFERENCE_FILE
    b.save(path)
    back = drift.Baseline.load(path)
    assert back.source == "artifact" and back.audit_disagreement == pytest.approx(0.03)
    assert set(back.samples) == set(b.samples)
    np.testing.assert_allclose(back.samples["confidence"], b.samples["confidence"])
    assert back.embeddings is not None and back.embeddings.shape == (10, 4)
