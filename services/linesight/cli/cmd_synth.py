"""`linesight synth`: write a synthetic defect dataset in the import format.

A line with no labelled images yet (and the demo, and the tests) still needs data with every
column a real set has; this command produces it from a seed, so two runs give the same bytes.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from linesight.vision.data import synth


def register(subparsers: Any) -> None:
    """Add the `synth` sub-command to the `linesight` parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "synth",
        help="generate a synthetic defect dataset (manifest.csv + PNG images + masks)",
        description="Render procedural surfaces with scratches, cracks, pits and stains, with pixel "
        "masks, boxes, batches, stations and repeated parts, in the manifest layout that "
        "`linesight demo --dataset` and training read.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    parser.add_argument("--good", type=int, default=200, help="good images (default 200)")
    parser.add_argument("--per-class", type=int, default=50, help="images per defect class (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; equal seeds give equal bytes")
    parser.add_argument("--size", type=int, default=256, help=f"image side in pixels (>= {synth.MIN_SIZE})")
    parser.add_argument("--material", choices=synth.MATERIALS, default="brushed", help="surface type")
    parser.add_argument(
        "--classes",
        default=",".join(synth.DEFECT_CLASSES),
        help=f"comma-separated defect classes (default {','.join(synth.DEFECT_CLASSES)})",
    )
    parser.add_argument("--batches", type=int, default=4, help="production batches b0..bN-1 (default 4)")
    parser.add_argument("--stations", type=int, default=2, help="camera stations (default 2)")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep an existing set generated with the same arguments instead of rewriting it",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Generate the set and print a one-screen summary; bad arguments exit 2 with the reason."""
    classes = [c.strip() for c in str(args.classes).split(",") if c.strip()]
    started = time.perf_counter()
    try:
        out = synth.generate_dataset(
            args.out,
            n_good=args.good,
            per_class=args.per_class,
            seed=args.seed,
            size=args.size,
            material=args.material,
            classes=classes,
            n_batches=args.batches,
            n_stations=args.stations,
            reuse=args.reuse,
        )
    except (ValueError, FileExistsError) as exc:
        print(f"linesight synth: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - started
    labels, parts = _summarise(out / "manifest.csv")
    total = sum(labels.values())
    by_label = ", ".join(f"{name} {count}" for name, count in labels.items())
    print(f"wrote {total} images of {parts} parts to {out} in {elapsed:.1f} s ({by_label})")
    print(f"manifest: {out / 'manifest.csv'}")
    return 0


def _summarise(manifest: Path) -> tuple[Counter[str], int]:
    with manifest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return Counter(r["label"] for r in rows), len({r["part_id"] for r in rows})
