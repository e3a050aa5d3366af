"""Fitting: PatchCore's memory bank on part of the good images, the supervised head on all
labels, cross-validated so the thresholds come from out-of-fold scores.

With ``finetune_blocks`` > 0 the last tail modules are fine-tuned with the head (LP-FT,
``components/finetune.py``); the trunk, and so PatchCore, stays frozen and shared.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from torch import nn

from linesight.vision.components.calibrate import fit_temperature, threshold_at_frr
from linesight.vision.components.finetune import FinetuneSettings, final_means, finetune_tail
from linesight.vision.components.heads import OTHER, cross_val_logits, fit_linear_head
from linesight.vision.components.patchcore import PatchCore
from linesight.vision.components.scoring import GOOD, InputError, ScoringState, check_images, softmax
from linesight.vision.components.segmentation import SegmentationHead, patch_coverage
from linesight.vision.components.segmentation_fit import fit_segmentation
from linesight.vision.data.augment import augment_image
from linesight.vision.model.config import FitReport, ModelConfig, Progress
from linesight.vision.model.network import features, grid, resize
from linesight.vision.model.operating_point import calibrate_operating_point, cv_metrics, protecting_bias
from linesight.vision.model.report import fit_report, stamp_version
from linesight.vision.model.review_band import fit_review_band
from linesight.vision.model.state import ReplayStore
from linesight.vision.taxonomy import Augmentation, Taxonomy

if TYPE_CHECKING:
    from linesight.vision.model.inspection import InspectionModel

__all__ = ["check_labels", "fit", "fit_head", "group_ids"]


def check_labels(labels: Sequence[str], n: int) -> list[str]:
    if isinstance(labels, str):
        raise InputError("labels: pass a list of labels, not one string")
    labs = list(labels)
    if len(labs) != n:
        raise InputError(f"labels: {len(labs)} labels for {n} images")
    for i, lab in enumerate(labs):
        if not isinstance(lab, str) or not lab.strip():
            raise InputError(f"labels[{i}]: expected a non-empty class name, got {lab!r}")
        if lab.startswith("_"):
            raise InputError(f"labels[{i}]: class names starting with '_' are reserved ({lab!r})")
    return labs


def group_ids(groups: Sequence[str] | None, n: int) -> np.ndarray:
    """One integer per image; images of one part share it (no groups: each image its own)."""
    if groups is None:
        return np.arange(n, dtype=np.int64)
    g = list(groups)
    if len(g) != n:
        raise InputError(f"groups: {len(g)} entries for {n} images")
    index: dict[str, int] = {}
    return np.array([index.setdefault(str(v), len(index)) for v in g], dtype=np.int64)


def fit(
    model: InspectionModel,
    images: Sequence[np.ndarray],
    labels: Sequence[str],
    *,
    taxonomy: Taxonomy | None = None,
    target_frr: float = 0.02,
    progress: Progress | None = None,
    groups: Sequence[str] | None = None,
    masks: Sequence[np.ndarray | None] | None = None,
) -> FitReport:
    """See ``InspectionModel.fit``. ``masks`` (one per image, None where the labels carry no
    geometry; boxes and polygons rasterised by the caller) train the segmentation head."""
    cfg = model.config
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    say = progress or (lambda _stage, _frac: None)
    imgs = check_images(images)
    labs = check_labels(labels, len(imgs))
    if not 0.0 < target_frr < 0.5:
        raise InputError(f"target_frr must be in (0, 0.5), got {target_frr}")
    counts = Counter(labs)
    n_good = counts.get(GOOD, 0)
    if 0 < n_good < 4:
        raise InputError(f"fit needs at least 4 '{GOOD}' images (memory bank + calibration), got {n_good}")
    if n_good == 0 and sum(1 for c, n in counts.items() if n >= cfg.min_examples) < 2:
        raise InputError(
            f"without '{GOOD}' images fit trains a defect-type classifier only and needs at least "
            f"two classes with >= {cfg.min_examples} examples; got {dict(counts)}"
        )
    singles = sorted(c for c, n in counts.items() if n == 1 and c != GOOD)
    if singles:
        raise InputError(
            f"classes with a single example cannot be learned or validated: {singles}; "
            "label more examples or leave them out"
        )
    if taxonomy is not None:
        unknown = sorted(c for c in counts if c != GOOD and not taxonomy.has_class(c))
        if unknown:
            raise InputError(
                f"labels {unknown} are not classes of taxonomy {taxonomy.product} "
                f"v{taxonomy.version} ({taxonomy.class_names})"
            )
    model.taxonomy = taxonomy or Taxonomy.default_for(sorted(counts))
    model.target_frr = target_frr
    rng = np.random.default_rng(model.seed)
    gids = group_ids(groups, len(imgs))

    say("features", 0.0)
    t = time.perf_counter()
    small = resize(imgs, cfg.input_size)
    model.net.set_tail(None)  # a re-fit starts from the pretrained tail
    nft = cfg.finetune_blocks
    feats = features(model.net, small, cfg.input_size, tail_input_blocks=nft)
    patches, pooled = feats[0], feats[1]
    tail_in = feats[3] if nft else None
    timings["features"] = time.perf_counter() - t

    # PatchCore on a part of the good images; the rest calibrate its threshold
    say("patchcore", 0.3)
    t = time.perf_counter()
    good_idx = np.flatnonzero(np.array(labs) == GOOD)
    bank_idx, cal_idx, anomaly_thr = _fit_patchcore(model, patches, good_idx, gids, rng, target_frr)
    timings["patchcore"] = time.perf_counter() - t

    supervised = sorted(c for c, n in counts.items() if c != GOOD and n >= cfg.min_examples)
    rare = sorted(c for c, n in counts.items() if c != GOOD and n < cfg.min_examples)
    model.anomaly_only_classes = rare
    # A rare class (< min_examples) still gets a head output so reviewers see a suggested
    # type, but it is provisional: decide() never acts on it automatically (-> review).
    # Classes with fewer than min_other_examples are left to PatchCore alone.
    provisional = {c for c in rare if counts[c] >= cfg.min_other_examples}
    keep = [i for i, lab in enumerate(labs) if lab == GOOD or lab in supervised or lab in provisional]

    say("augment", 0.5)
    t = time.perf_counter()
    keep_small = [small[i] for i in keep]
    keep_labels = [labs[i] for i in keep]
    aug_imgs, aug_labels, aug_groups = _augment_rows(model, keep_small, keep_labels, gids[keep], rng)
    aug_feats = features(model.net, aug_imgs, cfg.input_size, tail_input_blocks=nft) if aug_imgs else None
    aug_pooled = aug_feats[1] if aug_feats else np.zeros((0, model.net.pooled_dim), dtype=np.float32)
    if tail_in is not None:  # cached inputs of the fine-tuned blocks, one per head row
        tail_in = np.concatenate([tail_in[keep], *([aug_feats[3]] if aug_feats else [])])
    timings["augment"] = time.perf_counter() - t

    model.replay = ReplayStore.of(
        np.concatenate([pooled[keep], aug_pooled]),
        keep_labels + aug_labels,
        np.concatenate([gids[keep], np.array(aug_groups, dtype=np.int64)]),
        np.concatenate([np.ones(len(keep), bool), np.zeros(len(aug_labels), bool)]),
    )

    say("head", 0.8)
    t = time.perf_counter()
    model.state = None  # a re-fit keeps nothing of the previous head, band or segmentation
    timings["finetune"] = fit_head(model, anomaly_thr, tail_in=tail_in)
    timings["head"] = time.perf_counter() - t
    if masks is not None and model.state is not None:
        say("segmentation", 0.9)
        t = time.perf_counter()
        model.state.segmentation = _fit_segmentation(model, patches, labs, masks, cal_idx, anomaly_thr)
        timings["segmentation"] = time.perf_counter() - t
    t = time.perf_counter()
    model.prepare_runtime()  # export + load the prediction graph now, not on the first frame
    timings["onnx"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    say("done", 1.0)
    return fit_report(model, len(imgs), counts, len(bank_idx), len(cal_idx), timings)


def _fit_segmentation(
    model: InspectionModel,
    patches: np.ndarray,
    labels: list[str],
    masks: Sequence[np.ndarray | None],
    cal_idx: np.ndarray,
    anomaly_thr: float,
) -> SegmentationHead | None:
    """The per-patch head on the images whose pixels are known: defect images with geometry and
    the good images outside PatchCore's memory bank (a bank image scores ~0 against itself, so
    its PatchCore feature would lie). None when no label carries geometry."""
    if len(masks) != len(labels):
        raise InputError(f"masks: {len(masks)} entries for {len(labels)} images")
    grid_hw = grid(model.config.input_size)
    rows = [int(i) for i in cal_idx]
    rows += [i for i, (lab, m) in enumerate(zip(labels, masks, strict=True)) if lab != GOOD and m is not None]
    if not any(labels[i] != GOOD for i in rows):
        return None
    coverage: list[np.ndarray | None] = []
    for i in rows:
        m = masks[i]
        if labels[i] == GOOD or m is None:
            coverage.append(None)
            continue
        if m.ndim != 2:
            raise InputError(f"masks[{i}]: expected a 2-D mask, got shape {m.shape}")
        coverage.append(patch_coverage(m > 0, grid_hw))
    sub = patches[rows]
    scores = model.patchcore.score(sub)[0] / max(anomaly_thr, 1e-12) if model.patchcore.fitted else None
    if scores is None:
        scores = np.zeros(sub.shape[:2], np.float32)
    return fit_segmentation(sub, scores, [labels[i] for i in rows], coverage, seed=model.seed)


def _review_band(
    model: InspectionModel, p: np.ndarray, y_o: np.ndarray, classes: list[str], threshold: float
) -> tuple[float, float] | None:
    """Confidence bands from the out-of-fold rows: least review with automatic false rejects and
    escapes within the target (``review_band.fit_review_band``); None without good images."""
    if GOOD not in classes or len(y_o) == 0:
        return None
    good_k = classes.index(GOOD)
    defect_cols = [k for k, c in enumerate(classes) if c not in (GOOD, OTHER)]
    if not defect_cols:
        return None
    defect_p = 1.0 - p[:, good_k]
    top = p[:, defect_cols].max(axis=1)
    provisional = set(model.anomaly_only_classes)
    best = np.array([classes[defect_cols[k]] in provisional for k in np.argmax(p[:, defect_cols], axis=1)])
    forced = (defect_p >= threshold) & best
    band = fit_review_band(
        defect_p,
        top,
        y_o != good_k,
        threshold,
        target_frr=model.target_frr,
        target_escape=model.target_frr,
        forced_review=forced,
    )
    model.metrics.update(
        {
            "review_band_auto_good": band.auto_good,
            "review_band_auto_defect": band.auto_defect,
            "cv_auto_false_reject_rate": band.oof.false_reject_rate,
            "cv_auto_escape_rate": band.oof.escape_rate,
            "cv_review_rate": band.oof.review_rate,
            "review_band_feasible": float(band.feasible),
        }
    )
    return (band.auto_good, band.auto_defect)


def _fit_patchcore(
    model: InspectionModel,
    patches: np.ndarray,
    good_idx: np.ndarray,
    gids: np.ndarray,
    rng: np.random.Generator,
    target_frr: float,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Memory bank from part of the good images (by group); the rest calibrate the threshold."""
    cfg = model.config
    if len(good_idx) == 0:  # classification-only model (e.g. NEU-DET): no anomaly scores
        model.patchcore = PatchCore(cfg.patchcore)
        model.calibration = model.calibration.with_anomaly(np.zeros(0, dtype=np.float32))
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 1.0
    good_groups = np.unique(gids[good_idx])
    rng.shuffle(good_groups)
    n_bank_groups = max(1, min(len(good_groups) - 1, round(len(good_groups) * cfg.bank_fraction)))
    bank_groups = set(good_groups[:n_bank_groups].tolist())
    bank_idx = np.array([i for i in good_idx if gids[i] in bank_groups])[: cfg.max_bank_images]
    cal_idx = np.array([i for i in good_idx if gids[i] not in bank_groups])
    model.patchcore.fit(patches[bank_idx], seed=model.seed)
    _, cal_scores = model.patchcore.score(patches[cal_idx])
    model.calibration = model.calibration.with_anomaly(cal_scores)
    return bank_idx, cal_idx, threshold_at_frr(cal_scores, target_frr)


