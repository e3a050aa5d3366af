"""The improvement loop measured as a prequential stream (``linesight eval --loop``).

Protocol: the test side is streamed in a seeded order, in arrival batches; each frame is decided
by the model as it is at that moment, before any label of it is known. Only frames of the first
half may be reviewed: the product's own selection policy (``linesight.vision.selection``) picks
them within the review budget, and their ground-truth label is asked from an oracle, as an
inspector would answer. Every ``update_every`` answered labels the model learns from them
(``update_from_reviews``, in process). When the first half ends, what the policy's reasons left
of the budget is spent on first-half frames not reviewed yet, rescored by the current model and
routed by the same policy with ``fill`` (least certain last; ``fill_end``); what is still
pending then is learned from. The second half is decided by the initial model (``before``) and by the final
model (``after``) and is never labelled: the oracle is never asked about it, which is what
``tests/unit/vision/test_loop.py`` checks. The curve is the second half's false-reject and
escape rates after each update, against the labels used so far.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from linesight.vision.selection import ReviewSelector, SelectionConfig, region_score

__all__ = ["LoopOptions", "LoopRun", "loop_selection", "run_loop", "summarize"]

GOOD = "good"


class Learner(Protocol):
    def predict(self, images: Sequence[np.ndarray], *, batch_size: int = 32) -> Sequence[Any]: ...
    def update_from_reviews(self, images: Sequence[np.ndarray], labels: Sequence[str]) -> Any: ...


@dataclass(frozen=True)
class LoopOptions:
    review_budget: int = 40
    update_every: int = 10
    seed: int = 0
    arrival_batch: int = 8  # frames decided together (a line's batch of captures)
    station: str = "loop"
    selection: SelectionConfig | None = None  # None: ``loop_selection``
    curve: bool = True  # score the second half after every update (costs one pass each)
    # at the end of the reviewable half, spend what is left of the budget on its frames not
    # reviewed yet, rescored by the current model and routed by the same policy (``fill``)
    fill_end: bool = True


def loop_selection(budget: int, frames: int, update_every: int, seed: int = 0) -> SelectionConfig:
    """The product's default routing sized for a stream: the budget as a hard cap, a rate that
    spreads it over the reviewable frames (1.5x, so quiet stretches are made up for), a burst of
    one update's worth, and audit rates that sample rejects much more than passes (a false
    reject is the costliest error a new session makes, and rejects are few)."""
    rate = min(1.0, 1.5 * budget / max(frames, 1))
    return SelectionConfig(
        rate_cap=rate,
        burst=float(max(update_every, 1)),
        budget=budget,
        audit_pass_rate=0.05,
        audit_reject_rate=0.5,
        seed=seed,
    )


@dataclass
class Scored:
    """What the evaluation keeps of one prediction."""

    defect_probability: float
    defect_threshold: float
    class_probs: dict[str, float]
    anomaly_score: float = float("nan")
    region_score: float = float("nan")  # segmentation map's peak (selection.region_score)

    @property
    def is_defect(self) -> bool:
        return self.defect_probability >= self.defect_threshold


def _keep(preds: Sequence[Any]) -> list[Scored]:
    return [
        Scored(
            float(p.defect_probability),
            float(p.defect_threshold),
            dict(p.class_probs),
            float(getattr(p, "anomaly_score", float("nan"))),
            region_score(p),
        )
        for p in preds
    ]


@dataclass
class UpdateStep:
    labels_used: int
    seconds: float
    second_half: list[Scored] | None  # the model after this update on the second half


@dataclass
class LoopRun:
    """A stream's record; ``order`` maps stream positions to test indices."""

    order: list[int]
    half: int  # stream positions < half may be reviewed
    decided: list[Scored]  # prequential decisions of the first half, in stream order
    asked: list[int] = field(default_factory=list)  # test indices whose labels were asked
    reasons: list[str] = field(default_factory=list)
    before: list[Scored] = field(default_factory=list)  # initial model, second half
    after: list[Scored] = field(default_factory=list)  # final model, second half
    updates: list[UpdateStep] = field(default_factory=list)

    @property
    def second_half(self) -> list[int]:
        return self.order[self.half :]


