"""report: self-contained HTML with embedded figures, escaping, and a readable table."""

from __future__ import annotations

import base64
import re

import numpy as np

from linesight.vision.evaluation.learning_curve import LearningCurve, PowerLaw
from linesight.vision.evaluation.report import GalleryItem, format_table, overlay_heatmap, render_html

RESULT = {
    "detection": {
        "image_auroc": 0.97,
        "recall_at_frr_2pct": 0.9,
        "threshold": 0.5,
        "false_reject_rate": 0.03,
        "escape_rate": 0.01,
    },
    "classification": {
        "accuracy": 0.95,
        "per_class": {"crack": {"precision": 1.0, "recall": 0.9, "support": 10}},
        "labels": ["crack", "dent"],
        "confusion_matrix": [[9, 1], [0, 5]],
        "top_confusions": [["crack", "dent", 1]],
        "excluded_classes": ["<script>"],
    },
    "review_rate": 0.05,
    "train_seconds": 12.5,
    "images_per_second": 55.0,
    "peak_rss_mb": 900.0,
    "recalibrated": {"n_images": 20, "false_reject_rate": 0.01, "escape_rate": 0.02},
}


def test_table_is_readable() -> None:
    text = format_table(RESULT)
    assert "image_auroc" in text and "0.97" in text
    assert "3.0 %" in text and "recalibrated (20 good): 1.0 %" in text
    assert re.search(r"crack\s+100.0 %\s+90.0 %\s+10", text)
    assert "n/a" in format_table({"detection": {"image_auroc": None}})


def test_html_embeds_pngs_and_escapes() -> None:
    rng = np.random.default_rng(0)
    y = [False] * 20 + [True] * 10
    s = list(rng.random(20) * 0.5) + list(0.4 + rng.random(10) * 0.6)
    img = rng.integers(0, 255, (40, 50), dtype=np.uint8)
    curve = LearningCurve([10, 20, 40], [0.3, 0.2, 0.15], PowerLaw(1.0, 0.5, 0.05), 0.12, 0.03)
    html = render_html(
        RESULT,
        is_defect=y,
        scores=s,
        gallery=[GalleryItem(img, img / 255.0, "escape <b>")],
        curve=curve,
        warnings=["near duplicates"],
    )
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(uris) == 4  # ROC/PR, confusion, gallery tile, learning curve
    for u in uris:
        assert base64.b64decode(u).startswith(b"\x89PNG")
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "escape &lt;b&gt;" in html and "http" not in html.split("<body>")[1]  # no external assets
    assert "predicted to lower the error from 0.150 to 0.120" in html


def test_overlay_heatmap() -> None:
    img = np.full((10, 12), 100, np.uint8)
    heat = np.zeros((5, 6), np.float32)
    heat[0, 0] = 4.0
    out = overlay_heatmap(img, heat)
    assert out.shape == (10, 12, 3) and out.dtype == np.uint8
    assert not np.array_equal(out[0, 0], out[9, 11])  # hot corner is coloured
    assert np.array_equal(overlay_heatmap(img, None), np.stack([img] * 3, axis=2))