def _augment_rows(
    model: InspectionModel,
    small: list[np.ndarray],
    labels: list[str],
    groups: np.ndarray,
    rng: np.random.Generator,
) -> tuple[list[np.ndarray], list[str], list[int]]:
    """Class-balanced augmented copies, each class under its taxonomy policy."""
    cfg = model.config
    counts = Counter(labels)
    n_good = counts.get(GOOD, 0)
    imgs: list[np.ndarray] = []
    labs: list[str] = []
    grps: list[int] = []
    for img, lab, grp in zip(small, labels, groups, strict=True):
        if lab == GOOD:
            copies = cfg.good_augment_copies
        else:
            # rarer classes get more copies, up to the configured maximum
            want = max(n_good, max(counts.values())) / max(counts[lab], 1) - 1
            copies = int(np.clip(round(want), 1, cfg.augment_copies)) if cfg.augment_copies else 0
        policy = model.taxonomy.augmentation_for(lab) if model.taxonomy else Augmentation()
        for _ in range(copies):
            imgs.append(augment_image(img, policy, rng))
            labs.append(lab)
            grps.append(int(grp))
    return imgs, labs, grps


def fit_head(
    model: InspectionModel,
    anomaly_thr: float,
    *,
    new_class: str | None = None,
    protect: dict[str, float] | None = None,
    tail_in: np.ndarray | None = None,
) -> float:
    """(Re)fit the head from the replay store; calibrate temperature and defect threshold OOF.

    With ``new_class`` and ``protect`` (old classes' out-of-fold recall), the new class's logit
    bias is lowered until the old classes' out-of-fold recall is kept (``protecting_bias``).

    With ``tail_in`` (cached inputs of the last ``finetune_blocks`` tail modules, one per replay
    row) the tail is fine-tuned. Out-of-fold logits stay honest by fine-tuning *within each
    fold*: for every cross-validation fold a fresh copy is fine-tuned (from its own
    frozen-feature logistic regression) on the fold's training rows only, the held-out rows
    are described by that copy and scored by a head fitted on the fold's training rows. A tail
    fine-tuned once on all rows would have seen the held-out rows, so its OOF scores would be
    optimistic and the operating point (fitted on them) would sit too low for new images.
    The cost is one fine-tune per fold plus the final one on all rows; it stays affordable
    because only the last blocks run per step, on cached inputs. Returns the seconds spent
    fine-tuning (0 without ``tail_in``).

    Without ``tail_in`` on a fine-tuned model (``add_class`` promoting a provisional class) the
    stored descriptors come from the final tail, which saw every stored row: the head is re-fit
    on them with plain out-of-fold logistic regression, slightly optimistic; a full ``fit``
    restores in-fold fine-tuning.
    """
    cfg = model.config
    previous = model.state  # a head re-fit (add_class) keeps the segmentation head
    replay = model.replay
    labels = replay.labels
    has_good = GOOD in labels
    head_classes = [GOOD] if has_good else []
    head_classes += sorted({c for c in labels if c not in (GOOD, OTHER)})
    if OTHER in labels:
        head_classes.append(OTHER)
    h, w = cfg.input_size
    dim = model.net.pooled_dim
    if head_classes == [GOOD]:
        model.head = None
        model.net.set_head(np.zeros(dim), np.ones(dim), np.zeros((1, dim)), np.zeros(1))
        model.state = ScoringState(
            [GOOD], 1.0, anomaly_thr, 0.5, (h, w), grid(cfg.input_size), cfg.patchcore.sigma, OTHER
        )
        model.calibration = model.calibration.with_defect_scores(np.zeros(0), np.zeros(0, dtype=bool))
        stamp_version(model)
        return 0.0
    y = np.array([head_classes.index(c) for c in labels], dtype=np.int64)
    x = replay.x
    settings = _finetune_settings(cfg)
    finetune_s = 0.0
    refeaturize = None
    if tail_in is not None and settings is not None:
        frozen, ft_in, ft = replay.x, tail_in, settings

        def refeaturize(rows: np.ndarray, fold: int) -> np.ndarray:
            return _finetuned(model, frozen, y, head_classes, ft_in, rows, ft, model.seed + 1 + fold)[0]

    t_oof = time.perf_counter()
    oof = cross_val_logits(
        x,
        y,
        replay.groups,
        head_classes,
        folds=cfg.cv_folds,
        c=cfg.head_c,
        seed=model.seed,
        refeaturize=refeaturize,
    )
    if refeaturize is not None and tail_in is not None and settings is not None:
        finetune_s += time.perf_counter() - t_oof
        t_ft = time.perf_counter()
        x, blocks = _finetuned(model, x, y, head_classes, tail_in, np.arange(len(y)), settings, model.seed)
        model.net.set_tail(blocks)
        # replay (add_class) must see the descriptor the deployed net computes
        replay = replay.with_x(x)
        finetune_s += time.perf_counter() - t_ft
    orig = replay.original
    bias_shift = 0.0
    if new_class is not None and protect:
        bias_shift = protecting_bias(oof[orig], y[orig], head_classes, new_class, protect)
        oof[:, head_classes.index(new_class)] += bias_shift
    model.replay = replay.with_oof(oof)
    temperature = fit_temperature(oof[orig], y[orig])
    p = softmax(oof[orig], temperature)
    y_o = y[orig]
    defect_p, defect_thr = calibrate_operating_point(model, p, y_o, has_good)
    model.metrics = cv_metrics(p, y_o, defect_p, defect_thr, head_classes)
    band = _review_band(model, p, y_o, head_classes, defect_thr)
    model.head = fit_linear_head(x, y, head_classes, c=cfg.head_c, seed=model.seed)
    if bias_shift:
        model.head.bias[head_classes.index(new_class or "")] += np.float32(bias_shift)
        model.metrics["new_class_bias_shift"] = float(bias_shift)
    model.net.set_head(model.head.mean, model.head.scale, model.head.weight, model.head.bias)
    provisional = [c for c in head_classes if c in set(model.anomaly_only_classes)]
    model.state = ScoringState(
        head_classes,
        temperature,
        anomaly_thr,
        defect_thr,
        (h, w),
        grid(cfg.input_size),
        cfg.patchcore.sigma,
        OTHER,
        provisional=provisional,
        provisional_examples=model.replay.examples_of(provisional),
        min_examples=cfg.min_examples,
        review_band=band,
        segmentation=previous.segmentation if previous is not None else None,
    )
    stamp_version(model)
    return finetune_s


def _finetune_settings(cfg: ModelConfig) -> FinetuneSettings | None:
    if cfg.finetune_blocks <= 0:
        return None
    return FinetuneSettings(
        blocks=cfg.finetune_blocks, epochs=cfg.finetune_epochs, lr=cfg.finetune_lr, head_c=cfg.head_c
    )


def _finetuned(
    model: InspectionModel,
    frozen: np.ndarray,
    y: np.ndarray,
    classes: list[str],
    tail_in: np.ndarray,
    rows: np.ndarray,
    settings: FinetuneSettings,
    seed: int,
) -> tuple[np.ndarray, nn.Sequential]:
    """Fine-tune on ``rows`` (head initialised from a logistic regression on their frozen
    descriptors: LP-FT); returns every row's descriptor under the fine-tuned blocks, and them."""
    lp = fit_linear_head(frozen[rows], y[rows], classes, c=model.config.head_c, seed=model.seed)
    cf = model.net.backbone.channels_final
    blocks = finetune_tail(
        model.net.backbone.tail, tail_in[rows], frozen[rows, cf:], y[rows], lp, settings, seed=seed
    )
    out = frozen.copy()
    out[:, :cf] = final_means(blocks, tail_in)
    return out, blocks
