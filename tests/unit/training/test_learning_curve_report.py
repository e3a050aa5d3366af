"""A dataset version's per-class learning curve: the engine's per-class fitting on a known law,
and the probe on a synthetic version (train and val only, never the holdout), drawn in HTML."""

from __future__ import annotations

from pathlib import Path

import pytest

from linesight.training.app.datasets import HOLDOUT, assign_splits, inspect_manifest
from linesight.training.app.learning import class_learning_curves, summary_rows, with_section
from linesight.vision.data.synth import generate_dataset
from linesight.vision.evaluation.learning_curve import per_class_learning_curves


def test_each_class_gets_its_own_curve_indexed_by_its_own_examples() -> None:
    labels = ["good"] * 80 + ["scratch"] * 40 + ["pit"] * 8
    seen: list[int] = []

    def fit_errors(idx: list[int]) -> dict[str, float]:
        seen.append(len(idx))
        n = {c: sum(1 for i in idx if labels[i] == c) for c in ("good", "scratch", "pit")}
        # scratch follows 2/sqrt(n) + 0.05 exactly; pit is flat (more data buys nothing)
        return {"scratch": 2.0 / n["scratch"] ** 0.5 + 0.05, "pit": 0.3, "good": 0.5 / n["good"]}

    curves = per_class_learning_curves(labels, fit_errors, fractions=(0.25, 0.5, 1.0))
    assert seen == [32, 64, 128]  # one fit per fraction, shared by every class
    assert curves["scratch"].sizes == [10, 20, 40] and curves["pit"].sizes == [2, 4, 8]
    assert curves["scratch"].predicted_error_at_double == pytest.approx(2.0 / 80**0.5 + 0.05, abs=0.01)
    scratch_gain = curves["scratch"].predicted_gain_from_doubling
    assert scratch_gain is not None and scratch_gain == pytest.approx(2 / 40**0.5 - 2 / 80**0.5, abs=0.01)
    assert curves["pit"].predicted_gain_from_doubling == pytest.approx(0.0, abs=1e-3)


def test_version_curve_reads_train_and_val_only_and_is_drawn(tmp_path: Path) -> None:
    root = generate_dataset(tmp_path / "s", n_good=40, per_class=24, seed=7, size=64,
                            classes=("scratch", "pit"), n_batches=1, n_stations=1)  # fmt: skip
    samples = inspect_manifest(root, None).samples
    split_of, _ = assign_splits(samples)
    with pytest.raises(ValueError, match="never the holdout"):
        class_learning_curves(samples, split_of)
    kept = [s for s in samples if split_of[s.image] != HOLDOUT]
    curve = class_learning_curves(kept, split_of, fractions=(0.5, 1.0))
    assert set(curve["classes"]) == {"good", "scratch", "pit"}
    assert curve["train_images"] + curve["val_images"] == len(kept)
    for c, k in curve["classes"].items():
        assert len(k["sizes"]) == 2 and k["sizes"][0] < k["sizes"][1], c
        assert all(0.0 <= e <= 1.0 for e in k["errors"])
        assert k["train_examples"] == k["sizes"][-1]
        assert k["predicted_error_at_double"] is not None
    rows = summary_rows(curve)
    assert len(rows) == 3 and all(" at " in r and "gain" in r for r in rows)
    page = with_section("<html><body><h1>x</h1></body></html>", curve)
    assert page.endswith("</body></html>") and "Learning curve per class" in page
    assert page.count("data:image/png;base64,") == 1 and "scratch" in page
