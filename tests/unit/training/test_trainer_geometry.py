"""Confirmed labels' geometry reaches the engine: the trainer hands boxes to ``fit(masks=)``."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from linesight.training.app.trainer import TrainingOptions, train


class _StopError(Exception):
    pass


def test_boxes_in_the_manifest_train_the_segmentation_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "images").mkdir()
    rows = []
    for i in range(8):
        name = f"images/f{i}.png"
        cv2.imwrite(str(tmp_path / name), np.full((40, 60), 120, np.uint8))
        boxed = i >= 4
        boxes = json.dumps([["crack", 10, 5, 30, 15]]) if boxed else ""
        rows.append(
            {"image": name, "label": "crack" if boxed else "good", "part_id": f"p{i}", "boxes": boxes}
        )
    with (tmp_path / "manifest.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["image", "label", "part_id", "boxes"])
        w.writeheader()
        w.writerows(rows)
    seen: dict[str, Any] = {}

    class FakeModel:
        def fit(self, images: list[np.ndarray], labels: list[str], **kwargs: Any) -> None:
            seen.update(kwargs, labels=labels)
            raise _StopError

    monkeypatch.setattr("linesight.vision.model.InspectionModel.create", lambda *a, **k: FakeModel())
    with pytest.raises(_StopError):
        train(tmp_path, TrainingOptions(), tmp_path / "work")
    masks, labels = seen["masks"], seen["labels"]
    assert len(masks) == len(labels)
    for m, lab in zip(masks, labels, strict=True):
        if lab == "good":
            assert m is None
        else:  # the box, rasterised at the image's size
            assert m.shape == (40, 60) and m.sum() == 20 * 10 and m[5:15, 10:30].all()
