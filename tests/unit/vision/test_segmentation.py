"""Supervised localisation: the segmentation head learns where defects are from masks, its map
survives save/load and export, and older models without one still load."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from linesight.vision.components.segmentation import (
    BACKGROUND,
    SegmentationHead,
    box_mask,
    patch_coverage,
    patch_features,
)
from linesight.vision.components.segmentation_fit import fit_segmentation
from linesight.vision.evaluation.metrics import pixel_auroc
from linesight.vision.export import ExportedModel
from linesight.vision.export.writer import export_model
from linesight.vision.model import InspectionModel


def test_head_learns_the_defect_patches_and_fuses_patchcore_for_unknown_classes() -> None:
    rng = np.random.default_rng(0)
    n, p, c = 40, 36, 8
    patches = rng.normal(0, 1, (n, p, c)).astype(np.float32)
    labels = ["good"] * 20 + ["spot"] * 20
    coverage: list[np.ndarray | None] = [None] * 20
    for i in range(20, 40):
        cov = np.zeros(p, np.float32)
        cells = rng.choice(p, 4, replace=False)
        cov[cells] = 1.0
        patches[i, cells, 0] += 4.0  # the defect shows in one feature
        coverage.append(cov)
    scores = np.abs(rng.normal(0.5, 0.2, (n, p))).astype(np.float32)
    head = fit_segmentation(patches, scores, labels, coverage, seed=0)
    assert head is not None and head.classes == [BACKGROUND, "spot"]
    assert head.n_parameters == 2 * (2 * c + 1) + 2
    heat, prob = head.fused(patches[20:], scores[20:])
    assert prob.shape == (20, p, 2) and heat.shape == (20, p)
    truth = np.stack([cv for cv in coverage[20:] if cv is not None]) > 0.5
    assert heat[truth].mean() > 1.0 > heat[~truth].mean()
    # an image the head calls "scratch" (no geometry) gets PatchCore's map back
    hot = np.full((1, p), 5.0, np.float32)
    alone, _ = head.fused(patches[:1], hot)
    fused, _ = head.fused(patches[:1], hot, [{"good": 0.1, "spot": 0.0, "scratch": 0.9}])
    assert fused.mean() > alone.mean() + 3.0
    again = SegmentationHead.from_arrays(head.meta(), head.arrays())
    np.testing.assert_allclose(again.proba(patches[:3], scores[:3]), head.proba(patches[:3], scores[:3]))
    assert fit_segmentation(patches, scores, labels, [None] * n) is None


def test_boxes_and_coverage() -> None:
    m = box_mask([["crazing", 10, 20, 30, 40]], (64, 64))
    assert m.sum() == 400 and m[20, 10] and not m[40, 30]
    cov = patch_coverage(m, (8, 8))
    assert cov.shape == (64,) and cov.max() == pytest.approx(1.0) and cov.min() == 0.0


def _tile(rng: np.random.Generator, label: str) -> tuple[np.ndarray, np.ndarray]:
    img = np.clip(cv2.GaussianBlur(rng.normal(128, 20, (96, 96)).astype(np.float32), (0, 0), 2), 0, 255)
    img = img.astype(np.uint8)
    mask = np.zeros((96, 96), np.uint8)
    if label == "spot":
        cx, cy = (int(v) for v in rng.integers(20, 76, 2))
        cv2.circle(img, (cx, cy), 8, (20,), -1)
        cv2.circle(mask, (cx, cy), 8, (1,), -1)
    return img, mask.astype(bool)


@pytest.fixture(scope="module")
def fitted() -> tuple[InspectionModel, list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(3)
    data = [_tile(rng, lab) for lab in ["good"] * 24 + ["spot"] * 10]
    imgs, masks = [d[0] for d in data], [d[1] for d in data]
    labels = ["good"] * 24 + ["spot"] * 10
    model = InspectionModel.create(
        seed=0, input_size=(96, 96), min_examples=6, augment_copies=1, cv_folds=3, finetune_blocks=0
    )
    report = model.fit(
        imgs, labels, masks=[m if lab != "good" else None for m, lab in zip(masks, labels, strict=True)]
    )
    assert "segmentation" in report.timings
    test = [_tile(rng, lab) for lab in ["good"] * 6 + ["spot"] * 6]
    return model, [t[0] for t in test], [t[1] for t in test]


def test_fit_with_masks_localises_and_survives_save_and_export(
    fitted: tuple[InspectionModel, list[np.ndarray], list[np.ndarray]], tmp_path: Path
) -> None:
    model, imgs, masks = fitted
    state = model.require_fitted()
    assert state.segmentation is not None and state.segmentation.geometry_classes == ["spot"]
    preds = model.predict(imgs)
    auroc = pixel_auroc(masks, [p.heatmap for p in preds])
    assert auroc is not None and auroc > 0.9
    assert preds[-1].segmentation is not None and preds[-1].segmentation_classes[1] == "spot"
    loaded = InspectionModel.load(model.save(tmp_path / "saved"))
    exported = ExportedModel.load(export_model(model, tmp_path / "export"))
    for other in (loaded.predict(imgs), exported.predict(imgs, batch_size=5)):
        for a, b in zip(preds, other, strict=True):
            assert float(np.abs(a.heatmap - b.heatmap).max()) < 1e-2
            assert a.review_band == b.review_band


def test_a_save_without_a_segmentation_head_still_loads(
    fitted: tuple[InspectionModel, list[np.ndarray], list[np.ndarray]], tmp_path: Path
) -> None:
    """Models saved (and exported) before the head existed: no ``segmentation`` entry, no arrays."""
    model, imgs, _ = fitted
    d = model.save(tmp_path / "old")
    meta = json.loads((d / "model.json").read_text())
    meta.pop("segmentation")
    meta["scoring"].pop("review_band")
    (d / "model.json").write_text(json.dumps(meta))
    arrays = {k: v for k, v in np.load(d / "arrays.npz").items() if not k.startswith("segmentation.")}
    np.savez(d / "arrays.npz", **arrays)
    old = InspectionModel.load(d)
    assert old.require_fitted().segmentation is None and old.require_fitted().review_band is None
    assert len(old.predict(imgs[:2])) == 2
    e = export_model(model, tmp_path / "old_export")
    em = json.loads((e / "metadata.json").read_text())
    em.pop("segmentation")
    em.pop("review_band")
    (e / "metadata.json").write_text(json.dumps(em))
    (e / "segmentation.npz").unlink()
    assert ExportedModel.load(e).state.segmentation is None


def test_localization_metrics_per_class_and_region_iou() -> None:
    from linesight.vision.evaluation.metrics import localization_metrics, region_iou

    m = np.zeros((20, 20), bool)
    m[5:10, 5:10] = True
    exact = np.where(m, 2.0, 0.0).astype(np.float32)
    half = np.zeros((20, 20), np.float32)
    half[5:10, 5:15] = 2.0  # twice the true area: IoU 0.5
    assert region_iou([m], [exact]) == 1.0 and region_iou([m], [half]) == pytest.approx(0.5)
    good = np.zeros((20, 20), bool)
    out = localization_metrics(
        [m, m, good], [exact, half, np.zeros((20, 20), np.float32)], ["a", "b", "good"]
    )
    assert out["per_class"]["a"]["region_iou"] == 1.0 and out["per_class"]["b"]["region_iou"] == 0.5
    assert out["per_class"]["a"]["pixel_auroc"] == 1.0 and out["n_images"] == 2


def test_report_sections_show_localisation_and_review() -> None:
    from linesight.vision.evaluation.qualification import qualification_html, qualification_text

    result = {
        "localization": {"pixel_auroc": 0.9, "aupro": 0.8, "region_iou": 0.5, "per_class": {"crack": {}}},
        "review": {
            "band": [0.7, 0.6],
            "band_source": "fitted (out-of-fold)",
            "false_reject_rate": 0.01,
            "escape_rate": 0.02,
            "review_rate": 0.04,
            "band_independent_review_rate": 0.01,
            "tradeoff": [
                {"auto_good": 0.7, "false_reject_rate": 0.01, "escape_rate": 0.02, "review_rate": 0.04}
            ],
            "by_class": {"good": {"low_confidence_good": 3}},
        },
    }
    text = qualification_text(result)
    assert "crack" in text and "review 4.0 %" in text and "low_confidence_good 3" in text
    html = str(qualification_html(result))
    assert "Localisation per class" in html and "data:image/png;base64" in html
    assert str(qualification_html({})).strip() == ""


def test_folded_prediction_equals_the_explicit_features() -> None:
    """``proba`` folds standardisation and the feature concatenation into the weights."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 20, 8)).astype(np.float32)
    s = rng.random((3, 20)).astype(np.float32) * 2
    f_dim = 2 * 8 + 1
    head = SegmentationHead(
        [BACKGROUND, "a", "b"],
        rng.normal(size=f_dim).astype(np.float32),
        rng.uniform(0.5, 2.0, f_dim).astype(np.float32),
        rng.normal(size=(3, f_dim)).astype(np.float32),
        rng.normal(size=3).astype(np.float32),
    )
    f = (patch_features(x, s) - head.mean) / head.scale
    z = f @ head.weight.T + head.bias
    want = np.exp(z - z.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    np.testing.assert_allclose(head.proba(x, s), want, rtol=1e-4, atol=1e-5)
