"""Capture benchmark: frames/s from replay to published FrameCaptured (1 and 8 stations), audit ms/frame.

Starts its own NATS and SeaweedFS S3 in a temp dir, so figures include real S3 puts and JetStream
acks. Prints figures and ratios against a reference measured in the same run (decode only, one
station); never asserts on time.

    python -m tests.bench.bench_capture [--frames 240] [--size 256] [--dataset DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from linesight.capture.app import audit as qa
from linesight.capture.app.imaging import decode
from linesight.capture.app.profile import AuditThresholds, StationProfile
from linesight.capture.app.sources import RawFrame, load_replay_items
from linesight.capture.app.station import CaptureStation
from linesight.common.bus import Bus
from linesight.common.embedded import NatsServer, SeaweedS3, free_port
from linesight.common.storage import ObjectStore, S3Config
from tests.conftest import S3_ACCESS_KEY, S3_SECRET_KEY, seaweed_free_ports
from tests.unit.capture.helpers import textured, write_png


def make_frames(root: Path, n: int, size: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_png(root / f"f{i:04d}.png", textured(i, (size, size)))
    return root


def bench_audit(files: list[Path], rounds: int = 3) -> None:
    """ms per frame: decode alone (reference), audit measurements, and the whole CPU path."""
    blobs = [p.read_bytes() for p in files]
    th = AuditThresholds()
    images = [decode(b, max_pixels=th.max_pixels, min_side=th.min_side)[0] for b in blobs]

    def per_frame(fn: object) -> float:
        best = float("inf")
        for _ in range(rounds):
            t = time.perf_counter()
            for i in range(len(blobs)):
                fn(i)  # type: ignore[operator]
            best = min(best, (time.perf_counter() - t) / len(blobs) * 1000)
        return best

    decode_ms = per_frame(lambda i: decode(blobs[i], max_pixels=th.max_pixels, min_side=th.min_side))
    auditor = qa.FrameAuditor(th)
    audit_ms = per_frame(
        lambda i: auditor.audit(images[i], pixel_format="Mono8", sha256=f"{i:064x}", frame_id=str(i))
    )
    hash_ms = per_frame(lambda i: qa.sha256_hex(blobs[i]))
    station = CaptureStation(
        StationProfile(plant="b", line="l", station="cpu"),
        bus=None,
        store=None,  # type: ignore[arg-type]
        spool_dir=Path(tempfile.mkdtemp()) / "spool",
    )
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    full_ms = per_frame(
        lambda i: station._prepare(
            RawFrame(
                trigger_source="replay", triggered_at=now, acquired_at=now, data=blobs[i], part_id=str(i)
            ),
            "",
        )
    )
    h, w = images[0].shape[:2]
    print(
        f"audit cost per frame ({len(blobs)} frames {w}x{h} "
        f"{'gray' if images[0].ndim == 2 else 'RGB'}, best of {rounds}):"
    )
    print(f"  decode only (reference)      {decode_ms:7.3f} ms")
    print(
        f"  audit (blur, clip, contrast, dHash, dups) {audit_ms:7.3f} ms"
        f"  = {audit_ms / decode_ms:.2f}x decode"
    )
    print(f"  sha256 of the PNG            {hash_ms:7.3f} ms")
    print(
        f"  whole CPU path (decode+audit+hash+event) {full_ms:7.3f} ms  = {full_ms / decode_ms:.2f}x decode"
    )


async def run_stations(
    n_stations: int, frames_each: int, dataset: Path, bus: Bus, store: ObjectStore, spool_root: Path
) -> tuple[float, int]:
    stations = [
        CaptureStation(
            StationProfile(plant="bench", line="l1", station=f"s{n_stations}-{k}"),
            bus=bus,
            store=store,
            spool_dir=spool_root / f"s{n_stations}-{k}",
        )
        for k in range(n_stations)
    ]
    for s in stations:
        await s.start()
    t = time.perf_counter()
    reports = await asyncio.gather(
        *(
            s.run_replay(dataset, ppm=None, limit=frames_each, loop=True, drain_timeout_s=300)
            for s in stations
        )
    )
    elapsed = time.perf_counter() - t
    for s in stations:
        await s.stop()
    published = sum(r.published for r in reports)
    return elapsed, published


async def bench_pipeline(dataset: Path, frames: int, tmp: Path) -> None:
    nats = NatsServer(tmp / "nats", free_port(also_free=(4000,)))
    s3 = SeaweedS3(tmp / "s3", seaweed_free_ports(), S3_ACCESS_KEY, S3_SECRET_KEY)
    await asyncio.gather(asyncio.to_thread(nats.start), asyncio.to_thread(s3.start))
    try:
        bus = await Bus.connect(nats.url, "bench-capture")
        await bus.ensure_streams()
        store = ObjectStore(S3Config(s3.endpoint, S3_ACCESS_KEY, S3_SECRET_KEY))
        store.ensure_buckets()
        await run_stations(1, 10, dataset, bus, store, tmp / "warm")  # warm-up: connections, buckets
        e1, p1 = await run_stations(1, frames, dataset, bus, store, tmp / "one")
        e8, p8 = await run_stations(8, max(1, frames // 8) * 2, dataset, bus, store, tmp / "eight")
        fps1, fps8 = p1 / e1, p8 / e8
        print("replay -> S3 put -> FrameCaptured acknowledged (real NATS JetStream + SeaweedFS S3):")
        print(f"  1 station : {p1:5d} frames in {e1:6.2f} s = {fps1:7.1f} frames/s (reference)")
        print(
            f"  8 stations: {p8:5d} frames in {e8:6.2f} s = {fps8:7.1f} frames/s total, "
            f"{fps8 / 8:6.1f} per station = {fps8 / fps1:.2f}x the single station"
        )
        await bus.close()
    finally:
        await asyncio.gather(asyncio.to_thread(nats.stop), asyncio.to_thread(s3.stop))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_capture")
    parser.add_argument("--frames", type=int, default=240, help="frames for the single-station run")
    parser.add_argument("--size", type=int, default=256, help="side of the synthetic frames")
    parser.add_argument(
        "--dataset", type=Path, default=None, help="replay this dataset instead of synthetic frames"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-capture-") as d:
        tmp = Path(d)
        dataset = args.dataset or make_frames(tmp / "frames", 48, args.size)
        files = [i.path for i in load_replay_items(dataset)][:48]
        print(f"frames: {dataset} ({len(files)} used for the audit figures); cores: {_cores()}")
        bench_audit(files)
        asyncio.run(bench_pipeline(dataset, args.frames, tmp))
    return 0


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
