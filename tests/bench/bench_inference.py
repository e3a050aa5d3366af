"""Inference benchmark: in-process vs Triton (HTTP, gRPC, shared memory), 1 / 4 / 16 stations.

Frames go the real way: PNG in S3, FrameCaptured on NATS JetStream, the service consumes, scores,
qualifies, stores the heatmap and publishes InspectionResult. Figures per backend and station count:
- throughput: a burst of frames published at once, images/s until the last result;
- latency: stations paced at 120 parts/min each, p50/p99 of trigger -> result (InspectionResult.latency_ms);
- where the time of a paced frame goes: mean of InspectionResult.stage_ms per stage.
Prints ratios against in-process measured in the same run; never asserts on time.

    python -m tests.bench.bench_inference [--model-dir EXPORT_DIR] [--burst 96] [--paced-s 4]
        [--dataset DIR] [--stand-in] [--backends in_process,triton_grpc] [--stations 1,4,16]

Which model it scores with, in this order:
1. `--model-dir EXPORT_DIR`: an existing export (linesight.vision.export);
2. a real model it builds itself (InspectionModel fit on 150 good + 30 per class of
   ../shared/datasets/magnetic_tile, or `--dataset`), cached under .bench/ for the next run;
3. without that dataset, the same recipe on a synthetic dataset (linesight.vision.synth);
4. `--stand-in`: the test stand-in model (brightness scoring, no network), which measures only
   the service's plumbing (bus, S3, batching, decision, Triton transport).
It prints which one it used. Frames are held-out images of the dataset the model was fitted on.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import psutil

from linesight.common.bus import Bus
from linesight.common.embedded.nats import NatsServer
from linesight.common.embedded.process import free_port
from linesight.common.embedded.seaweed import SeaweedPorts, SeaweedS3
from linesight.common.embedded.triton import TritonServer
from linesight.common.pb import common_pb2
from linesight.common.storage import ObjectStore
from linesight.inference.api.bus import InspectionWorker
from linesight.inference.app import BackendKind, InferenceApp, InferenceConfig
from linesight.inference.app.config import _parse
from tests.integration.inference import helpers as h
from tests.unit.inference.standin import LOADER, make_export

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATASET = ROOT.parent / "shared" / "datasets" / "magnetic_tile"
CACHE = ROOT / ".bench" / "inference-model"
EXPORTED_LOADER = "linesight.vision.export:ExportedModel"
STATIONS = (1, 4, 16)
PARTS_PER_MIN = 120
N_GOOD, PER_CLASS, N_FRAMES = 150, 30, 16
STAGES = ("fetch", "preprocess", "queue", "model", "decision", "heatmap")


def thread_cpu() -> dict[str, float]:
    """CPU seconds of this process by thread group (native threads, e.g. onnxruntime's, are 'other')."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for t in psutil.Process().threads():
        name = names.get(t.id, "other")
        group = (
            "event loop"
            if name == "MainThread"
            else "model"
            if name.startswith("linesight-model")
            else "frame cpu"
            if name.startswith("linesight-cpu")
            else "io pool"
            if name.startswith("asyncio")
            else "other"
        )
        out[group] = out.get(group, 0.0) + t.user_time + t.system_time
    return out


def model_alone(
    model_dir: Path, loader: str, pngs: list[bytes], threads: int, seconds: float = 3.0
) -> dict[str, float]:
    """The predictor without the service: images/s at batch 16 and ms for one image (reference)."""
    from linesight.inference.app import preprocess
    from linesight.inference.app.bundle import load_bundle, load_predictor

    bundle = load_bundle(model_dir)
    predictor = load_predictor(loader, model_dir, threads=threads)
    tensors = [
        preprocess.to_model_input(preprocess.decode(p, source="bench"), bundle.input_size) for p in pngs
    ]
    batch = (tensors * 16)[:16]
    predictor.predict(batch)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        predictor.predict(batch)
        n += len(batch)
    ips = n / (time.perf_counter() - t0)
    single = []
    for t in tensors[:8]:
        t1 = time.perf_counter()
        predictor.predict([t])
        single.append((time.perf_counter() - t1) * 1000)
    return {"ips": ips, "ms1": statistics.median(single)}


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


# --- the model -------------------------------------------------------------------------------------
def _split(dataset: Path, seed: int = 0) -> tuple[list[Any], list[Path]]:
    """The training subset (N_GOOD good + PER_CLASS per class) and N_FRAMES held-out frames:
    mostly good parts and one defect per class, none of them seen by the model."""
    from linesight.vision.dataset import load_manifest
    from linesight.vision.splits import cap_training

    samples = load_manifest(dataset, unknown_columns="ignore")
    train = cap_training(samples, max_good=N_GOOD, max_per_class=PER_CLASS, seed=seed)
    used = {s.image for s in train}
    rest = sorted((s for s in samples if s.image not in used), key=lambda s: str(s.image))
    good = [s for s in rest if s.label == "good"]
    by_class: dict[str, Any] = {}
    for s in rest:
        if s.label != "good":
            by_class.setdefault(s.label, s)
    bad = list(by_class.values())[:4]
    good = good[:: max(1, len(good) // (N_FRAMES - len(bad)))][: N_FRAMES - len(bad)]
    return train, [s.image for s in good + bad]


def _fit_and_export(dataset: Path, out: Path, *, seed: int = 0) -> dict[str, Any]:
    """Fit InspectionModel on the training subset of `dataset` and export it into `out`."""
    from linesight.vision.export import export_model
    from linesight.vision.imageio import read_image
    from linesight.vision.model import InspectionModel

    train, _ = _split(dataset, seed)
    t0 = time.perf_counter()
    model = InspectionModel.create(seed=seed)
    model.fit(
        [read_image(s.image) for s in train], [s.label for s in train], groups=[s.part_id for s in train]
    )
    fit_s = time.perf_counter() - t0
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    export_model(model, staging)
    info = {
        "dataset": str(dataset),
        "train_images": len(train),
        "fit_s": fit_s,
        "model_version": model.version,
        "input_size": list(model.config.input_size),
    }
    (staging / "bench.json").write_text(json.dumps(info, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return info


def real_model(dataset: Path | None, *, rebuild: bool = False) -> tuple[Path, dict[str, Any], str]:
    """A real export: fitted on `dataset` when it exists, else on a synthetic dataset; cached."""
    if dataset is not None and (dataset / "manifest.csv").is_file():
        key = hashlib.sha256(f"{dataset.resolve()}|{N_GOOD}|{PER_CLASS}".encode()).hexdigest()[:12]
        source = f"real model fitted on {dataset.name} ({N_GOOD} good + {PER_CLASS}/class)"
        data_dir = dataset
    else:
        key = f"synth-{N_GOOD}-{PER_CLASS}"
        source = (
            f"real model fitted on a SYNTHETIC dataset ({N_GOOD} good + {PER_CLASS}/class; "
            f"{dataset or DEFAULT_DATASET} not found)"
        )
        data_dir = CACHE / "synth-dataset"
        if rebuild or not (data_dir / "manifest.csv").exists():
            from linesight.vision.synth import generate_dataset

            print(f"generating a synthetic dataset in {data_dir} ...", flush=True)
            generate_dataset(data_dir, n_good=N_GOOD + 40, per_class=PER_CLASS + 6, seed=0, reuse=True)
    out = CACHE / key
    if rebuild or not (out / "bench.json").exists():
        print(f"fitting the benchmark model on {data_dir} into {out} (a minute or two) ...", flush=True)
        info = _fit_and_export(data_dir, out)
        print(f"fitted in {info['fit_s']:.0f} s: {info['model_version']}", flush=True)
    info = json.loads((out / "bench.json").read_text())
    return out, info, f"{source}, cached in {out}"


def frame_pngs(info: dict[str, Any] | None, size: int) -> list[bytes]:
    """Frames as the capture service stores them (lossless PNG)."""
    if info is None:
        return [h.png(20 + 7 * i, size=size) for i in range(N_FRAMES)]
    from linesight.vision.imageio import read_image

    _, frames = _split(Path(info["dataset"]))
    out = []
    for path in frames:
        img = read_image(path)
        if img.ndim == 3:
            img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(img))
        assert ok
        out.append(bytes(buf))
    return out


# --- one case --------------------------------------------------------------------------------------
async def run_case(
    kind: BackendKind, stations: int, env: dict[str, Any], args: argparse.Namespace
) -> dict[str, float]:
    tmp: Path = env["tmp"] / f"{kind.value}-{stations}"
    settings = h.settings_for(env["nats_url"], env["s3"], tmp)
    store: ObjectStore = env["store"]
    bus: Bus = env["bus"]
    cfg = InferenceConfig(
        backend=kind,
        model_loader=env["loader"],
        work_dir=tmp / "work",
        station_group=settings.plant,
    )
    cfg = replace(cfg, **env["overrides"])
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
    refs: list[common_pb2.ObjectRef] = env["refs"]
    try:
        async with h.collect(env["nats_url"], settings) as results:
            # warm-up (first batches load lazily, fill caches)
            warm = [h.frame_for(settings, f"s{i % stations}", refs[i % len(refs)]) for i in range(16)]
            await asyncio.gather(*(h.publish_frame(bus, f) for f in warm))
            await results.wait(len(warm), timeout_s=300)
            # throughput: burst
            results.by_frame.clear()
            frames = [
                h.frame_for(settings, f"s{i % stations}", refs[i % len(refs)]) for i in range(args.burst)
            ]
            batches0 = app.batcher.batches
            cpu0 = thread_cpu()
            t0 = time.perf_counter()
            await asyncio.gather(*(h.publish_frame(bus, f) for f in frames))
            await results.wait(args.burst, timeout_s=600)
            throughput = args.burst / (time.perf_counter() - t0)
            burst_batches = app.batcher.batches - batches0
            cpu1 = thread_cpu()
            cpu_ms = {k: (cpu1.get(k, 0.0) - cpu0.get(k, 0.0)) * 1000 / args.burst for k in cpu1}
            burst = [r[0] for r in results.by_frame.values()]
            burst_stages = {st: statistics.fmean([r.stage_ms.get(st, 0.0) for r in burst]) for st in STAGES}
            # latency at line rate: every station triggers every 0.5 s, stations evenly staggered
            await asyncio.sleep(0.5)
            results.by_frame.clear()
            interval = 60.0 / PARTS_PER_MIN
            sent = 0
            start = time.perf_counter()
            n_ticks = max(1, round(args.paced_s / interval))
            stagger = 0.0 if args.synchronized else interval / stations
            for tick in range(n_ticks):
                for s in range(stations):
                    due = start + tick * interval + s * stagger
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))
                    frame = h.frame_for(settings, f"s{s}", refs[(sent + s) % len(refs)])
                    await h.publish_frame(bus, frame)
                    sent += 1
            await results.wait(sent, timeout_s=600)
            paced = [r[0] for r in results.by_frame.values()]
            lat = [r.latency_ms for r in paced]
            errors = sum(1 for r in paced if r.error)
            stage_means = {
                st: statistics.fmean([r.stage_ms.get(st, 0.0) for r in paced]) if paced else 0.0
                for st in STAGES
            }
    finally:
        await worker.stop()
        await app.stop()
    return {
        "ips": throughput,
        "p50": pct(lat, 0.5),
        "p99": pct(lat, 0.99),
        "n": float(len(lat)),
        "errors": float(errors),
        "batch": args.burst / max(1, burst_batches),
        **{f"stage_{k}": v for k, v in stage_means.items()},
        **{f"burst_{k}": v for k, v in burst_stages.items()},
        **{f"cpu_{k}": v for k, v in cpu_ms.items()},
    }


async def main_async(args: argparse.Namespace) -> int:
    if args.model_dir:
        model_dir, loader, info = Path(args.model_dir), EXPORTED_LOADER, None
        meta = model_dir / "bench.json"
        if meta.exists():
            info = json.loads(meta.read_text())
        kind_of_model = f"exported model {model_dir}"
    elif args.stand_in:
        model_dir, loader, info = Path(), LOADER, None
        kind_of_model = "stand-in model (no network: measures the service's plumbing only)"
    else:
        dataset = Path(args.dataset) if args.dataset else DEFAULT_DATASET
        model_dir, info, kind_of_model = real_model(dataset, rebuild=args.rebuild)
        loader = EXPORTED_LOADER
    if args.build_only:
        print(kind_of_model)
        return 0
    backends = [BackendKind(b) for b in args.backends.split(",") if b]
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = _parse(key, value)
    station_counts = [int(s) for s in args.stations.split(",") if s]
    tmp = Path(tempfile.mkdtemp(prefix="bench-inference-"))
    if args.stand_in:
        model_dir = make_export(tmp / "standin", "bench-v1", size=224)
    nats_server = NatsServer(tmp / "nats", free_port(also_free=(4000,)))
    ports: list[int] = []
    while len(ports) < 5:
        p = free_port(also_free=(10000,))
        if p not in ports and p + 10000 < 65536:
            ports.append(p)
    s3_server = SeaweedS3(tmp / "s3", SeaweedPorts(*ports), "bench", "bench-secret")
    servers: list[Any] = [nats_server, s3_server]
    triton = None
    if any(b != BackendKind.IN_PROCESS for b in backends):
        triton = TritonServer(
            tmp / "triton", http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()
        )
        servers.append(triton)
    try:
        for s in servers:
            s.start()
        s3 = type(
            "S3", (), {"endpoint": s3_server.endpoint, "access_key": "bench", "secret_key": "bench-secret"}
        )
        store = h.store_for(s3)
        bus = await Bus.connect(nats_server.url, "bench")
        await bus.ensure_streams()
        refs = [await h.put_frame(store, data) for data in frame_pngs(info, args.image_size)]
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
            "overrides": overrides,
        }
        frames_desc = f"{len(refs)} held-out dataset frames" if info else f"{args.image_size}px frames"
        print(
            f"inference benchmark: {kind_of_model}\n  {frames_desc}; burst {args.burst}; "
            f"paced {args.paced_s:g}s at {PARTS_PER_MIN} parts/min/station "
            f"({'synchronized' if args.synchronized else 'staggered'} triggers); InferenceConfig defaults"
            + (f" with {', '.join(args.set)}" if args.set else "")
        )
        header = (
            f"{'backend':<12} {'stations':>8} {'images/s':>9} {'x in-proc':>9} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'frames':>7} {'errors':>6} {'batch':>6}  mean ms per stage (paced): " + " ".join(STAGES)
        )
        rounds: list[dict[tuple[str, int], dict[str, float]]] = []
        for n in range(args.repeat):
            alone = await asyncio.to_thread(
                model_alone,
                model_dir,
                loader,
                frame_pngs(info, args.image_size),
                replace(InferenceConfig(), **overrides).threads,
            )
            print(
                f"round {n + 1}/{args.repeat} (load avg {os.getloadavg()[0]:.1f}); the model alone in this "
                f"process: {alone['ips']:.1f} images/s at batch 16, {alone['ms1']:.1f} ms for one image",
                flush=True,
            )
            print(header, flush=True)
            table: dict[tuple[str, int], dict[str, float]] = {}
            for stations in station_counts:
                for kind in backends:
                    row = await run_case(kind, stations, env, args)
                    row["alone_ips"] = alone["ips"]
                    table[(kind.value, stations)] = row
                    ref = table.get((BackendKind.IN_PROCESS.value, stations), {}).get("ips", float("nan"))
                    stages = " ".join(f"{row['stage_' + st]:.1f}" for st in STAGES)
                    print(
                        f"{kind.value:<12} {stations:>8} {row['ips']:>9.1f} {row['ips'] / ref:>9.2f} "
                        f"{row['p50']:>8.1f} {row['p99']:>8.1f} {int(row['n']):>7} {int(row['errors']):>6} "
                        f"{row['batch']:>6.1f}  {stages}",
                        flush=True,
                    )
            rounds.append(table)
        table = rounds[-1]
        print("\nmean ms per stage of the burst frames (throughput run, last round):")
        print(f"{'backend':<12} {'stations':>8}  " + " ".join(f"{st:>10}" for st in STAGES))
        for (backend, stations), row in table.items():
            print(
                f"{backend:<12} {stations:>8}  " + " ".join(f"{row['burst_' + st]:>10.1f}" for st in STAGES)
            )
        print("\nCPU ms per image of this process during the burst, by thread (in_process: incl. the model):")
        for (backend, stations), row in table.items():
            parts = {k[4:]: v for k, v in row.items() if k.startswith("cpu_")}
            total = sum(parts.values())
            detail = ", ".join(f"{k} {v:.1f}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1]))
            print(f"{backend:<12} {stations:>8}  total {total:.1f}: {detail}")
        if len(rounds) > 1:
            print(f"\nover {len(rounds)} rounds: best / median (a shared machine: best = least disturbed)")
            print(
                f"{'backend':<12} {'stations':>8} {'images/s':>15} {'x in-proc':>11} {'x alone':>9} "
                f"{'p50 ms':>15} {'p99 ms':>15}"
            )
            for key in table:
                rows = [r[key] for r in rounds]
                ips = [r["ips"] for r in rows]
                ref = [
                    r[(BackendKind.IN_PROCESS.value, key[1])]["ips"]
                    for r in rounds
                    if (BackendKind.IN_PROCESS.value, key[1]) in r
                ]
                ratio = (
                    statistics.median([a / b for a, b in zip(ips, ref, strict=False)])
                    if ref
                    else float("nan")
                )
                vs_alone = statistics.median([r["ips"] / r["alone_ips"] for r in rows])
                p50 = [r["p50"] for r in rows]
                p99 = [r["p99"] for r in rows]
                print(
                    f"{key[0]:<12} {key[1]:>8} {max(ips):>7.1f} /{statistics.median(ips):>6.1f} "
                    f"{ratio:>11.2f} {vs_alone:>9.2f} {min(p50):>7.1f} /{statistics.median(p50):>6.1f} "
                    f"{min(p99):>7.1f} /{statistics.median(p99):>6.1f}"
                )
        print(
            "targets (issue 4, 2 cores): in_process >= 50 images/s; Triton within 20 % of in_process; "
            f"p99 < 100 ms at {PARTS_PER_MIN} ppm x 4 stations"
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
    parser.add_argument("--dataset", default="", help=f"dataset to fit on (default {DEFAULT_DATASET})")
    parser.add_argument("--stand-in", action="store_true", help="score with the test stand-in model")
    parser.add_argument("--rebuild", action="store_true", help="fit the benchmark model again")
    parser.add_argument("--build-only", action="store_true", help="only build (or find) the model")
    parser.add_argument("--backends", default=",".join(k.value for k in BackendKind))
    parser.add_argument("--stations", default=",".join(str(s) for s in STATIONS))
    parser.add_argument("--burst", type=int, default=96)
    parser.add_argument("--repeat", type=int, default=1, help="rounds; with more than one, best and median")
    parser.add_argument(
        "--synchronized",
        action="store_true",
        help="paced stations trigger at the same instant (default: evenly staggered)",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="an InferenceConfig field"
    )
    parser.add_argument("--paced-s", type=float, default=4.0)
    parser.add_argument("--image-size", type=int, default=256, help="stand-in frames only")
    args, _ = parser.parse_known_args()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
