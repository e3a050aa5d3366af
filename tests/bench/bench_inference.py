"""Inference benchmark: in-process vs Triton (HTTP, gRPC, shared memory), 1 / 4 / 16 stations.

Frames go the real way: PNG in S3, FrameCaptured on NATS JetStream, the service consumes, scores,
qualifies, stores the heatmap and publishes InspectionResult. Figures per backend and station count:
- throughput: a burst of frames published at once, images/s until the last result;
- latency: stations paced at 120 parts/min each, p50/p99 of trigger -> result (InspectionResult.latency_ms).
Prints ratios against in-process measured in the same run; never asserts on time.

    python -m tests.bench.bench_inference [--model-dir EXPORT_DIR] [--burst 96] [--paced-s 4]

Without --model-dir it uses the test stand-in model (brightness scoring, no network): the figures
then measure the service's plumbing (bus, S3, batching, decision, Triton transport), not the network.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from linesight.common.bus import Bus
from linesight.common.embedded.nats import NatsServer
from linesight.common.embedded.process import free_port
from linesight.common.embedded.seaweed import SeaweedPorts, SeaweedS3
from linesight.common.embedded.triton import TritonServer
from linesight.inference.api.bus import InspectionWorker
from linesight.inference.app import BackendKind, InferenceApp, InferenceConfig
from tests.integration.inference import helpers as h
from tests.unit.inference.standin import LOADER, make_export

STATIONS = (1, 4, 16)
PARTS_PER_MIN = 120


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


async def run_case(
    kind: BackendKind, stations: int, env: dict[str, Any], args: argparse.Namespace
) -> dict[str, float]:
    tmp: Path = env["tmp"] / f"{kind.value}-{stations}"
    settings = h.settings_for(env["nats_url"], env["s3"], tmp)
    store = env["store"]
    bus: Bus = env["bus"]
    cfg = InferenceConfig(
        backend=kind,
        model_loader=env["loader"],
        work_dir=tmp / "work",
        station_group=settings.plant,
        consumers=max(16, stations * 2),
        max_batch=16,
        max_wait_ms=4.0,
    )
    if kind != BackendKind.IN_PROCESS:
        triton: TritonServer = env["triton"]
        cfg = replace(
            cfg,
            triton_url=triton.grpc_url,
            triton_http_url=triton.http_url,
            triton_model_repository=triton.model_repository,
        )
    app = InferenceApp(settings, store, bus, cfg)
    await app.start()
    worker = InspectionWorker(app, bus)
    await worker.start()
    await app.install_directory(env["model_dir"])
    refs = env["refs"]
    try:
        async with h.collect(env["nats_url"], settings) as results:
            # warm-up
            for i in range(4):
                await h.publish_frame(bus, h.frame_for(settings, "s0", refs[i % len(refs)]))
            await results.wait(4, timeout_s=120)
            # throughput: burst
            results.by_frame.clear()
            frames = [
                h.frame_for(settings, f"s{i % stations}", refs[i % len(refs)]) for i in range(args.burst)
            ]
            t0 = time.perf_counter()
            await asyncio.gather(*(h.publish_frame(bus, f) for f in frames))
            await results.wait(args.burst, timeout_s=300)
            throughput = args.burst / (time.perf_counter() - t0)
            # latency at line rate
            results.by_frame.clear()
            interval = 60.0 / PARTS_PER_MIN
            sent = 0
            t_end = time.perf_counter() + args.paced_s
            while time.perf_counter() < t_end:
                tick = time.perf_counter()
                for s in range(stations):
                    await h.publish_frame(bus, h.frame_for(settings, f"s{s}", refs[(sent + s) % len(refs)]))
                sent += stations
                await asyncio.sleep(max(0.0, interval - (time.perf_counter() - tick)))
            await results.wait(sent, timeout_s=300)
            lat = [r[0].latency_ms for r in results.by_frame.values()]
            errors = sum(1 for r in results.by_frame.values() if r[0].error)
    finally:
        await worker.stop()
        await app.stop()
    return {
        "ips": throughput,
        "p50": pct(lat, 0.5),
        "p99": pct(lat, 0.99),
        "n": float(len(lat)),
        "errors": float(errors),
        "batches": float(app.batcher.batches),
    }


async def main_async(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="bench-inference-"))
    nats_server = NatsServer(tmp / "nats", free_port(also_free=(4000,)))
    ports = []
    while len(ports) < 5:
        p = free_port(also_free=(10000,))
        if p not in ports and p + 10000 < 65536:
            ports.append(p)
    s3_server = SeaweedS3(tmp / "s3", SeaweedPorts(*ports), "bench", "bench-secret")
    triton = TritonServer(
        tmp / "triton", http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()
    )
    servers = [nats_server, s3_server, triton]
    try:
        for s in servers:
            s.start()
        s3 = type(
            "S3", (), {"endpoint": s3_server.endpoint, "access_key": "bench", "secret_key": "bench-secret"}
        )
        store = h.store_for(s3)
        bus = await Bus.connect(nats_server.url, "bench")
        await bus.ensure_streams()
        if args.model_dir:
            model_dir, loader = Path(args.model_dir), "linesight.vision.export:ExportedModel"
            kind_of_model = f"exported model {model_dir}"
        else:
            model_dir, loader = make_export(tmp / "standin", "bench-v1", size=224), LOADER
            kind_of_model = "stand-in model (no network)"
        refs = [await h.put_frame(store, h.png(20 + 7 * i, size=args.image_size)) for i in range(16)]
        env = {
            "tmp": tmp,
            "nats_url": nats_server.url,
            "s3": s3,
            "store": store,
            "bus": bus,
            "triton": triton,
            "model_dir": model_dir,
            "loader": loader,
            "refs": refs,
        }
        print(
            f"inference benchmark: {kind_of_model}; {args.image_size}px frames; burst {args.burst}; "
            f"paced {args.paced_s:g}s at {PARTS_PER_MIN} parts/min/station"
        )
        print(
            f"{'backend':<12} {'stations':>8} {'images/s':>9} {'x in-proc':>9} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'frames':>7} {'errors':>6}"
        )
        table: dict[tuple[str, int], dict[str, float]] = {}
        for stations in STATIONS:
            for kind in (
                BackendKind.IN_PROCESS,
                BackendKind.TRITON_GRPC,
                BackendKind.TRITON_HTTP,
                BackendKind.TRITON_SHM,
            ):
                row = await run_case(kind, stations, env, args)
                table[(kind.value, stations)] = row
                ref = table[(BackendKind.IN_PROCESS.value, stations)]["ips"]
                print(
                    f"{kind.value:<12} {stations:>8} {row['ips']:>9.1f} {row['ips'] / ref:>9.2f} "
                    f"{row['p50']:>8.1f} {row['p99']:>8.1f} {int(row['n']):>7} {int(row['errors']):>6}",
                    flush=True,
                )
        await bus.close()
    finally:
        for s in reversed(servers):
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", default="", help="an export directory (linesight.vision.export)")
    parser.add_argument("--burst", type=int, default=96)
    parser.add_argument("--paced-s", type=float, default=4.0)
    parser.add_argument("--image-size", type=int, default=256)
    args, _ = parser.parse_known_args()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
