"""`linesight capture ...`: station profile tools for the capture service.

    linesight capture init-profile --out station.yaml --plant p1 --line l1 --station s1
    linesight capture calibrate --profile station.yaml --frames DATASET_OR_FOLDER
    linesight capture devices [--cti PATH]

`calibrate` fits the image-quality audit thresholds from known-good frames and writes them into
the profile under a new version, so every frame audited afterwards names the standard it met.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from linesight.capture.app import audit as qa
from linesight.capture.app.imaging import FrameDecodeError, decode
from linesight.capture.app.profile import ProfileError, StationProfile, bump_version
from linesight.capture.app.sources import SourceError, default_cti, load_replay_items


def register(subparsers: Any) -> None:
    """Add `capture` and its sub-commands to the `linesight` parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "capture", help="capture station tools: profiles, audit calibration, camera discovery"
    )
    sub = parser.add_subparsers(dest="capture_command", required=True)

    init = sub.add_parser("init-profile", help="write a starter station profile (YAML)")
    init.add_argument("--out", type=Path, required=True)
    init.add_argument("--plant", default="plant1")
    init.add_argument("--line", default="line1")
    init.add_argument("--station", default="station1")
    init.add_argument("--source", choices=("genicam", "opencv", "replay"), default="replay")
    init.add_argument(
        "--source-uri", default="", help="replay folder/dataset, OpenCV index/URL/file, or .cti"
    )
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(func=run_init)

    cal = sub.add_parser("calibrate", help="fit audit thresholds from known-good frames into the profile")
    cal.add_argument("--profile", type=Path, required=True, help="station profile YAML to update")
    cal.add_argument(
        "--frames",
        type=Path,
        required=True,
        help="folder of known-good images, or a dataset with manifest.csv (its 'good' rows)",
    )
    cal.add_argument("--label", default="good", help="manifest label of known-good frames (default good)")
    cal.add_argument("--margin", type=float, default=0.5, help="safety factor in (0, 1] (default 0.5)")
    cal.add_argument("--limit", type=int, default=0, help="use at most N frames (0 = all)")
    cal.add_argument("--out", type=Path, default=None, help="write here instead of updating --profile")
    cal.add_argument("--json", action="store_true", help="print the report as JSON")
    cal.set_defaults(func=run_calibrate)

    dev = sub.add_parser("devices", help="list GenICam cameras a GenTL producer (.cti) offers")
    dev.add_argument("--cti", default="", help="GenTL producer path (default: the simulated viky.cti)")
    dev.set_defaults(func=run_devices)


def _fail(message: str) -> int:
    print(f"linesight capture: {message}", file=sys.stderr)
    return 2


def run_init(args: argparse.Namespace) -> int:
    if args.out.exists() and not args.force:
        return _fail(f"{args.out} exists; pass --force to overwrite")
    try:
        profile = StationProfile(
            plant=args.plant,
            line=args.line,
            station=args.station,
            source=args.source,
            source_uri=args.source_uri,
        )
    except ProfileError as exc:
        return _fail(str(exc))
    if args.source == "genicam":
        profile.genicam.cti = args.source_uri or default_cti()
        profile.source_uri = ""
    profile.save(args.out)
    print(
        f"wrote {args.out} (version {profile.version}); calibrate it with "
        f"`linesight capture calibrate --profile {args.out} --frames GOOD_FRAMES`"
    )
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    try:
        profile = StationProfile.load(args.profile)
        items = load_replay_items(args.frames)
    except (ProfileError, SourceError) as exc:
        return _fail(str(exc))
    if any(i.label for i in items):
        items = [i for i in items if i.label == args.label]
        if not items:
            return _fail(f"{args.frames} has no rows labelled {args.label!r}")
    if args.limit > 0:
        items = items[: args.limit]
    th = profile.audit
    images = []
    skipped: list[str] = []
    for item in items:
        try:
            image, _header = decode(item.path.read_bytes(), max_pixels=th.max_pixels, min_side=th.min_side)
        except (OSError, FrameDecodeError) as exc:
            skipped.append(f"{item.path}: {exc}")
            continue
        images.append(image)
    try:
        report = qa.calibrate(images, th, margin=args.margin)
    except ValueError as exc:
        return _fail(f"{exc} ({len(skipped)} unreadable file(s) skipped)")
    old = profile.version
    profile.audit = report.thresholds
    profile.version = bump_version(old)
    out = args.out or args.profile
    profile.save(out)
    # how the known-good frames fare under the new thresholds (duplicates aside): should be ~0 flagged
    auditor = qa.FrameAuditor(report.thresholds)
    flagged = 0
    for i, image in enumerate(images):
        r = auditor.audit(
            image, pixel_format="Mono8" if image.ndim == 2 else "RGB8", sha256=f"{i:064x}", frame_id=str(i)
        )
        flagged += bool(set(r.reasons) - {qa.NEAR_DUPLICATE, qa.PIXEL_FORMAT})
    summary = {
        "profile": str(out),
        "version": {"old": old, "new": profile.version},
        "frames": report.frames,
        "skipped": len(skipped),
        "thresholds": {
            k: getattr(report.thresholds, k)
            for k in ("blur_min", "contrast_min", "clip_high_max", "clip_low_max", "near_duplicate_distance")
        },
        "good_frames_flagged": flagged,
        "stats": report.stats,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        t = {
            k: getattr(report.thresholds, k)
            for k in ("blur_min", "contrast_min", "clip_high_max", "clip_low_max", "near_duplicate_distance")
        }
        print(f"calibrated {out} from {report.frames} known-good frames ({len(skipped)} unreadable skipped)")
        print(f"  version {old} -> {profile.version}")
        for name, value in t.items():
            print(f"  {name:24s} {value}")
        print(f"  known-good frames flagged under the new thresholds: {flagged}")
    for line in skipped[:5]:
        print(f"  skipped {line}", file=sys.stderr)
    return 0


def run_devices(args: argparse.Namespace) -> int:
    from linesight.capture.app.sources import GenICamSource

    cti = args.cti or default_cti()
    if not Path(cti).exists():
        return _fail(f"GenTL producer {cti} does not exist")
    try:
        devices = GenICamSource.enumerate(cti)
    except Exception as exc:
        return _fail(f"cannot enumerate {cti}: {exc}")
    if not devices:
        print(f"no devices on {cti}")
        return 1
    for d in devices:
        print(f"{d['vendor']} {d['model']}  serial={d['serial']}  id={d['id']}")
    return 0
