"""Review-loop benchmark (`make bench`): leave-one-session-out over magnetic tile exp1-exp5.

For each left-out session: fit the default model on the other sessions (exp0 included) within the
usual caps (300 good, <= 50 per class, seed 0), then stream the left-out session through the
review loop exactly as ``linesight eval --loop --review-budget 40 --update-every 10`` does
(``linesight.vision.evaluation.loop``: seeded order, prequential decisions, reviews only in the
first half chosen by the product's selection policy within the budget, ``update_from_reviews``
every 10 labels, the second half never labelled). Printed per session: false rejects and escapes
of the second half before (initial model) and after (final model) the loop, defect-type accuracy
before/after, labels used and the slowest update; then mean and worst. Never asserts.

Each session's model is fitted once and streamed in several seeded orders (``--seeds``, default
0,1,2; the audit draw follows the seed too): one order moves single frames, so a table per seed,
then per session the mean and the worst seed, and the worst escapes after *any* update ("esc
max": every update is a model the line would run).

Run: ``python -m tests.bench.bench_loop [--sessions exp1,...,exp5] [--review-budget 40]
[--update-every 10] [--seeds 0,1,2] [--model-cache DIR]`` (``--sessions exp5 --seeds 0`` for a
short run; ``--model-cache`` keeps fitted models between runs, for experiments on the update alone).

``--bound`` prints, instead of the loop, what no selection or operating point can beat: the model
updated once with *every* first-half frame labelled, then the fewest second-half escapes any
threshold reaches while rejecting at most one good frame of the second half (chosen on the
second half itself: an oracle, never a default).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from linesight.vision.data.imageio import read_image
from linesight.vision.data.manifest import GOOD, load_manifest
from linesight.vision.data.splits import cap_training, split_by_batches
from linesight.vision.evaluation.loop import LoopOptions, loop_selection, run_loop, summarize
from linesight.vision.evaluation.metrics import sample_mask
from linesight.vision.model import InspectionModel, adapt

DATASET = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "magnetic_tile"
SESSIONS = ("exp1", "exp2", "exp3", "exp4", "exp5")


def _model(session: str, train: list[Any], cache: Path | None) -> tuple[InspectionModel, float]:
    where = cache / f"{session}-seed0" if cache else None
    if where is not None and (where / "model.json").exists():
        return InspectionModel.load(where), 0.0
    model = InspectionModel.create(seed=0)
    t = time.perf_counter()
    images = [read_image(s.image) for s in train]
    # as ``linesight eval`` fits: labels with geometry (masks) train the segmentation head
    masks = [
        None if s.label == GOOD else sample_mask(s, (img.shape[0], img.shape[1]))
        for s, img in zip(train, images, strict=True)
    ]
    model.fit(images, [s.label for s in train], groups=[s.part_id for s in train], masks=masks)
    seconds = time.perf_counter() - t
    if where is not None:
        model.save(where)
    return model, seconds


def run_session(
    session: str,
    budget: int,
    every: int,
    cache: Path | None,
    overrides: dict[str, Any] | None = None,
    fill_end: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    split = split_by_batches(load_manifest(DATASET), [session])
    train = cap_training(split.train, max_good=300, max_per_class=50, seed=0)
    counts: dict[str, int] = {}
    for s in train:
        counts[s.label] = counts.get(s.label, 0) + 1
    train = [s for s in train if counts[s.label] >= 2 or s.label == GOOD]  # as linesight eval does
    model, fit_s = _model(session, train, cache)
    test = list(split.test)
    images = [read_image(s.image) for s in test]
    truth = [s.label for s in test]
    classes = sorted({s.label for s in train if s.label != GOOD})
    selection = loop_selection(budget, len(images) // 2, every, seed)
    if overrides:
        selection = dataclasses.replace(selection, **overrides)
    opts = LoopOptions(review_budget=budget, update_every=every, seed=seed, selection=selection)
    if fill_end is not None:
        opts = dataclasses.replace(opts, fill_end=bool(fill_end))
    run = run_loop(model, images, lambda i: truth[i], opts)
    loop, details = summarize(run, truth, budget, classes)
    return {
        "session": session,
        "seed": seed,
        "fit_seconds": round(fit_s, 1),
        "loop": loop,
        "details": details,
    }


def bound_session(session: str, cache: Path | None, seed: int = 0) -> dict[str, Any]:
    """The ``--bound`` figures of one left-out session (see the module docstring)."""
    split = split_by_batches(load_manifest(DATASET), [session])
    train = cap_training(split.train, max_good=300, max_per_class=50, seed=0)
    model, _ = _model(session, train, cache)
    test = list(split.test)
    order = list(range(len(test)))
    random.Random(seed).shuffle(order)  # the stream order of ``run_loop``
    half = len(order) // 2
    first, second = order[:half], order[half:]
    report = model.update_from_reviews(
        [read_image(test[i].image) for i in first], [test[i].label for i in first]
    )
    p = np.array([pr.defect_probability for pr in model.predict([read_image(test[i].image) for i in second])])
    good = np.array([test[i].label == GOOD for i in second])
    g, d = p[good], p[~good]
    thr = model.state.defect_threshold if model.state is not None else 0.5
    oracle = min((int((d < t).sum()), float(t)) for t in np.unique(np.r_[g, d, 1.0]) if (g >= t).sum() <= 1)
    return {
        "session": session,
        "labels": len(first) - len(report.deferred),
        "false_rejects": int((g >= thr).sum()),
        "escapes": int((d < thr).sum()),
        "oracle_escapes_at_1_false_reject": oracle[0],
        "goods": int(good.sum()),
        "defects": int((~good).sum()),
    }


def _pct(v: float | None) -> str:
    return "  n/a" if v is None else f"{100 * v:5.1f}"


def _agg(values: tuple[Any, ...], fn: Any) -> float | None:
    v = [float(x) for x in values if x is not None]
    return float(fn(v)) if v else None


def _print_row(row: tuple[Any, ...]) -> None:
    name, *rates, labels, seconds = row
    cells = "".join(f"{_pct(v):>8}" for v in rates[:5]) + "".join(f"{_pct(v):>9}" for v in rates[5:])
    print(f"{name:<8}{cells}{labels or 0:>7.1f}{seconds or 0:>10.1f}")


def _curve_max(r: dict[str, Any], key: str) -> float:
    """The worst rate of the second half after any of the session's updates (each one is a
    model a line would have run)."""
    return max((p[key] for p in r["loop"]["curve"][1:]), default=r["loop"]["after"][key])


def _table(rows: list[dict[str, Any]]) -> None:
    """One line per session, then mean and worst."""
    print(
        f"{'session':<8}{'FRR bef':>8}{'esc bef':>8}{'FRR aft':>8}{'esc aft':>8}{'esc max':>8}{'type bef':>9}"
        f"{'type aft':>9}{'labels':>7}{'upd s max':>10}"
    )
    table = []
    for r in rows:
        lp, d = r["loop"], r["details"]
        table.append(
            (
                r["session"],
                lp["before"]["false_reject_rate"],
                lp["before"]["escape_rate"],
                lp["after"]["false_reject_rate"],
                lp["after"]["escape_rate"],
                _curve_max(r, "escape_rate"),
                d["type_accuracy_before"],
                d["type_accuracy_after"],
                float(lp["labels_used"]),
                float(lp["update_seconds_max"]),
            )
        )
    for row in table:
        _print_row(row)
    if table:
        cols = list(zip(*(row[1:] for row in table), strict=True))
        mean = tuple(_agg(c, np.mean) for c in cols)
        # worst: highest error rates, labels and seconds; lowest type accuracy
        worst = tuple(_agg(c, np.min if k in (5, 6) else np.max) for k, c in enumerate(cols))
        _print_row(("mean", *mean))
        _print_row(("worst", *worst))
        print(
            "targets after the loop: FRR <= 2 % and escapes <= 2 % on every session; type accuracy not lower"
            " (esc max: the worst escapes after any update)"
        )


def _over_seeds(rows: list[dict[str, Any]], seeds: list[int]) -> None:
    """Per session, after the loop: mean over the stream seeds and the worst seed; the same over
    every (session, seed) run. One stream order moves single frames; several say what holds."""
    print(f"\nover stream seeds {', '.join(map(str, seeds))}: after the loop, mean / worst seed, %")
    print(f"{'session':<8}{'FRR aft':>14}{'esc aft':>14}{'esc max':>14}{'type drop':>11}")
    by_session: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_session.setdefault(r["session"], []).append(r)
    groups = [*by_session.items(), ("all", rows)]
    for name, rs in groups:
        frr = [r["loop"]["after"]["false_reject_rate"] for r in rs]
        esc = [r["loop"]["after"]["escape_rate"] for r in rs]
        esc_max = [_curve_max(r, "escape_rate") for r in rs]
        drop = [
            r["details"]["type_accuracy_before"] - r["details"]["type_accuracy_after"]
            for r in rs
            if r["details"]["type_accuracy_before"] is not None
            and r["details"]["type_accuracy_after"] is not None
        ]
        cells = "".join(
            f"{_pct(float(np.mean(v))):>7}/{_pct(max(v)).strip():>6}" for v in (frr, esc, esc_max)
        )
        print(f"{name:<8}{cells}{_pct(max(drop) if drop else None):>11}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", default=",".join(SESSIONS))
    ap.add_argument("--review-budget", type=int, default=40)
    ap.add_argument("--update-every", type=int, default=10)
    ap.add_argument("--model-cache", type=Path)
    ap.add_argument(
        "--seeds", default="0,1,2", help="stream orders (and audit draws) to run; one model per session"
    )
    ap.add_argument("--json", type=Path, help="also write every session's figures")
    # ablations (defaults: the product's own settings)
    ap.add_argument("--fill", type=int, choices=(0, 1), help="loop: spend what is left at the half's end")
    ap.add_argument("--fill-stream", type=int, choices=(0, 1), help="selection: fill during the stream")
    ap.add_argument("--region-high", type=float, help="selection: segmentation peak that disagrees")
    ap.add_argument("--op-share", type=float, help="update: session goods' share of the operating point")
    ap.add_argument("--defect-share", type=float, help="update: session defects' share of the threshold")
    ap.add_argument(
        "--good-copies", choices=("aug", "dup"), help="update: goods' copies augmented or duplicated"
    )
    ap.add_argument("--audit-reject", type=float, help="selection: share of automatic rejects audited")
    ap.add_argument("--band", type=float, help="selection: confidence band half-width, logits")
    ap.add_argument("--bound", action="store_true", help="all first-half labels, oracle threshold (no loop)")
    args, _ = ap.parse_known_args(argv)  # run_all hands every bench the same arguments
    if not (DATASET / "manifest.csv").exists():
        print(f"bench_loop: {DATASET} is absent; nothing to measure")
        return 0
    overrides: dict[str, Any] = {}
    if args.fill_stream is not None:
        overrides["fill"] = bool(args.fill_stream)
    if args.region_high is not None:
        overrides["region_high"] = args.region_high
    if args.op_share is not None:
        adapt.SESSION_SHARE = args.op_share
    if args.defect_share is not None:
        adapt.DEFECT_SESSION_SHARE = args.defect_share
    if args.good_copies is not None:
        adapt.AUGMENT_GOOD_COPIES = args.good_copies == "aug"
    if args.audit_reject is not None:
        overrides["audit_reject_rate"] = args.audit_reject
    if args.band is not None:
        overrides["band_logit"] = args.band
    if args.bound:
        print("bench_loop --bound: every first-half frame labelled, one update; second half (frames)")
        print(f"{'session':<8}{'labels':>7}{'FR':>4}{'esc':>5}{'esc@FR<=1':>11}{'goods':>7}{'defects':>8}")
        for session in args.sessions.split(","):
            b = bound_session(session, args.model_cache)
            print(
                f"{session:<8}{b['labels']:>7}{b['false_rejects']:>4}{b['escapes']:>5}"
                f"{b['oracle_escapes_at_1_false_reject']:>11}{b['goods']:>7}{b['defects']:>8}",
                flush=True,
            )
        return 0
    print(f"bench_loop: selection {loop_selection(args.review_budget, 100, args.update_every)}")
    print(
        f"  overrides {overrides}, fill at the end {args.fill}, share {adapt.SESSION_SHARE}, "
        f"defect share {adapt.DEFECT_SESSION_SHARE}",
        flush=True,
    )
    seeds = [int(x) for x in args.seeds.split(",") if x]
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        # each session's model is fitted once and loaded again for every stream seed
        cache = args.model_cache or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="loop-")))
        for seed in seeds:
            done = []
            for session in args.sessions.split(","):
                t = time.perf_counter()
                r = run_session(
                    session, args.review_budget, args.update_every, cache, overrides, args.fill, seed
                )
                print(
                    f"  {session} seed {seed}: fit {r['fit_seconds']} s, "
                    f"loop {time.perf_counter() - t - r['fit_seconds']:.0f} s",
                    flush=True,
                )
                print(
                    f"    reasons {r['details']['reasons']}, asked {r['details']['asked_labels']}", flush=True
                )
                done.append(r)
            print(
                f"\nreview loop, leave-one-session-out (budget {args.review_budget}, update every "
                f"{args.update_every}, stream seed {seed}); second half of each left-out session, %"
            )
            _table(done)
            rows += done
    if len(seeds) > 1:
        _over_seeds(rows, seeds)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
