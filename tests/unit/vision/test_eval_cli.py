"""`linesight eval` end to end on a tiny generated dataset (stand-in model + the real model once)."""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from linesight.cli import cmd_eval
from linesight.vision.data.imageio import encode_png

CLASSES = ("scratch", "spot")


def _render(rng: np.random.Generator, label: str, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    img = cv2.GaussianBlur(rng.normal(128, 12, (size, size)).astype(np.float32), (5, 5), 1.5)
    mask = np.zeros((size, size), np.uint8)
    if label == "scratch":
        y = int(rng.integers(16, size - 16))
        cv2.line(mask, (8, y), (size - 8, y + int(rng.integers(-6, 7))), 255, 3)
        img[mask > 0] -= 70
    elif label == "spot":
        c = (int(rng.integers(16, size - 16)), int(rng.integers(16, size - 16)))
        cv2.circle(mask, c, 7, 255, -1)
        img[mask > 0] += 80
    return np.clip(img, 0, 255).astype(np.uint8), mask


def make_dataset(
    root: Path, *, n_good: int = 8, per_class: int = 6, batches: int = 2, seed: int = 0, part_prefix: str = ""
) -> Path:
    """Manifest dataset in the shared layout: `batches` sessions, masks for defects."""
    rng = np.random.default_rng(seed)
    rows = []
    for b in range(batches):
        for label in ("good", *CLASSES):
            for k in range(n_good if label == "good" else per_class):
                img, mask = _render(rng, label)
                name = f"{label}_b{b}_{k}"
                (root / "images" / label).mkdir(parents=True, exist_ok=True)
                (root / "images" / label / f"{name}.png").write_bytes(encode_png(img))
                mask_rel = ""
                if label != "good":
                    (root / "masks" / label).mkdir(parents=True, exist_ok=True)
                    (root / "masks" / label / f"{name}.png").write_bytes(encode_png(mask))
                    mask_rel = f"masks/{label}/{name}.png"
                rows.append(
                    [
                        f"images/{label}/{name}.png",
                        label,
                        mask_rel,
                        part_prefix + name,
                        f"exp{b}",
                        "cam1",
                        "",
                        "",
                    ]
                )
    with open(root / "manifest.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "label", "mask", "part_id", "batch", "station", "captured_at", "boxes"])
        w.writerows(rows)
    return root


@dataclass
class _Pred:
    anomaly_score: float
    class_probs: dict[str, float]
    heatmap: np.ndarray
    defect_probability: float
    defect_threshold: float = 0.5


@dataclass
class StandInModel:
    """Nearest-mean on (min, max) pixel statistics: enough to exercise the evaluation plumbing."""

    means: dict[str, np.ndarray] = field(default_factory=dict)
    threshold: float = 0.5
    recalibrated: int = 0
    fit_kwargs: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def _f(img: np.ndarray) -> np.ndarray:
        return np.array([img.min(), img.max()], dtype=np.float64) / 255.0

    def fit(self, images: Sequence[np.ndarray], labels: Sequence[str], **kw: Any) -> Any:
        self.fit_kwargs = kw
        for lab in set(labels):
            self.means[lab] = np.mean(
                [self._f(i) for i, la in zip(images, labels, strict=True) if la == lab], 0
            )
        return None

    def predict(self, images: Sequence[np.ndarray], *, batch_size: int = 16) -> list[_Pred]:
        out = []
        for img in images:
            d = {c: float(np.linalg.norm(self._f(img) - m)) for c, m in self.means.items()}
            w = {c: np.exp(-20 * v) for c, v in d.items()}
            z = sum(w.values())
            probs = {c: float(v / z) for c, v in w.items()}
            heat = np.abs(img.astype(np.float32) - 128) / 64
            out.append(_Pred(float(heat.max()), probs, heat, 1 - probs.get("good", 0.0), self.threshold))
        return out

    def recalibrate(self, good_images: Sequence[np.ndarray]) -> Any:
        self.recalibrated = len(good_images)
        self.threshold = 0.6
        return None


def build_parser() -> argparse.ArgumentParser:
    """Only `eval`: the other sub-commands belong to other modules (tested there)."""
    parser = argparse.ArgumentParser(prog="linesight")
    cmd_eval.register(parser.add_subparsers(dest="command", required=True))
    return parser


def _run(argv: list[str], factory: Any) -> int:
    args = build_parser().parse_args(["eval", *argv, "--quiet"])
    return int(cmd_eval.run(args, model_factory=factory))


def test_eval_batch_split_json_and_html(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_dataset(tmp_path / "ds")
    models: list[StandInModel] = []

    def factory(backbone: str, seed: int) -> StandInModel:
        models.append(StandInModel())
        return models[-1]

    out_json, out_html = tmp_path / "r.json", tmp_path / "r.html"
    rc = _run(
        [
            "--dataset",
            str(root),
            "--test-batches",
            "exp1",
            "--max-good",
            "6",
            "--max-per-class",
            "4",
            "--recalibrate-good",
            "2",
            "--json",
            str(out_json),
            "--html",
            str(out_html),
        ],
        factory,
    )
    assert rc == 0
    r = json.loads(out_json.read_text())
    det = r["detection"]
    for key in ("image_auroc", "recall_at_frr_2pct", "threshold", "false_reject_rate", "escape_rate"):
        assert key in det
    assert det["image_auroc"] > 0.9 and det["threshold"] == 0.5
    assert r["split"]["train_counts"] == {"good": 6, "scratch": 4, "spot": 4}  # caps on training side only
    assert r["split"]["test_counts"] == {"good": 6, "scratch": 6, "spot": 6}  # 2 goods used for recalibration
    assert models[0].recalibrated == 2 and r["recalibrated"]["threshold"] == 0.6
    assert set(r["recalibrated"]) >= {"false_reject_rate", "escape_rate"}
    cls = r["classification"]
    assert set(cls["per_class"]) == set(CLASSES) and cls["accuracy"] >= 0.8
    assert set(cls["per_class"]["spot"]) >= {"precision", "recall", "support"}
    assert r["localization"]["pixel_auroc"] is not None
    assert r["train_seconds"] >= 0 and r["images_per_second"] > 0 and r["peak_rss_mb"] > 0
    assert "groups" not in models[0].fit_kwargs or len(models[0].fit_kwargs["groups"]) == 14
    html = out_html.read_text()
    assert html.startswith("<!doctype html>") and html.count("data:image/png;base64,") >= 2
    assert "Detection (good vs defect)" in capsys.readouterr().out


def test_unseen_class_counts_for_detection_only_and_no_good_gives_null(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    # training side without 'spot': spot images are defects for detection, excluded from classification
    lines = (root / "manifest.csv").read_text().splitlines()
    kept = [ln for ln in lines if not (",spot," in ln and "exp0" in ln)]
    (root / "manifest.csv").write_text("\n".join(kept) + "\n")
    out = tmp_path / "a.json"
    assert (
        _run(
            ["--dataset", str(root), "--test-batches", "exp1", "--json", str(out)],
            lambda b, s: StandInModel(),
        )
        == 0
    )
    r = json.loads(out.read_text())
    assert r["classification"]["excluded_classes"] == ["spot"]
    assert set(r["classification"]["per_class"]) == {"scratch"}
    assert r["detection"]["image_auroc"] is not None

    nogood = make_dataset(tmp_path / "ng", n_good=0)
    out2 = tmp_path / "b.json"
    assert (
        _run(
            ["--dataset", str(nogood), "--test-fraction", "0.5", "--json", str(out2)],
            lambda b, s: StandInModel(),
        )
        == 0
    )
    r2 = json.loads(out2.read_text())
    assert all(v is None for v in r2["detection"].values())
    assert r2["classification"]["accuracy"] is not None


def test_bad_input_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_dataset(tmp_path / "ds", n_good=2, per_class=2)
    assert _run(["--dataset", str(root), "--test-batches", "exp9"], lambda b, s: StandInModel()) == 2
    assert "unknown batch" in capsys.readouterr().err
    assert (
        _run(["--dataset", str(tmp_path / "nope"), "--test-batches", "exp1"], lambda b, s: StandInModel())
        == 2
    )
    assert "manifest not found" in capsys.readouterr().err
    assert _run(["--dataset", str(root)], lambda b, s: StandInModel()) == 2
    assert (
        _run(
            ["--dataset", str(root), "--test-batches", "exp1", "--recalibrate-good", "5"],
            lambda b, s: StandInModel(),
        )
        == 2
    )
    assert "recalibrate" in capsys.readouterr().err


def test_train_test_manifests_and_leakage(tmp_path: Path) -> None:
    a = make_dataset(tmp_path / "a", seed=1)
    b = make_dataset(tmp_path / "b", seed=2)
    assert _run(["--train", str(a), "--test", str(b)], lambda bb, s: StandInModel()) == 2  # same part ids
    c = make_dataset(tmp_path / "c", seed=2, part_prefix="other-")
    out = tmp_path / "c.json"
    assert (
        _run(
            ["--train", str(a), "--test", str(c), "--json", str(out), "--no-checks"],
            lambda bb, s: StandInModel(),
        )
        == 0
    )
    assert json.loads(out.read_text())["split"]["description"].startswith("train ")


@pytest.mark.slow
def test_real_model_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("linesight.vision.model")
    root = make_dataset(tmp_path / "ds", n_good=10, per_class=5, batches=2)
    out = tmp_path / "real.json"
    args = build_parser().parse_args(
        [
            "eval",
            "--dataset",
            str(root),
            "--test-batches",
            "exp1",
            "--recalibrate-good",
            "5",
            "--json",
            str(out),
            "--html",
            str(tmp_path / "r.html"),
            "--quiet",
            "--no-checks",
        ]
    )
    assert cmd_eval.run(args) == 0
    r = json.loads(out.read_text())
    assert 0.0 <= r["detection"]["image_auroc"] <= 1.0
    assert r["recalibrated"]["n_images"] == 5
    assert r["train_seconds"] > 0


def test_bench_rows_and_skip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.bench import bench_detection as bench

    res = {"detection": {"image_auroc": 0.985}, "classification": {"accuracy": None}}
    assert "MISSED" in bench._row(res, "detection.image_auroc", 0.99, "min")
    assert "ok" in bench._row(res, "detection.image_auroc", 0.98, "min")
    assert "n/a" in bench._row(res, "classification.accuracy", 0.95, "min")
    monkeypatch.setattr(bench, "DATASETS", tmp_path / "absent")
    assert bench.main([]) == 0
    assert "SKIP" in capsys.readouterr().out
