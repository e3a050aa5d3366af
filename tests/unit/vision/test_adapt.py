"""update_from_reviews: a session's confirmed frames change the model where it was wrong, known
and new classes take their paths, and the export scores novelty like the model (synthetic data,
seconds)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from linesight.vision.export import ExportedModel
from linesight.vision.export.writer import export_model
from linesight.vision.model import InputError, InspectionModel
from linesight.vision.selection import ReviewSelector, SelectionConfig
from tests.unit.vision.engine_helpers import small_model, synthetic


def _strip(rng: np.random.Generator, label: str) -> np.ndarray:
    """A new session's look: a bright strip along one edge (good tiles that score like defects)."""
    im = synthetic(label, rng).astype(np.float32)
    im[:, : im.shape[1] // 6] += 90
    return np.clip(im, 0, 255).astype(np.uint8)


@pytest.fixture()
def model() -> InspectionModel:
    return copy.deepcopy(small_model()[0])


def _frr(model: InspectionModel, goods: list[np.ndarray]) -> float:
    return float(np.mean([p.is_defect for p in model.predict(goods)]))


def test_confirmed_false_rejects_stop_being_rejected(model: InspectionModel, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    review_goods = [_strip(rng, "good") for _ in range(10)]
    review_spots = [_strip(rng, "spot") for _ in range(4)]
    held_goods = [_strip(rng, "good") for _ in range(20)]
    held_spots = [_strip(rng, "spot") for _ in range(10)]
    plain_goods = [synthetic("good", rng) for _ in range(10)]
    before = _frr(model, held_goods)
    novelty_before = np.mean([p.novelty for p in model.predict(held_goods)])
    assert before >= 0.5  # the premise: this session's good tiles are rejected
    bank_before = len(model.patchcore.bank)
    version = model.version
    report = model.update_from_reviews(review_goods + review_spots, ["good"] * 10 + ["spot"] * 4)
    after = _frr(model, held_goods)
    print(f"\nstrip session: FRR {before:.2f} -> {after:.2f}; update {report.seconds:.1f} s {report.timings}")
    assert after <= 0.2
    assert np.mean([not p.is_defect for p in model.predict(held_spots)]) <= 0.2  # spots still caught
    assert _frr(model, plain_goods) <= 0.1
    assert np.mean([p.novelty for p in model.predict(held_goods)]) < novelty_before
    assert report.used == {"good": 10, "spot": 4} and report.deferred == [] and report.new_classes == []
    assert report.bank_rows_added > 0 and len(model.patchcore.bank) == bank_before + report.bank_rows_added
    assert model.version != version and report.version == model.version
    # the updated model saves and loads like a fitted one (the training service publishes it)
    loaded = InspectionModel.load(model.save(tmp_path / "updated"))
    a, b = model.predict(held_goods[:4]), loaded.predict(held_goods[:4])
    for pa, pb in zip(a, b, strict=True):
        assert pa.defect_probability == pytest.approx(pb.defect_probability, abs=1e-3)
        assert pa.novelty == pytest.approx(pb.novelty, rel=1e-2)


def test_new_class_goes_through_add_class_and_a_lone_example_waits(model: InspectionModel) -> None:
    rng = np.random.default_rng(4)
    dents = [synthetic("scratch", rng) for _ in range(3)]
    report = model.update_from_reviews([*dents, synthetic("good", rng)], ["dent", "dent", "dent", "good"])
    assert report.new_classes == ["dent"] and "dent" in model.classes
    lone = model.update_from_reviews([synthetic("spot", rng), synthetic("scratch", rng)], ["spot", "smear"])
    assert lone.deferred == [1] and lone.used == {"spot": 1} and "smear" not in model.classes
    with pytest.raises(InputError):
        model.update_from_reviews([synthetic("good", rng)], ["good", "good"])


def test_export_gives_the_same_novelty_and_selection_reads_it(model: InspectionModel, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    frames = [_strip(rng, "good") for _ in range(3)] + [synthetic("good", rng) for _ in range(3)]
    exported = ExportedModel.load(export_model(model, tmp_path / "export"))
    a, b = model.predict(frames), exported.predict(frames)
    for pa, pb in zip(a, b, strict=True):
        assert pa.novelty == pytest.approx(pb.novelty, rel=1e-3)
    assert min(p.novelty for p in a[:3]) > max(p.novelty for p in a[3:])  # the new look is novel
    routing = ReviewSelector(
        SelectionConfig(
            band_logit=0.0,
            anomaly_high=1e9,
            audit_pass_rate=0.0,
            audit_reject_rate=0.0,
            rate_cap=1.0,
            burst=10,
            novelty_threshold=float(np.median([p.novelty for p in a])),
        )
    ).select(a)
    assert set(routing.routed) <= {0, 1, 2} and routing.routed
    assert all(r == "novel" for r in routing.reasons if r)


def _oof_model(defect_p: np.ndarray, labels: list[str]) -> Any:
    """What ``adapt._session_operating_point`` reads of a model: replay rows whose out-of-fold
    logits give ``defect_p`` (softmax at temperature 1), good and one defect class."""
    from types import SimpleNamespace

    from linesight.vision.components.scoring import ScoringState
    from linesight.vision.model.config import ModelConfig
    from linesight.vision.model.state import ReplayStore

    logit = np.log(defect_p / (1 - defect_p))
    oof = np.stack([np.zeros_like(logit), logit], axis=1)
    n = len(labels)
    replay = ReplayStore.of(np.zeros((n, 2)), labels, np.arange(n), np.ones(n, bool)).with_oof(oof)
    state = ScoringState(["good", "crack"], 1.0, 1.0, 0.5, (8, 8), (1, 1), 1.0)
    return SimpleNamespace(state=state, replay=replay, config=ModelConfig(), target_frr=0.02)


def test_session_goods_weigh_in_the_operating_point() -> None:
    """After an update the defect threshold is re-derived with the session's reviewed good frames
    at a share of the good mass (``SESSION_SHARE``): three session goods scoring 0.6 out of fold
    are 3 % of the goods unweighted (within the false-reject cap, so the threshold stays below
    them to catch two defects at 0.45), but at a tenth of the mass they move it above them."""
    from linesight.vision.components.calibrate import balanced_threshold
    from linesight.vision.model import adapt

    rng = np.random.default_rng(0)
    defects = np.r_[[0.45, 0.45], rng.uniform(0.8, 0.99, 48)]  # two defects score below them
    defect_p = np.r_[rng.uniform(0.01, 0.3, 100), defects, [0.6, 0.6, 0.6]]
    labels = ["good"] * 100 + ["crack"] * 50 + ["good"] * 3
    model = _oof_model(defect_p, labels)
    n = len(labels)
    good = np.array([lab == "good" for lab in labels])
    plain = balanced_threshold(defect_p[good], defect_p[~good], 0.04)
    assert plain < 0.45  # the premise: unweighted, the session's goods stay false rejects
    weighted = adapt._session_operating_point(model, 150, 0.1)
    assert weighted is not None and 0.6 < weighted < 0.8
    assert adapt._session_operating_point(model, 150, 0.0) is None
    assert adapt._session_operating_point(model, n, 0.1) is None  # no session goods


def test_a_few_reviewed_frames_do_not_each_outweigh_dozens_of_training_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Five reviewed goods, two of them scoring like defects out of fold (a tile labelled good in
    this session and a defect in others): at a tenth of the good mass each would weigh as much as
    six training goods, and the false-reject cap would lift the threshold over the training side's
    good tail and a tenth of its defects. Capped at ``SESSION_ROW_WEIGHT`` training rows each,
    the two stay false rejects and the threshold stays below those defects."""
    from linesight.vision.model import adapt

    rng = np.random.default_rng(2)
    train_good = np.r_[rng.uniform(0.01, 0.3, 294), np.linspace(0.5, 0.8, 6)]  # a 2 % tail
    train_defect = np.r_[rng.uniform(0.35, 0.6, 20), rng.uniform(0.85, 0.99, 180)]
    session_good = np.array([0.999, 0.96, 0.05, 0.04, 0.03])
    defect_p = np.r_[train_good, train_defect, session_good]
    labels = ["good"] * 300 + ["crack"] * 200 + ["good"] * 5
    model = _oof_model(defect_p, labels)
    capped = adapt._session_operating_point(model, 500, 0.1)
    assert capped is not None and capped < 0.6
    monkeypatch.setattr(adapt, "SESSION_ROW_WEIGHT", 1e9)  # the premise: uncapped, the share lifts it
    uncapped = adapt._session_operating_point(model, 500, 0.1)
    assert uncapped is not None and uncapped > 0.8  # over every defect scoring 0.35-0.6


def test_session_defects_weigh_in_the_operating_point() -> None:
    """A confirmed escape of the session (a defect scoring 0.4 out of fold) is one defect in fifty
    among the training side's, so the threshold stays above it; at ``DEFECT_SESSION_SHARE`` of the
    defect mass it pulls the threshold under itself, at the cost of three training goods at 0.5
    (within the false-reject cap)."""
    from linesight.vision.model import adapt

    rng = np.random.default_rng(1)
    defect_p = np.r_[rng.uniform(0.01, 0.3, 97), [0.5, 0.5, 0.5], rng.uniform(0.8, 0.99, 49), [0.4]]
    labels = ["good"] * 100 + ["crack"] * 50
    model = _oof_model(defect_p, labels)
    n = len(labels)
    first = n - 1  # the last row is the session's
    plain = adapt._session_operating_point(model, first, 0.0, 0.02)
    assert plain is not None and 0.5 < plain < 0.8
    weighted = adapt._session_operating_point(model, first, 0.0, 0.3)
    assert weighted is not None and 0.3 < weighted <= 0.4
    assert adapt._session_operating_point(model, first, 0.0, 0.0) is None


def test_good_copies_are_duplicates_when_not_augmented(
    model: InspectionModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``AUGMENT_GOOD_COPIES`` off a confirmed good adds exact duplicates of its descriptor
    (the training side's goods are never augmented), while a defect still adds augmented copies."""
    from linesight.vision.model import adapt

    monkeypatch.setattr(adapt, "AUGMENT_GOOD_COPIES", False)
    rng = np.random.default_rng(6)
    n0 = len(model.replay)
    model.update_from_reviews([_strip(rng, "good"), _strip(rng, "spot")], ["good", "spot"], session_weight=2)
    rp = model.replay
    labels = rp.labels[n0:]
    x = rp.x[n0:]
    assert len(labels) == 6 and list(rp.original[n0:]) == [True, True, False, False, False, False]
    good_orig = x[0]
    good_copies = [x[k] for k in range(2, 6) if labels[k] == "good"]
    spot_copies = [x[k] for k in range(2, 6) if labels[k] == "spot"]
    assert len(good_copies) == 2 and len(spot_copies) == 2
    assert all(np.array_equal(c, good_orig) for c in good_copies)
    assert not any(np.array_equal(c, x[1]) for c in spot_copies)  # augmented, not copied
    assert len(set(rp.groups[n0:][[0, *[k for k in range(2, 6) if labels[k] == "good"]]])) == 1
