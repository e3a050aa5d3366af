"""Adding a defect class from a few (20-50) examples without a full retrain.

Only the head changes, fitted on the stored descriptors of earlier data (``ReplayStore``) plus
the new ones; the backbone and PatchCore are untouched, so it takes seconds. The old head rows
stay fixed where possible (``extend_head``), so old classes can lose images only to the new one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from linesight.vision.components.heads import OTHER, LinearHead, fit_new_class_row
from linesight.vision.components.scoring import GOOD, InputError, ScoringState, check_images, softmax
from linesight.vision.data.augment import augment_image
from linesight.vision.model.config import FitReport
from linesight.vision.model.fit import fit_head
from linesight.vision.model.network import features, resize
from linesight.vision.model.operating_point import calibrate_operating_point, cv_metrics, protecting_bias
from linesight.vision.model.report import fit_report, stamp_version
from linesight.vision.taxonomy import Augmentation, Taxonomy

if TYPE_CHECKING:
    from linesight.vision.model.inspection import InspectionModel

__all__ = ["add_class", "extend_head"]


def add_class(model: InspectionModel, images: Sequence[np.ndarray], label: str) -> FitReport:
    """See ``InspectionModel.add_class``."""
    state = model.require_fitted()
    cfg = model.config
    t0 = time.perf_counter()
    imgs = check_images(images)
    if not isinstance(label, str) or not label.strip() or label.startswith("_") or label == GOOD:
        raise InputError(f"add_class: invalid new class name {label!r}")
    if label in model.classes and label not in model.anomaly_only_classes:
        raise InputError(f"add_class: class {label!r} already has a head; retrain to change it")
    if len(imgs) < 2:
        raise InputError(f"add_class: {label!r} needs at least 2 examples, got {len(imgs)}")
    if model.taxonomy is not None and not model.taxonomy.has_class(label):
        if model.taxonomy.product == "generic":
            model.taxonomy = Taxonomy.default_for(
                [*model.taxonomy.class_names, label], version=model.taxonomy.version
            )
        else:
            raise InputError(
                f"add_class: {label!r} is not a class of taxonomy {model.taxonomy.product} "
                f"v{model.taxonomy.version}; publish a taxonomy version with it first"
            )
    rng = np.random.default_rng(model.seed + len(model.replay))
    timings: dict[str, float] = {}
    t = time.perf_counter()
    small = resize(imgs, cfg.input_size)
    base_group = model.replay.next_group()
    groups = np.arange(base_group, base_group + len(small), dtype=np.int64)
    _, pooled, _ = features(model.net, small, cfg.input_size)
    counts = model.replay.original_counts()
    counts[label] = len(small)
    policy = model.taxonomy.augmentation_for(label) if model.taxonomy else Augmentation()
    want = max(counts.values()) / len(small) - 1
    copies = int(np.clip(round(want), 1, cfg.augment_copies)) if cfg.augment_copies else 0
    aug = [augment_image(img, policy, rng) for img in small for _ in range(copies)]
    aug_groups = np.repeat(groups, copies)
    aug_pooled = (
        features(model.net, aug, cfg.input_size)[1]
        if aug
        else np.zeros((0, model.net.pooled_dim), np.float32)
    )
    timings["features"] = time.perf_counter() - t
    n_old_rows = len(model.replay)
    model.replay = model.replay.append(
        np.concatenate([pooled, aug_pooled]),
        [label] * (len(small) + len(aug)),
        np.concatenate([groups, aug_groups]),
        np.concatenate([np.ones(len(small), bool), np.zeros(len(aug), bool)]),
    )
    n_label = model.replay.original_counts()[label]
    if label in model.anomaly_only_classes and n_label >= cfg.min_examples:
        model.anomaly_only_classes.remove(label)  # promoted: enough examples for a real head
    elif label not in model.anomaly_only_classes and n_label < cfg.min_examples:
        model.anomaly_only_classes.append(label)  # added, but provisional until min_examples
    # old defect classes; good's share is governed by the re-calibrated defect threshold instead
    protect = {
        c: model.metrics[f"cv_recall_{c}"]
        for c in model.classes
        if c != GOOD and f"cv_recall_{c}" in model.metrics
    }
    t = time.perf_counter()
    if _can_extend(model, label, n_old_rows):
        extend_head(model, label, n_old_rows, protect)
    else:  # no head yet, or a provisional class promoted: full re-fit from the replay store
        fit_head(model, state.anomaly_threshold, new_class=label, protect=protect)
    timings["head"] = time.perf_counter() - t
    t = time.perf_counter()
    model.prepare_runtime()
    timings["onnx"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    return fit_report(
        model,
        len(imgs),
        model.replay.original_counts(),
        len(model.patchcore.bank),
        len(model.calibration.good_anomaly),
        timings,
    )


def _can_extend(model: InspectionModel, label: str, n_old_rows: int) -> bool:
    """The head can grow by one row when the stored out-of-fold logits cover exactly the old
    rows under the current classes (otherwise they describe another head)."""
    st = model.state
    return (
        model.head is not None
        and st is not None
        and label not in st.head_classes
        and model.replay.oof.shape == (n_old_rows, len(st.head_classes))
    )


def extend_head(model: InspectionModel, label: str, n_old_rows: int, protect: dict[str, float]) -> None:
    """Append one class to the fitted head, keeping every old weight row fixed.

    Only the new row (weight + bias) is fitted, against the replay store with the old head's
    logits as a fixed offset (out-of-fold logits for the stored rows, so the new class learns
    against the old head as it behaves on unseen images). Old classes can then lose images
    only to the new class; its bias is lowered (bounded, BiC-style) until the old classes'
    out-of-fold recall is unchanged. Temperature is kept; the defect threshold is re-derived
    from the out-of-fold scores with the new class included.
    """
    assert model.head is not None and model.state is not None
    head, st, replay = model.head, model.state, model.replay
    x = replay.x
    z = (x - head.mean) / head.scale
    old_logits = np.concatenate([replay.oof, head.logits(x[n_old_rows:])]).astype(np.float64)
    is_new = np.zeros(len(x), dtype=bool)
    is_new[n_old_rows:] = True
    labels = replay.labels
    old_y = np.array([st.head_classes.index(c) if not n else -1 for c, n in zip(labels, is_new, strict=True)])
    c = model.config.head_c
    w, b = fit_new_class_row(z, old_logits, is_new, old_y, c=c)
    # out-of-fold logit of the new class (group folds), for the bias correction and threshold;
    # each fold's fit starts from the full-data row (a warm start: the fold's convex optimum is
    # near it, so L-BFGS needs far fewer steps and still converges to that fold's own optimum)
    full = np.concatenate([w.astype(np.float64), [b]])
    new_oof = np.zeros(len(x))
    strat = np.where(is_new, -1, old_y)
    groups = replay.groups
    n_groups_new = len(np.unique(groups[is_new]))
    folds = max(2, min(model.config.cv_folds, n_groups_new))
    from sklearn.model_selection import StratifiedGroupKFold

    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=model.seed)
    for tr, te in cv.split(z, strat, groups):
        wf, bf = fit_new_class_row(z[tr], old_logits[tr], is_new[tr], old_y[tr], c=c, x0=full)
        new_oof[te] = z[te] @ wf + bf
    classes = list(st.head_classes)
    pos = classes.index(OTHER) if OTHER in classes else len(classes)
    classes.insert(pos, label)
    oof = np.insert(old_logits, pos, new_oof, axis=1)
    y = np.array([classes.index(lab) for lab in labels], dtype=np.int64)
    orig = replay.original
    shift = (
        protecting_bias(oof[orig], y[orig], classes, label, protect, margin=model.config.new_class_margin)
        if protect
        else 0.0
    )
    oof[:, pos] += shift
    model.replay = replay.with_oof(oof)
    weight = np.insert(head.weight, pos, w, axis=0)
    bias = np.insert(head.bias, pos, np.float32(b + shift))
    model.head = LinearHead(
        classes, head.mean, head.scale, weight.astype(np.float32), bias.astype(np.float32)
    )
    model.net.set_head(model.head.mean, model.head.scale, model.head.weight, model.head.bias)
    p = softmax(oof[orig], st.temperature)
    y_o = y[orig]
    defect_p, defect_thr = calibrate_operating_point(model, p, y_o, GOOD in classes)
    model.metrics = cv_metrics(p, y_o, defect_p, defect_thr, classes)
    model.metrics["new_class_bias_shift"] = float(shift)
    provisional = [c for c in classes if c in set(model.anomaly_only_classes)]
    model.state = ScoringState(
        classes,
        st.temperature,
        st.anomaly_threshold,
        defect_thr,
        st.input_size,
        st.grid,
        st.sigma,
        OTHER,
        provisional=provisional,
        provisional_examples=model.replay.examples_of(provisional),
        min_examples=model.config.min_examples,
        review_band=st.review_band,
        segmentation=st.segmentation,
    )
    stamp_version(model)