def run_loop(
    model: Learner,
    images: Sequence[np.ndarray],
    ask: Callable[[int], str],
    opts: LoopOptions,
    *,
    log: Callable[[str], None] = lambda _msg: None,
) -> LoopRun:
    """Stream ``images`` through ``model`` (which learns in place); ``ask(i)`` is the oracle's
    label of test image ``i``, asked only for frames the selection routes in the first half."""
    if opts.review_budget < 0 or opts.update_every < 1:
        raise ValueError("review_budget must be >= 0 and update_every >= 1")
    order = list(range(len(images)))
    random.Random(opts.seed).shuffle(order)
    half = len(order) // 2
    second = [images[i] for i in order[half:]]
    run = LoopRun(order, half, [])
    run.before = _keep(model.predict(second))
    selector = ReviewSelector(
        opts.selection or loop_selection(opts.review_budget, half, opts.update_every, opts.seed)
    )
    pending: list[int] = []  # test indices answered, not learned from yet
    labels: dict[int, str] = {}

    def learn() -> None:
        report = model.update_from_reviews([images[i] for i in pending], [labels[i] for i in pending])
        deferred = [pending[k] for k in getattr(report, "deferred", [])]
        seconds = float(getattr(report, "seconds", 0.0))
        used = len(run.asked) - len(deferred)
        curve = _keep(model.predict(second)) if opts.curve else None
        run.updates.append(UpdateStep(used, seconds, curve))
        log(f"update with {len(pending) - len(deferred)} labels ({used} used in all): {seconds:.1f} s")
        pending[:] = deferred

    for s in range(0, half, opts.arrival_batch):
        idx = order[s : min(s + opts.arrival_batch, half)]
        preds = list(model.predict([images[i] for i in idx]))
        run.decided.extend(_keep(preds))
        routing = selector.select(preds, station=opts.station, keys=[str(i) for i in idx])
        for k in routing.routed:
            i = idx[k]
            labels[i] = ask(i)
            run.asked.append(i)
            run.reasons.append(str(routing.reasons[k]))
            pending.append(i)
            if len(pending) >= opts.update_every:
                learn()
    left = opts.review_budget - len(run.asked)
    rest = [i for i in order[:half] if i not in labels]
    if opts.fill_end and left > 0 and rest:
        preds = list(model.predict([images[i] for i in rest]))
        cfg = dataclasses.replace(selector.config, fill=True, budget=left, rate_cap=1.0, burst=float(left))
        routing = ReviewSelector(cfg).select(preds, station=opts.station, keys=[str(i) for i in rest])
        for k in routing.routed:
            i = rest[k]
            labels[i] = ask(i)
            run.asked.append(i)
            run.reasons.append(f"end:{routing.reasons[k]}")
            pending.append(i)
            if len(pending) >= opts.update_every:
                learn()
    if pending:
        learn()
    last = run.updates[-1].second_half if run.updates else None
    if last is not None:
        run.after = last
    else:
        run.after = _keep(model.predict(second)) if run.updates else list(run.before)
    return run


def _rates(scored: Sequence[Scored], truth: Sequence[str]) -> dict[str, Any]:
    is_def = np.array([t != GOOD for t in truth], dtype=bool)
    rej = np.array([s.is_defect for s in scored], dtype=bool)
    frr = float(rej[~is_def].mean()) if (~is_def).any() else None
    esc = float((~rej[is_def]).mean()) if is_def.any() else None
    return {"false_reject_rate": frr, "escape_rate": esc, "frames": len(scored)}


def type_accuracy(scored: Sequence[Scored], truth: Sequence[str], classes: Sequence[str]) -> float | None:
    """Most probable defect class vs truth on defects of ``classes`` (the training side's)."""
    hits = []
    for s, t in zip(scored, truth, strict=True):
        if t == GOOD or t not in classes:
            continue
        defect = {c: p for c, p in s.class_probs.items() if c != GOOD}
        hits.append(bool(defect) and max(defect, key=lambda c: defect[c]) == t)
    return float(np.mean(hits)) if hits else None


def summarize(
    run: LoopRun, truth: Sequence[str], review_budget: int, classes: Sequence[str] = ()
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``"loop"`` JSON (the fields ``linesight eval --loop`` promises) and the details
    beside it (reasons, type accuracy, prequential first-half rates). ``truth``: every test
    image's label; only the second half's and the asked ones are read here, for scoring."""
    second_truth = [truth[i] for i in run.second_half]
    before = _rates(run.before, second_truth)
    after = _rates(run.after, second_truth)
    curve = [{"labels_used": 0, **{k: before[k] for k in ("false_reject_rate", "escape_rate")}}]
    for step in run.updates:
        if step.second_half is not None:
            r = _rates(step.second_half, second_truth)
            curve.append(
                {
                    "labels_used": step.labels_used,
                    "false_reject_rate": r["false_reject_rate"],
                    "escape_rate": r["escape_rate"],
                }
            )
    used = run.updates[-1].labels_used if run.updates else 0
    loop = {
        "review_budget": review_budget,
        "labels_used": used,
        "updates": len(run.updates),
        "update_seconds_max": round(max((u.seconds for u in run.updates), default=0.0), 3),
        "before": before,
        "after": after,
        "curve": curve,
    }
    details = {
        "reasons": dict(Counter(run.reasons)),
        "asked_labels": dict(Counter(truth[i] for i in run.asked)),
        "type_accuracy_before": type_accuracy(run.before, second_truth, classes),
        "type_accuracy_after": type_accuracy(run.after, second_truth, classes),
        "first_half_prequential": _rates(run.decided, [truth[i] for i in run.order[: run.half]]),
        "update_seconds": [round(u.seconds, 3) for u in run.updates],
    }
    return loop, details
