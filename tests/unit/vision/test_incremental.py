"""Adding a class from a few examples re-fits only the head (replay) and keeps old classes' recall."""

from __future__ import annotations

import time

import numpy as np
import pytest

from linesight.vision.components.scoring import softmax
from linesight.vision.model import InputError
from tests.unit.vision.engine_helpers import have_magnetic, magnetic_subset, small_model, synthetic

pytestmark = pytest.mark.dataset

OLD = ["blowhole", "break", "uneven"]


def _recall(model, imgs: list[np.ndarray], labels: list[str]) -> dict[str, float]:
    preds = model.predict(imgs)
    top = [max(p.class_probs, key=p.class_probs.get) for p in preds]
    return {c: float(np.mean([t == c for t, lab in zip(top, labels, strict=True) if lab == c])) for c in OLD}


def test_add_class_keeps_old_recall_on_real_tiles() -> None:
    if not have_magnetic():
        pytest.skip("../shared/datasets/magnetic_tile is absent: real-image incremental test skipped")
    from linesight.vision.model import InspectionModel

    train_x, train_y, used = magnetic_subset({"good": 40, "blowhole": 25, "break": 25, "uneven": 25}, seed=0)
    test_x, test_y, used2 = magnetic_subset(
        {"good": 15, "blowhole": 20, "break": 20, "uneven": 20}, seed=1, exclude=set(used)
    )
    new_x, _, used3 = magnetic_subset({"crack": 25}, seed=2, exclude=set(used) | set(used2))
    crack_test, _, _ = magnetic_subset({"crack": 12}, seed=3, exclude=set(used) | set(used2) | set(used3))
    model = InspectionModel.create(
        seed=0, input_size=(160, 160), min_examples=20, augment_copies=1, cv_folds=3
    )
    model.fit(train_x, train_y)
    before = _recall(model, test_x, test_y)
    t = time.perf_counter()
    rep = model.add_class(new_x, "crack")
    seconds = time.perf_counter() - t
    after = _recall(model, test_x, test_y)
    drop = float(np.mean(list(before.values())) - np.mean(list(after.values())))
    crack_top = [max(p.class_probs, key=p.class_probs.get) for p in model.predict(crack_test)]
    crack_recall = float(np.mean([t == "crack" for t in crack_top]))
    print(
        f"\nadd_class('crack', 25 images): {seconds:.1f} s; old-class recall before {before} after {after}; "
        f"mean drop {drop * 100:.2f} points; new-class recall {crack_recall:.2f} on 12 held-out cracks"
    )
    assert "crack" in model.classes and "crack" in rep.classes
    assert seconds <= 60.0
    assert drop <= 0.01
    assert crack_recall >= 0.5  # the new class is actually learned, not suppressed by the bias correction


def test_add_class_rejects_bad_requests() -> None:
    model, _, _ = small_model()
    rng = np.random.default_rng(0)
    imgs = [synthetic("spot", rng) for _ in range(3)]
    with pytest.raises(InputError, match="already"):
        model.add_class(imgs, "spot")
    with pytest.raises(InputError, match="at least 2"):
        model.add_class(imgs[:1], "dent")
    with pytest.raises(InputError, match="invalid"):
        model.add_class(imgs, "good")


def test_add_class_keeps_old_weight_rows_fixed() -> None:
    import copy

    base, _, _ = small_model()
    model = copy.deepcopy(base)
    old = {
        c: (model.head.weight[k].copy(), float(model.head.bias[k])) for k, c in enumerate(model.head.classes)
    }
    rng = np.random.default_rng(3)
    dents = []
    for _ in range(8):
        img = synthetic("good", rng)
        img[30:50, 40:70] = 250  # a bright rectangle: the new class
        dents.append(img)
    model.add_class(dents, "dent")
    assert "dent" in model.head.classes
    for k, c in enumerate(model.head.classes):
        if c in old:
            np.testing.assert_array_equal(model.head.weight[k], old[c][0])
            assert float(model.head.bias[k]) == old[c][1]
    top = [max(p.class_probs, key=p.class_probs.get) for p in model.predict(dents)]
    assert top.count("dent") >= 6  # the new class is learned


def test_warm_started_out_of_fold_fits_keep_the_cold_start_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    """The out-of-fold fits of the new row start from the full-data row only to save L-BFGS
    steps: on a fixed seed the out-of-fold figures (per-class recall, the bias shift, the defect
    threshold) are those of fits started from zeros."""
    import copy

    import linesight.vision.model.incremental as incremental
    from linesight.vision.components.heads import fit_new_class_row

    base, _, _ = small_model()
    rng = np.random.default_rng(5)
    dents = []
    for _ in range(8):
        img = synthetic("good", rng)
        img[30:50, 40:70] = 250
        dents.append(img)
    starts: list[bool] = []

    def record(*args, x0=None, **kw):  # type: ignore[no-untyped-def]
        starts.append(x0 is not None)
        return fit_new_class_row(*args, x0=x0, **kw)

    def cold(*args, x0=None, **kw):  # type: ignore[no-untyped-def]
        return fit_new_class_row(*args, **kw)

    warm_model = copy.deepcopy(base)
    monkeypatch.setattr(incremental, "fit_new_class_row", record)
    warm_model.add_class(dents, "dent")
    assert starts[0] is False and all(starts[1:]) and len(starts) > 2  # full fit cold, folds warm
    cold_model = copy.deepcopy(base)
    monkeypatch.setattr(incremental, "fit_new_class_row", cold)
    cold_model.add_class(dents, "dent")
    recalls = {k: v for k, v in cold_model.metrics.items() if k.startswith("cv_")}
    assert recalls and {k: warm_model.metrics[k] for k in recalls} == recalls
    assert warm_model.metrics["new_class_bias_shift"] == cold_model.metrics["new_class_bias_shift"]
    assert warm_model.state.defect_threshold == pytest.approx(cold_model.state.defect_threshold, abs=1e-3)
    # same decisions and probabilities; raw logits may differ where the new class is far below
    # the rest (a flat stretch of the loss that the L-BFGS tolerance leaves loosely pinned)
    warm_oof, cold_oof = warm_model.replay.oof, cold_model.replay.oof
    np.testing.assert_array_equal(warm_oof.argmax(axis=1), cold_oof.argmax(axis=1))
    t = cold_model.state.temperature
    np.testing.assert_allclose(softmax(warm_oof, t), softmax(cold_oof, t), atol=1e-3)
