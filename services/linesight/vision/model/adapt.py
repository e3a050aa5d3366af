"""Learning from reviewed frames: the incremental update of the improvement loop.

A session's confirmed labels become training data without a full retrain (seconds, not minutes):

* confirmed **good** frames (false rejects, audited passes) join PatchCore's good reference (their
  patches farthest from the bank are appended to it, bounded) and the head's negatives;
* confirmed defects of **known** classes (head classes, provisional ones included) join the
  replay store with augmented copies under the taxonomy's policy;
* the convex logistic-regression head is re-fitted on replay + new rows, the fine-tuned tail
  stays fixed (the new rows are described by the deployed network), and the defect threshold is
  re-derived from out-of-fold scores of replay + new rows, so what was learned applies;
* a **new** class goes through ``add_class`` (old rows fixed, bias-corrected); with a single
  example it cannot be validated yet and is returned as deferred (the caller keeps it).

Session rows can count more than training rows (``session_weight``: copies of each reviewed
frame, augmented): a handful of reviewed frames must be able to move a head fitted on hundreds.
``AUGMENT_GOOD_COPIES`` False makes a confirmed good's copies exact duplicates of its
descriptor instead (the training side's goods are never augmented); kept as an ablation, not
the default (vision README, "The improvement loop": what it changes, why not the default).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from linesight.vision.components.calibrate import balanced_threshold
from linesight.vision.components.patchcore import PatchCore
from linesight.vision.components.scoring import GOOD, InputError, check_images, softmax
from linesight.vision.data.augment import augment_image
from linesight.vision.model.fit import check_labels, fit_head
from linesight.vision.model.network import features, resize
from linesight.vision.taxonomy import Augmentation

if TYPE_CHECKING:
    from linesight.vision.model.inspection import InspectionModel

__all__ = ["AUGMENT_GOOD_COPIES", "REVIEW_COPIES", "UpdateReport", "update_from_reviews"]

# augmented copies of each reviewed frame in the head's training rows (chosen by
# leave-one-session-out on magnetic tile, ``tests/bench/bench_loop.py``; README "The loop")
REVIEW_COPIES = 2
# whether a confirmed good's copies are augmented like a defect's (True) or exact duplicates of
# its descriptor (False). Augmented goods are the only augmented good rows the head sees (training
# goods never are), so they teach it that augmentation artefacts mean good and pull edge defects
# down (a break at 0.40 falls to 0.13 after one update with augmented goods, to 0.31 with
# duplicates); on the loop benchmark duplicates lower false rejects but do not lower escapes
# (vision README, "The improvement loop"), so the default stays as measured there.
AUGMENT_GOOD_COPIES = True


@dataclass
class UpdateReport:
    """What ``update_from_reviews`` learned and what it cost (log it with the model version)."""

    n_images: int
    used: dict[str, int]  # labels learned from, per class
    new_classes: list[str]
    deferred: list[int]  # indices of frames not learned yet (a new class with one example)
    bank_rows_added: int
    old_thresholds: dict[str, float]
    new_thresholds: dict[str, float]
    classes: list[str]
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    version: str = ""
    cv_metrics: dict[str, float] = field(default_factory=dict)


def _grow_bank(pc: PatchCore, patches: np.ndarray, per_image: int, cap: int) -> int:
    """Append up to ``per_image`` patches per good image, farthest first from the current bank
    (greedy k-centre continued from it), while the bank stays within ``cap`` rows."""
    room = cap - len(pc.bank)
    if room <= 0 or len(patches) == 0 or not pc.fitted:
        return 0
    flat = patches.reshape(-1, patches.shape[-1]).astype(np.float32)
    n = min(room, per_image * len(patches))
    proj = flat @ pc.projection
    bank_p = pc.bank @ pc.projection
    sq = np.einsum("ij,ij->i", proj, proj)
    b_sq = np.einsum("ij,ij->i", bank_p, bank_p)
    min_d = np.full(len(flat), np.inf)
    for s in range(0, len(bank_p), 512):
        d = sq[:, None] - 2.0 * (proj @ bank_p[s : s + 512].T) + b_sq[None, s : s + 512]
        np.minimum(min_d, d.min(axis=1), out=min_d)
    chosen = []
    for _ in range(n):
        i = int(np.argmax(min_d))
        if min_d[i] <= 0:
            break
        chosen.append(i)
        np.minimum(min_d, sq - 2.0 * (proj @ proj[i]) + sq[i], out=min_d)
    if not chosen:
        return 0
    pc.set_bank(np.concatenate([pc.bank, flat[chosen]]), pc.projection)
    return len(chosen)


# key in ``model.metrics`` (saved with the model) of the first replay row a review added: rows
# from there on are the session's own; a full fit starts the metrics, and so the session, afresh
REVIEW_ROWS_FROM = "review_rows_from"
# share of the good mass the session's reviewed good frames get when the defect threshold is
# re-derived after an update (0: they count as single rows among the training side's)
SESSION_SHARE = 0.1
# the same for the defect mass and the session's confirmed defects (audited passes, reviewed
# rejects): without it the session's goods move the threshold and its defects barely do
DEFECT_SESSION_SHARE = 0.5
# the most training rows one session row weighs in that re-derivation, as many as it has in the
# head (itself and its REVIEW_COPIES copies): early in a session a share spread over five reviewed
# frames made each weigh six training rows, and two goods that score like defects lifted the
# threshold over a tenth of the defects (exp4: 0.44 -> 0.95 after the first update)
SESSION_ROW_WEIGHT = 1.0 + REVIEW_COPIES


def _session_weights(session: np.ndarray, share: float) -> np.ndarray | None:
    """Per-row weights giving ``session`` rows ``share`` of the mass, or less while there are
    few of them (``SESSION_ROW_WEIGHT``); None when there is nothing to weight."""
    n_session, n_rest = int(session.sum()), int((~session).sum())
    if share <= 0 or n_session == 0 or n_rest == 0:
        return None
    heavy = n_session * SESSION_ROW_WEIGHT
    share = min(share, heavy / (heavy + n_rest))
    return np.where(session, share / n_session, (1.0 - share) / n_rest)


def _session_operating_point(
    model: InspectionModel, first_row: int, share: float, defect_share: float = 0.0
) -> float | None:
    """The defect threshold re-derived from out-of-fold scores with the session's reviewed good
    frames weighted to ``share`` of the good mass and its confirmed defects to ``defect_share``
    of the defect mass (training rows the rest); None when there is nothing to weight (no
    session rows, no good class, or out-of-fold scores missing)."""
    state, replay = model.state, model.replay
    if state is None or GOOD not in state.head_classes or len(replay.oof) < len(replay):
        return None
    orig = np.flatnonzero(replay.original)
    p = softmax(replay.oof[orig], state.temperature)
    defect_p = 1.0 - p[:, state.head_classes.index(GOOD)]
    good = np.array([replay.labels[i] == GOOD for i in orig])
    session = orig >= first_row
    wg = _session_weights(session[good], share)
    wd = _session_weights(session[~good], defect_share)
    if (wg is None and wd is None) or not good.any() or good.all():
        return None
    cap = min(0.49, model.config.oof_frr_factor * model.target_frr)
    return float(balanced_threshold(defect_p[good], defect_p[~good], cap, good_weights=wg, defect_weights=wd))


def update_from_reviews(
    model: InspectionModel,
    images: Sequence[np.ndarray],
    labels: Sequence[str],
    *,
    groups: Sequence[str] | None = None,
    session_weight: int | None = None,
    bank_rows_per_image: int = 8,
) -> UpdateReport:
    """See ``InspectionModel.update_from_reviews``."""
    state = model.require_fitted()
    cfg = model.config
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    imgs = check_images(images)
    labs = check_labels(labels, len(imgs))
    weight = REVIEW_COPIES if session_weight is None else int(session_weight)
    if weight < 0:
        raise InputError(f"session_weight must be >= 0, got {weight}")
    if groups is not None and len(groups) != len(imgs):
        raise InputError(f"groups: {len(groups)} entries for {len(imgs)} images")
    old = model.thresholds
    counts = Counter(labs)
    stored = model.replay.original_counts()
    # classes the head has, and rare ones (left to PatchCore so far) with enough labels now for a
    # provisional head output; a rare class still short of that, or a new class with a single
    # example, cannot be validated yet: deferred, the caller keeps those frames for the next update
    rare = set(model.anomaly_only_classes) - set(state.head_classes)
    known = (set(state.head_classes) | {GOOD} | rare) - {state.other_class}
    ready = {c for c in rare if stored[c] + counts[c] >= cfg.min_other_examples}
    new_classes = sorted(c for c in counts if c not in known and counts[c] >= 2)
    deferred = [
        i
        for i, c in enumerate(labs)
        if (c in rare and c not in ready) or (c not in known and c not in new_classes)
    ]
    known -= rare - ready
    if model.taxonomy is not None and model.taxonomy.product != "generic":
        unknown = [c for c in new_classes if not model.taxonomy.has_class(c)]
        if unknown:
            raise InputError(
                f"labels {unknown} are not classes of taxonomy {model.taxonomy.product} "
                f"v{model.taxonomy.version}; publish a taxonomy version with them first"
            )
    # rows for the head: good and known classes now; new classes through add_class afterwards
    rows = [i for i, c in enumerate(labs) if c in known]

    t = time.perf_counter()
    small = resize([imgs[i] for i in rows], cfg.input_size)
    rng = np.random.default_rng(model.seed + len(model.replay))
    base = model.replay.next_group()
    gid: dict[str, int] = {}
    row_groups = np.array(
        [
            gid.setdefault(str(groups[i]), base + len(gid)) if groups is not None else base + k
            for k, i in enumerate(rows)
        ],
        dtype=np.int64,
    )
    bank_added = 0
    first_row = int(model.metrics.get(REVIEW_ROWS_FROM, len(model.replay)))
    if small:
        patches, pooled, _ = features(model.net, small, cfg.input_size)
        row_labels = [labs[i] for i in rows]
        is_good = np.array([c == GOOD for c in row_labels])
        timings["features"] = time.perf_counter() - t
        t = time.perf_counter()
        cap = cfg.patchcore.max_bank + cfg.patchcore.max_bank // 4
        bank_added = _grow_bank(model.patchcore, patches[is_good], bank_rows_per_image, cap)
        timings["patchcore"] = time.perf_counter() - t
        t = time.perf_counter()
        aug, aug_labels, aug_groups = [], [], []
        dup: list[int] = []  # rows whose copies are exact duplicates (goods, without augmentation)
        for k, (img, lab, grp) in enumerate(zip(small, row_labels, row_groups, strict=True)):
            if lab == GOOD and not AUGMENT_GOOD_COPIES:
                dup.extend([k] * weight)
                continue
            policy = model.taxonomy.augmentation_for(lab) if model.taxonomy else Augmentation()
            for _ in range(weight):
                aug.append(augment_image(img, policy, rng))
                aug_labels.append(lab)
                aug_groups.append(int(grp))
        aug_pooled = np.zeros((0, model.net.pooled_dim), np.float32)
        if aug:
            aug_pooled = features(model.net, aug, cfg.input_size)[1]
        if dup:
            aug_pooled = np.concatenate([aug_pooled, pooled[dup]])
            aug_labels += [row_labels[k] for k in dup]
            aug_groups += [int(row_groups[k]) for k in dup]
        timings["augment"] = time.perf_counter() - t
        model.replay = model.replay.append(
            np.concatenate([pooled, aug_pooled]),
            row_labels + aug_labels,
            np.concatenate([row_groups, np.array(aug_groups, dtype=np.int64)]),
            np.concatenate([np.ones(len(small), bool), np.zeros(len(aug_labels), bool)]),
        )
        # provisional classes reaching min_examples get a full head output
        stored = model.replay.original_counts()
        model.anomaly_only_classes = [c for c in model.anomaly_only_classes if stored[c] < cfg.min_examples]
        t = time.perf_counter()
        fit_head(model, state.anomaly_threshold)
        model.metrics[REVIEW_ROWS_FROM] = float(first_row)
        thr = _session_operating_point(model, first_row, SESSION_SHARE, DEFECT_SESSION_SHARE)
        if thr is not None and model.state is not None:
            model.state.defect_threshold = thr
        timings["head"] = time.perf_counter() - t
    for c in new_classes:
        t = time.perf_counter()
        model.add_class([imgs[i] for i, lab in enumerate(labs) if lab == c], c)
        timings[f"add_class_{c}"] = time.perf_counter() - t
    t = time.perf_counter()
    model.prepare_runtime()
    timings["onnx"] = time.perf_counter() - t
    seconds = time.perf_counter() - t0
    timings["total"] = seconds
    used = Counter(labs[i] for i in range(len(labs)) if i not in set(deferred))
    return UpdateReport(
        n_images=len(imgs),
        used=dict(sorted(used.items())),
        new_classes=new_classes,
        deferred=deferred,
        bank_rows_added=bank_added,
        old_thresholds=old,
        new_thresholds=model.thresholds,
        classes=model.classes,
        seconds=round(seconds, 3),
        timings={k: round(v, 3) for k, v in timings.items()},
        version=model.version,
        cv_metrics=dict(model.metrics),
    )
