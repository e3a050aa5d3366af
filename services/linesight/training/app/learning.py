"""A dataset version's learning curve per class: would more examples of a class help, and by how
much? Computed on demand (it fits a model per training fraction), kept with the version.

What is fitted: the engine's supervised part, a class-balanced logistic-regression head
(`vision.components.heads.fit_linear_head`) on the engine backbone's pooled features, on nested
class-stratified fractions of the version's train split; what is measured: each class's error on
the version's val split (a defect class: the share of its images not called that class; good:
the share of good images called a defect). The protected holdout is never read. Each class's
points are fitted with the engine's power law (`vision.evaluation.learning_curve`), which
predicts the error at twice the class's current examples: the gain of collecting them.

The probe stands for the head, not for the whole model (PatchCore's anomaly score also flags
defects), so the curve ranks where labelling effort pays, rather than promising a recall figure.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from linesight.vision.data.manifest import GOOD, Sample

FRACTIONS = (0.25, 0.5, 1.0)
FEATURE_SIZE = 128  # px: the backbone's pooled features at this size separate classes well enough
TRAIN, VAL = "train", "val"


def class_learning_curves(
    samples: Sequence[Sample],
    split_of: dict[Path, str],
    *,
    fractions: Sequence[float] = FRACTIONS,
    seed: int = 0,
    backbone: str = "efficientnet-lite0",
) -> dict[str, Any]:
    """The JSON-able learning curve of a version (see the module docstring). ValueError when the
    version has no val split or fewer than two classes to train on."""
    from linesight.vision.components.heads import fit_linear_head
    from linesight.vision.data.hygiene import backbone_embeddings
    from linesight.vision.evaluation.learning_curve import per_class_learning_curves

    if any(split_of.get(s.image) not in (TRAIN, VAL) for s in samples):
        raise ValueError("the learning curve reads the train and val splits only, never the holdout")
    train = [s for s in samples if split_of[s.image] == TRAIN]
    val = [s for s in samples if split_of[s.image] == VAL]
    if not val:
        raise ValueError("the version has no val split to measure a learning curve on")
    classes = sorted({s.label for s in train})
    if len(classes) < 2:
        raise ValueError(f"the train split has {len(classes)} class(es): a learning curve needs two")
    t0 = time.perf_counter()
    feats = backbone_embeddings([*train, *val], backbone=backbone, size=FEATURE_SIZE)
    seconds = {"features": round(time.perf_counter() - t0, 2)}
    x_train, x_val = feats[: len(train)], feats[len(train) :]
    labels = [s.label for s in train]
    truth = np.array([s.label for s in val])

    def fit_errors(idx: list[int]) -> dict[str, float]:
        present = sorted({labels[i] for i in idx})
        if len(present) < 2:
            return {}
        y = np.array([present.index(labels[i]) for i in idx])
        head = fit_linear_head(x_train[idx], y, present, seed=seed)
        predicted = np.array(present)[head.logits(x_val).argmax(axis=1)]
        out: dict[str, float] = {}
        for c in classes:
            mask = truth == c
            if mask.any():
                wrong = predicted[mask] != GOOD if c == GOOD else predicted[mask] != c
                out[c] = float(wrong.mean())
        return out

    t0 = time.perf_counter()
    curves = per_class_learning_curves(labels, fit_errors, fractions=fractions, seed=seed)
    seconds["fits"] = round(time.perf_counter() - t0, 2)
    return {
        "method": f"class-balanced linear head on {backbone} pooled features ({FEATURE_SIZE} px), "
        "trained on nested fractions of the train split, measured on the val split",
        "fractions": sorted(set(fractions)),
        "train_images": len(train),
        "val_images": len(val),
        "classes": {
            c: {
                **curve.as_dict(),
                "metric": "false reject rate" if c == GOOD else "miss rate (not called this class)",
                "train_examples": sum(1 for s in train if s.label == c),
                "val_examples": int((truth == c).sum()),
            }
            for c, curve in curves.items()
        },
        "seconds": seconds,
    }


def summary_rows(curve: dict[str, Any]) -> list[str]:
    """One line per class: examples, error now, predicted at twice the examples, the gain."""
    rows = []
    for c, k in curve.get("classes", {}).items():
        now = k["errors"][-1] if k["errors"] else None
        at2 = k.get("predicted_error_at_double")
        gain = k.get("predicted_gain_from_doubling")
        rows.append(
            f"{c}: {k['train_examples']} train / {k['val_examples']} val examples, {k['metric']} "
            + (f"{now:.3f}" if now is not None else "-")
            + (f" -> {at2:.3f} at {2 * k['train_examples']} examples (gain {gain:.3f})" if at2 is not None
               else " (no fit: " + "; ".join(k.get("notes", [])) + ")")
        )  # fmt: skip
    return rows


def html_section(curve: dict[str, Any]) -> str:
    """The curve as a self-contained HTML fragment: measured points and each class's fitted law
    extended to twice its examples, and the per-class table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from linesight.training.app.hygiene_report import png_base64

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for c, k in curve.get("classes", {}).items():
        line = ax.plot(k["sizes"], k["errors"], "o", label=c)[0]
        fit = k.get("fit")
        if fit and k["sizes"]:
            xs = np.linspace(min(k["sizes"]), 2 * max(k["sizes"]), 60)
            ax.plot(xs, fit["a"] * xs ** (-fit["b"]) + fit["c"], "-", color=line.get_color())
    ax.set(xlabel="training examples of the class", ylabel="val error of the class",
           title="Learning curve per class (line: fitted, to 2x the examples)")  # fmt: skip
    ax.legend(fontsize=7)
    img = png_base64(fig)
    plt.close(fig)
    rows = "".join(f"<li>{html.escape(r)}</li>" for r in summary_rows(curve))
    return (
        "<h2>Learning curve per class</h2>"
        f"<p>{html.escape(curve.get('method', ''))}; {curve.get('train_images')} train, "
        f"{curve.get('val_images')} val images.</p>"
        f"<img src='data:image/png;base64,{img}'><ul>{rows}</ul>"
    )


def with_section(page: str, curve: dict[str, Any]) -> str:
    """The stored hygiene page with the learning-curve section added before its end."""
    section = html_section(curve)
    return page.replace("</body>", section + "</body>") if "</body>" in page else page + section
