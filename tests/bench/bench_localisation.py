"""Localisation and qualification benchmark (`make bench`, localisation part).

Prints:
* the severity measurement's error on synthetic shapes of known size (area and length, mm);
* magnetic tile, leave one session out over exp1-exp5 (each session held out in turn, trained on
  the others: 300 good, <= 50 per class, masks train the segmentation head): pixel AUROC, AUPRO
  and region IoU overall and per class, image figures, and the review load with automatic false
  rejects and escapes at the model's fitted band, plus the band trade-off table and why frames
  went to review; mean and worst over the sessions. ``--sessions exp5`` is the short run (the
  exp5 protocol alone);
* NEU-DET (50 per class train, the rest test; boxes as geometry): box localisation and type
  accuracy.

Run: ``python -m tests.bench.bench_localisation [--sessions exp5] [--no-neu]``. Minutes per
session on 2 cores (one fit each). Never asserts timings. Skips with a printed reason when
../shared/datasets is absent.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from linesight.cli.cmd_eval import EvalOptions, run_evaluation
from linesight.vision.data.manifest import load_manifest
from linesight.vision.data.splits import Split, cap_training, split_by_batches
from linesight.vision.evaluation.qualification import qualification_text
from linesight.vision.geometry import measurement_errors

DATASETS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"
SESSIONS = ("exp1", "exp2", "exp3", "exp4", "exp5")
TARGETS = {"pixel_auroc": 0.95, "aupro": 0.90}


def severity_table() -> float:
    """Print measured vs true area and length of the synthetic shapes; returns the worst error."""
    rows = measurement_errors(px_per_mm=10.0)
    print("Severity measurement on synthetic shapes (10 px/mm)")
    print(f"  {'shape':<26}{'area mm2':>10}{'true':>9}{'err':>8}{'length mm':>11}{'true':>8}{'err':>8}")
    worst = 0.0
    for r in rows:
        worst = max(worst, abs(float(r["area_err"])), abs(float(r["length_err"])))
        print(
            f"  {r['shape']!s:<26}{float(r['area_mm2']):>10.2f}{float(r['true_area_mm2']):>9.2f}"
            f"{100 * float(r['area_err']):>7.2f}%{float(r['length_mm']):>11.2f}"
            f"{float(r['true_length_mm']):>8.2f}{100 * float(r['length_err']):>7.2f}%"
        )
    print(f"  worst |error| {100 * worst:.2f} % (target <= 5 %)")
    return worst


def run_session(session: str, seed: int) -> dict[str, Any]:
    samples = load_manifest(DATASETS / "magnetic_tile")
    split = split_by_batches(samples, [session])
    opts = EvalOptions(seed=seed, max_good=300, max_per_class=50, gallery=0, checks=False)
    return run_evaluation(split, opts, log=lambda _m: None).result


def run_neu(seed: int) -> dict[str, Any]:
    samples = load_manifest(DATASETS / "neu_det")
    train = cap_training(samples, max_per_class=50, seed=seed)
    chosen = {s.image for s in train}
    split = Split(train, [s for s in samples if s.image not in chosen], "50 per class train, rest test")
    return run_evaluation(split, EvalOptions(seed=seed, gallery=0, checks=False), log=lambda _m: None).result


def _fig(v: Any, pct: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.1f}%" if pct else f"{v:.3f}"


def summary(results: dict[str, dict[str, Any]]) -> None:
    """One line per session, then mean and worst of the localisation and review figures."""
    print("\nMagnetic tile, one session held out (trained on the others)")
    head = (
        f"  {'held out':<9}{'pix AUROC':>10}{'AUPRO':>8}{'reg IoU':>9}{'img AUROC':>10}{'type acc':>9}"
        f"{'auto FRR':>9}{'escapes':>8}{'review':>8}{'fit s':>7}{'img/s':>7}"
    )
    print(head)
    cols: dict[str, list[float]] = {}
    for s, r in results.items():
        loc, rev = r.get("localization") or {}, r.get("review") or {}
        vals = {
            "pixel_auroc": loc.get("pixel_auroc"),
            "aupro": loc.get("aupro"),
            "region_iou": loc.get("region_iou"),
            "image_auroc": (r.get("detection") or {}).get("image_auroc"),
            "type_accuracy": (r.get("classification") or {}).get("accuracy"),
            "auto_frr": rev.get("false_reject_rate"),
            "escapes": rev.get("escape_rate"),
            "review": rev.get("review_rate"),
        }
        for k, v in vals.items():
            if v is not None:
                cols.setdefault(k, []).append(float(v))
        print(
            f"  {s:<9}{_fig(vals['pixel_auroc']):>10}{_fig(vals['aupro']):>8}{_fig(vals['region_iou']):>9}"
            f"{_fig(vals['image_auroc']):>10}{_fig(vals['type_accuracy']):>9}"
            f"{_fig(vals['auto_frr'], True):>9}"
            f"{_fig(vals['escapes'], True):>8}{_fig(vals['review'], True):>8}"
            f"{r.get('train_seconds', 0):>7.0f}{r.get('images_per_second') or 0:>7.0f}"
        )
    if len(results) > 1:
        higher_better = {"pixel_auroc", "aupro", "region_iou", "image_auroc", "type_accuracy"}
        for label, pick in (("mean", np.mean), ("worst", None)):
            parts = []
            for k in (
                "pixel_auroc",
                "aupro",
                "region_iou",
                "image_auroc",
                "type_accuracy",
                "auto_frr",
                "escapes",
                "review",
            ):
                v = cols.get(k)
                if not v:
                    parts.append("n/a")
                    continue
                x = float(pick(v)) if pick else (min(v) if k in higher_better else max(v))
                parts.append(_fig(x, k in ("auto_frr", "escapes", "review")))
            print(f"  {label:<9}" + "".join(f"{p:>9}" for p in parts))
    for k, t in TARGETS.items():
        v = cols.get(k)
        if v:
            print(f"  {k}: mean {np.mean(v):.3f}, worst {min(v):.3f}  (target >= {t})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sessions", default=",".join(SESSIONS), help="sessions held out in turn (exp5: short)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-neu", action="store_true", help="skip NEU-DET")
    ap.add_argument("--json", type=Path, help="write every result here")
    args, _ = ap.parse_known_args(argv)  # run_all passes its own options to every bench
    worst = severity_table()
    if not DATASETS.is_dir():
        print(f"SKIP: datasets folder absent ({DATASETS}); localisation not benchmarked")
        return 0
    results: dict[str, dict[str, Any]] = {}
    out: dict[str, Any] = {"severity_worst_error": worst}
    if (DATASETS / "magnetic_tile" / "manifest.csv").is_file():
        for s in [x for x in args.sessions.split(",") if x]:
            t = time.perf_counter()
            results[s] = run_session(s, args.seed)
            print(f"\n--- magnetic tile, {s} held out ({time.perf_counter() - t:.0f} s wall)")
            print(qualification_text(results[s]), flush=True)
            if args.json:  # after each session: a long run cut short keeps what it measured
                args.json.write_text(json.dumps({**out, "magnetic_tile": results}, indent=2, default=str))
        summary(results)
        out["magnetic_tile"] = results
    else:
        print(f"SKIP magnetic tile: {DATASETS / 'magnetic_tile'} absent")
    if not args.no_neu and (DATASETS / "neu_det" / "manifest.csv").is_file():
        t = time.perf_counter()
        neu = run_neu(args.seed)
        print(f"\n--- NEU-DET, 50 per class train ({time.perf_counter() - t:.0f} s wall)")
        print(f"  type accuracy {_fig((neu.get('classification') or {}).get('accuracy'))} (target >= 0.99)")
        print(qualification_text(neu))
        out["neu_det"] = neu
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
