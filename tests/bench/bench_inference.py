"""Inference benchmark: in-process vs Triton (HTTP, gRPC, shared memory), 1 / 4 / 16 stations.

Frames go the real way: PNG in S3, FrameCaptured on NATS JetStream, the service consumes, scores,
qualifies, stores the heatmap and publishes InspectionResult. Every figure is taken where a
consumer of the results would take it: from the start of each FrameCaptured publish to the moment
its InspectionResult is received on NATS; every frame sent must come back exactly once (lost,
duplicated and error results are counted and printed). Figures per config, backend and stations:
- throughput: a burst of frames published at once, images/s until the last result is received;
- latency: stations paced at 120 parts/min each, p50/p99 of publish -> result received;
- where the time of a paced frame goes: mean of InspectionResult.stage_ms per stage;
- CPU ms per image during the burst: this process by thread, and the servers (NATS, S3, Triton),
  which share the same cores.
Frames are distinct held-out images (a quarter of them defects) and the heatmap bucket is emptied
before each phase, so every heatmap is a first write, as on a line where no two frames are equal.
Prints ratios against the reference (first config, in-process) measured in the same run; never
asserts on time.

    python -m tests.bench.bench_inference [--model-dir EXPORT_DIR] [--burst 96] [--paced-s 4]
        [--dataset DIR] [--stand-in] [--backends in_process,triton_grpc] [--stations 1,4,16]
        [--repeat 2] [--set FIELD=VALUE ...] [--config NAME:FIELD=VALUE,FIELD=VALUE ...]

`--config` runs several InferenceConfig variants side by side, case after case, e.g.
`--config before:threads=2,heatmap_png_level=3 --config after:` (the first is the reference).

Which model it scores with, in this order:
1. `--model-dir EXPORT_DIR`: an existing export (linesight.vision.export);
2. a real model it builds itself (InspectionModel fit on 150 good + 30 per class of
   ../shared/datasets/magnetic_tile, or `--dataset`), cached under .bench/ for the next run;
3. without that dataset, the same recipe on a synthetic dataset (linesight.vision.data.synth);
4. `--stand-in`: the test stand-in model (brightness scoring, no network), which measures only
   the service's plumbing (bus, S3, batching, decision, Triton transport).
It prints which one it used. Frames are held-out images of the dataset the model was fitted on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import nats
import numpy as np
import psutil
from minio.deleteobjects import DeleteObject

from linesight.common import subjects
from linesight.common.bus import Bus
from linesight.common.embedded.nats import NatsServer
from linesight.common.embedded.process import free_port
from linesight.common.embedded.seaweed import SeaweedPorts, SeaweedS3
from linesight.common.embedded.triton import TritonServer
from linesight.common.pb import common_pb2, events_pb2
from linesight.common.storage import BUCKET_HEATMAPS, ObjectStore
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
N_GOOD, PER_CLASS = 150, 30
N_FRAMES = 128  # distinct frames: a burst (96) or a paced phase (16 stations x 8) never repeats one
DEFECT_EVERY = 4  # every 4th frame is a defect (one per class in turn)
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


def server_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds of each server process this benchmark started (they share the cores with the
    service), by pid: Triton's model stubs come and go with the models."""
    out: dict[int, tuple[str, float]] = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            name = proc.name()
            times = proc.cpu_times()
        except psutil.Error:
            continue
        group = (
            "nats" if "nats" in name else "s3" if "weed" in name else "triton" if "triton" in name else name
        )
        out[proc.pid] = (group, times.user + times.system)
    return out


def server_cpu_delta(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds per server group between two snapshots (a process that exited in between is lost)."""
    out: dict[str, float] = {}
    for pid, (group, cpu) in after.items():
        start = before.get(pid, (group, 0.0))[1]
        out[group] = out.get(group, 0.0) + cpu - start
    return out


def machine_busy_s() -> float:
    """CPU seconds all cores of the machine spent busy so far (any process, any user)."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))


def model_busy_s(app: InferenceApp) -> float:
    """Seconds the micro-batcher spent in model calls (NaN for a service without the counter)."""
    return float(getattr(app.batcher, "busy_s", float("nan")))


def model_alone(
    model_dir: Path, loader: str, pngs: list[bytes], cfg: InferenceConfig, seconds: float = 3.0
) -> dict[str, float]:
    """The predictor without the service, with its thread settings: images/s at batch 16 and ms
    for one image (reference). Run it in a fresh process (`model_alone_apart`): loading the model
    here would load its libraries (scipy's BLAS) before the service under test starts, which is
    not the order they come in on a plant."""
    from threadpoolctl import threadpool_limits

    from linesight.inference.app import preprocess
    from linesight.inference.app.bundle import load_bundle, load_predictor

    if cfg.opencv_threads > 0:
        cv2.setNumThreads(cfg.opencv_threads)
    bundle = load_bundle(model_dir)
    predictor = load_predictor(loader, model_dir, threads=cfg.threads)
    if cfg.blas_threads > 0:  # after the load: the model brings scipy's BLAS along
        threadpool_limits(limits=cfg.blas_threads, user_api="blas")
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


async def model_alone_apart(
    model_dir: Path, loader: str, pngs: list[bytes], cfg: InferenceConfig
) -> dict[str, float]:
    """`model_alone` in a freshly spawned interpreter."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return await asyncio.get_running_loop().run_in_executor(
            pool, model_alone, model_dir, loader, pngs, cfg
        )


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


# --- the model -------------------------------------------------------------------------------------
def _split(dataset: Path, seed: int = 0) -> tuple[list[Any], list[Path]]:
    """The training subset (N_GOOD good + PER_CLASS per class) and N_FRAMES held-out frames, none
    of them seen by the model: every DEFECT_EVERY-th one a defect (the classes in turn), the rest
    good parts, so any run of consecutive frames has the same mix."""
    from linesight.vision.data.manifest import load_manifest
    from linesight.vision.data.splits import cap_training

    samples = load_manifest(dataset, unknown_columns="ignore")
    train = cap_training(samples, max_good=N_GOOD, max_per_class=PER_CLASS, seed=seed)
    used = {s.image for s in train}
    rest = sorted((s for s in samples if s.image not in used), key=lambda s: str(s.image))
    good = [s for s in rest if s.label == "good"]
    by_class: dict[str, list[Any]] = {}
    for s in rest:
        if s.label != "good":
            by_class.setdefault(s.label, []).append(s)
    bad: list[Any] = []
    queues = [list(v) for _, v in sorted(by_class.items())]
    while len(bad) < N_FRAMES // DEFECT_EVERY and any(queues):
        for q in queues:
            if q and len(bad) < N_FRAMES // DEFECT_EVERY:
                bad.append(q.pop(0))
    good = good[:: max(1, len(good) // (N_FRAMES - len(bad)))][: N_FRAMES - len(bad)]
    frames: list[Any] = []
    while good or bad:
        take_bad = bad and (len(frames) % DEFECT_EVERY == DEFECT_EVERY - 1 or not good)
        frames.append(bad.pop(0) if take_bad else good.pop(0))
    return train, [s.image for s in frames]


def _fit_and_export(dataset: Path, out: Path, *, seed: int = 0) -> dict[str, Any]:
    """Fit InspectionModel on the training subset of `dataset` and export it into `out`."""
    from linesight.vision.data.imageio import read_image
    from linesight.vision.export.writer import export_model
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
            from linesight.vision.data.synth import generate_dataset

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
        return [h.png(20 + (7 * i) % 200, size=size) for i in range(N_FRAMES)]
    from linesight.vision.data.imageio import read_image

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


# --- measuring -------------------------------------------------------------------------------------
@dataclass
class Arrivals:
    """The InspectionResults of one plant, timed when they are received, checked against what was sent.

    A result for a frame not sent in this phase is a stray, a second one for a frame a duplicate;
    frames without a result when the wait ends are lost. Shadow results are not subscribed to.
    """

    sent: dict[str, float] = field(default_factory=dict)  # frame id -> publish started (perf_counter)
    got: dict[str, tuple[float, events_pb2.InspectionResult]] = field(default_factory=dict)
    duplicates: int = 0
    strays: int = 0
    complete: asyncio.Event = field(default_factory=asyncio.Event)

    def reset(self) -> None:
        self.sent.clear()
        self.got.clear()
        self.duplicates = self.strays = 0
        self.complete.clear()

    def expect(self, frame_id: str) -> None:
        self.sent[frame_id] = time.perf_counter()
        self.complete.clear()

    async def on_result(self, msg: Any) -> None:
        now = time.perf_counter()
        result = events_pb2.InspectionResult.FromString(msg.data)
        if result.frame_id not in self.sent:
            self.strays += 1
        elif result.frame_id in self.got:
            self.duplicates += 1
        else:
            self.got[result.frame_id] = (now, result)
            if len(self.got) == len(self.sent):
                self.complete.set()

    async def wait(self, timeout_s: float) -> int:
        """Until every frame sent has its result (or the timeout); returns how many are lost."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.complete.wait(), timeout_s)
        return len(self.sent) - len(self.got)

    def latencies_ms(self) -> list[float]:
        return [(t - self.sent[fid]) * 1000.0 for fid, (t, _) in self.got.items()]

    def results(self) -> list[events_pb2.InspectionResult]:
        return [r for _, r in self.got.values()]


async def send(bus: Bus, arrivals: Arrivals, frame: events_pb2.FrameCaptured) -> None:
    arrivals.expect(frame.frame_id)
    await h.publish_frame(bus, frame)


def clear_heatmaps(store: ObjectStore) -> None:
    """Empty the heatmap bucket, so each heatmap of the next phase is a first write (HEAD + PUT)."""
    keys = [DeleteObject(k) for k in store.list_keys(BUCKET_HEATMAPS)]
    for start in range(0, len(keys), 1000):
        for err in store.client.remove_objects(BUCKET_HEATMAPS, keys[start : start + 1000]):
            print(f"  could not delete heatmap {err.name}: {err.message}", file=sys.stderr)


def parse_overrides(items: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for item in items:
        key, _, value = item.partition("=")
        if key:
            out[key.strip()] = _parse(key.strip(), value.strip())
    return out


# --- one case --------------------------------------------------------------------------------------
async def run_case(
    kind: BackendKind,
    stations: int,
    overrides: dict[str, object],
    env: dict[str, Any],
    args: argparse.Namespace,
) -> dict[str, float]:
    env["cases"] += 1
    tmp: Path = env["tmp"] / f"case-{env['cases']}-{kind.value}-{stations}"
    settings = h.settings_for(env["nats_url"], env["s3"], tmp)
    store: ObjectStore = env["store"]
    bus: Bus = env["bus"]
    cfg = InferenceConfig(
        backend=kind,
        model_loader=env["loader"],
        work_dir=tmp / "work",
        station_group=settings.plant,
    )
    cfg = replace(cfg, **overrides)
    if kind != BackendKind.IN_PROCESS:
        triton: TritonServer = env["triton"]
        cfg = replace(
            cfg,
            triton_url=triton.grpc_url,
            triton_http_url=triton.http_url,
            triton_model_repository=triton.model_repository,
        )
    cfg.validate()
    app = InferenceApp(settings, store, bus, cfg)
    await app.start()
    worker = InspectionWorker(app, bus)
    await worker.start()
    await app.install_directory(env["model_dir"])
    refs: list[common_pb2.ObjectRef] = env["refs"]
    arrivals = Arrivals()
    nc = await nats.connect(env["nats_url"])
    await nc.subscribe(
        subjects.station_pattern(subjects.INSPECTION_RESULT, plant=settings.plant), cb=arrivals.on_result
    )
    lost = duplicates = strays = 0
    try:
        # warm-up (first batches load lazily, fill caches)
        warm = [h.frame_for(settings, f"s{i % stations}", refs[i % len(refs)]) for i in range(16)]
        await asyncio.gather(*(send(bus, arrivals, f) for f in warm))
        if await arrivals.wait(300):
            raise RuntimeError(
                f"warm-up: {len(arrivals.sent) - len(arrivals.got)} of 16 frames got no result"
            )
        # throughput: a burst of distinct frames, all published at once
        await asyncio.to_thread(clear_heatmaps, store)
        arrivals.reset()
        frames = [h.frame_for(settings, f"s{i % stations}", refs[i % len(refs)]) for i in range(args.burst)]
        batches0, busy0 = app.batcher.batches, model_busy_s(app)
        cpu0, srv0, sys0 = thread_cpu(), server_cpu(), machine_busy_s()
        t0 = time.perf_counter()
        await asyncio.gather(*(send(bus, arrivals, f) for f in frames))
        lost += await arrivals.wait(600)
        last = max((t for t, _ in arrivals.got.values()), default=time.perf_counter())
        throughput = len(arrivals.got) / (last - t0)
        burst_batches = app.batcher.batches - batches0
        busy_s = model_busy_s(app) - busy0
        cpu1, srv1, sys1 = thread_cpu(), server_cpu(), machine_busy_s()
        n_burst = max(1, len(arrivals.got))
        cpu_ms = {k: (cpu1.get(k, 0.0) - cpu0.get(k, 0.0)) * 1000 / n_burst for k in cpu1}
        srv_ms = {k: v * 1000 / n_burst for k, v in server_cpu_delta(srv0, srv1).items()}
        # what the whole machine did meanwhile: cores busy, and how much of it was not this run's
        machine_cores = (sys1 - sys0) / (last - t0)
        ours_s = (sum(cpu_ms.values()) + sum(srv_ms.values())) * n_burst / 1000
        others_cores = max(0.0, (sys1 - sys0) - ours_s) / (last - t0)
        burst = arrivals.results()
        burst_errors = sum(1 for r in burst if r.error)
        burst_stages = {st: statistics.fmean([r.stage_ms.get(st, 0.0) for r in burst]) for st in STAGES}
        duplicates += arrivals.duplicates
        strays += arrivals.strays
        # latency at line rate: every station triggers every 0.5 s, stations evenly staggered
        await asyncio.to_thread(clear_heatmaps, store)
        await asyncio.sleep(0.5)
        arrivals.reset()
        interval = 60.0 / PARTS_PER_MIN
        sent = 0
        start = time.perf_counter()
        n_ticks = max(1, round(args.paced_s / interval))
        stagger = 0.0 if args.synchronized else interval / stations
        for tick in range(n_ticks):
            for s in range(stations):
                due = start + tick * interval + s * stagger
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                frame = h.frame_for(settings, f"s{s}", refs[sent % len(refs)])
                await send(bus, arrivals, frame)
                sent += 1
        lost += await arrivals.wait(600)
        duplicates += arrivals.duplicates
        strays += arrivals.strays
        paced = arrivals.results()
        lat = arrivals.latencies_ms()
        errors = burst_errors + sum(1 for r in paced if r.error)
        stage_means = {
            st: statistics.fmean([r.stage_ms.get(st, 0.0) for r in paced]) if paced else 0.0 for st in STAGES
        }
        svc_p99 = pct([r.latency_ms for r in paced], 0.99)
    finally:
        await nc.close()
        await worker.stop()
        await app.stop()
    return {
        "ips": throughput,
        "machine_cores": machine_cores,
        "others_cores": others_cores,
        "p50": pct(lat, 0.5),
        "p99": pct(lat, 0.99),
        "svc_p99": svc_p99,
        "n": float(len(lat) + len(burst)),
        "lost": float(lost),
        "dup": float(duplicates + strays),
        "errors": float(errors),
        "batch": len(burst) / max(1, burst_batches),
        "model_busy": busy_s / (last - t0),
        "model_wall_ms": busy_s * 1000 / n_burst,
        **{f"stage_{k}": v for k, v in stage_means.items()},
        **{f"burst_{k}": v for k, v in burst_stages.items()},
        **{f"cpu_{k}": v for k, v in cpu_ms.items()},
        **{f"srv_{k}": v for k, v in srv_ms.items()},
    }


Key = tuple[str, str, int]  # config, backend, stations


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
    common = parse_overrides(args.set)
    configs: dict[str, dict[str, object]] = {}
    for item in args.config or ["default:"]:
        name, _, spec = item.partition(":")
        configs[name or f"config{len(configs) + 1}"] = {**common, **parse_overrides(spec.split(","))}
    for overrides in configs.values():
        replace(InferenceConfig(), **overrides).validate()  # fail on a typo before the servers start
    ref_config = next(iter(configs))
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
        pngs = frame_pngs(info, args.image_size)
        refs = [await h.put_frame(store, data) for data in pngs]
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
            "cases": 0,
        }
        frames_desc = (
            f"{len(refs)} distinct held-out dataset frames (1 in {DEFECT_EVERY} a defect)"
            if info
            else f"{args.image_size}px frames"
        )
        print(
            f"inference benchmark: {kind_of_model}\n  {frames_desc}; burst {args.burst}; "
            f"paced {args.paced_s:g}s at {PARTS_PER_MIN} parts/min/station "
            f"({'synchronized' if args.synchronized else 'staggered'} triggers); "
            "times are FrameCaptured publish -> InspectionResult received"
        )
        for name, overrides in configs.items():
            shown = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "InferenceConfig defaults"
            print(f"  config {name}: {shown}")
        header = (
            f"{'config':<10} {'backend':<12} {'stations':>8} {'images/s':>9} {'x ref':>6} {'p50 ms':>7} "
            f"{'p99 ms':>7} {'frames':>6} {'lost':>4} {'dup':>4} {'errors':>6} {'batch':>5}  "
            "mean ms per stage (paced): " + " ".join(STAGES)
        )
        rounds: list[dict[Key, dict[str, float]]] = []
        for n in range(args.repeat):
            alone = await model_alone_apart(
                model_dir, loader, pngs[:16], replace(InferenceConfig(), **configs[ref_config])
            )
            print(
                f"round {n + 1}/{args.repeat} (load avg {os.getloadavg()[0]:.1f}); the model alone (own "
                f"process, same thread settings): {alone['ips']:.1f} images/s at batch 16, "
                f"{alone['ms1']:.1f} ms for one image",
                flush=True,
            )
            print(header, flush=True)
            table: dict[Key, dict[str, float]] = {}
            # Configs side by side within each case, so a noisy minute hits both alike.
            for stations in station_counts:
                for kind in backends:
                    for name, overrides in configs.items():
                        row = await run_case(kind, stations, overrides, env, args)
                        row["alone_ips"] = alone["ips"]
                        table[(name, kind.value, stations)] = row
                        ref = table.get((ref_config, BackendKind.IN_PROCESS.value, stations), {})
                        stages = " ".join(f"{row['stage_' + st]:.1f}" for st in STAGES)
                        print(
                            f"{name:<10} {kind.value:<12} {stations:>8} {row['ips']:>9.1f} "
                            f"{row['ips'] / ref.get('ips', float('nan')):>6.2f} {row['p50']:>7.1f} "
                            f"{row['p99']:>7.1f} {int(row['n']):>6} {int(row['lost']):>4} "
                            f"{int(row['dup']):>4} "
                            f"{int(row['errors']):>6} {row['batch']:>5.1f}  {stages}",
                            flush=True,
                        )
            rounds.append(table)
        table = rounds[-1]
        print("\nmean ms per stage of the burst frames (throughput run, last round):")
        print(f"{'config':<10} {'backend':<12} {'stations':>8}  " + " ".join(f"{st:>10}" for st in STAGES))
        for (name, backend, stations), row in table.items():
            print(
                f"{name:<10} {backend:<12} {stations:>8}  "
                + " ".join(f"{row['burst_' + st]:>10.1f}" for st in STAGES)
            )
        print(
            "\nCPU ms per image during the burst, mean over rounds: this process by thread (in_process: "
            "incl. the model), then the servers"
        )
        for key in table:
            rows = [r[key] for r in rounds]
            ours = {
                k[4:]: statistics.fmean([r.get(k, 0.0) for r in rows])
                for k in rows[0]
                if k.startswith("cpu_")
            }
            srv = {
                k[4:]: statistics.fmean([r.get(k, 0.0) for r in rows])
                for k in rows[0]
                if k.startswith("srv_")
            }
            detail = ", ".join(f"{k} {v:.1f}" for k, v in sorted(ours.items(), key=lambda kv: -kv[1]))
            sdetail = ", ".join(f"{k} {v:.1f}" for k, v in sorted(srv.items(), key=lambda kv: -kv[1]))
            busy = statistics.fmean([r["model_busy"] for r in rows]) * 100
            wall = statistics.fmean([r["model_wall_ms"] for r in rows])
            cores = statistics.fmean([r["machine_cores"] for r in rows])
            others = statistics.fmean([r["others_cores"] for r in rows])
            print(
                f"{key[0]:<10} {key[1]:<12} {key[2]:>8}  process {sum(ours.values()):.1f} ({detail}); "
                f"servers {sum(srv.values()):.1f} ({sdetail}); model calls busy {busy:.0f} % of the "
                f"burst, {wall:.1f} ms wall per image; machine {cores:.2f} of {psutil.cpu_count()} "
                f"cores busy, {others:.2f} by other processes"
            )
        if len(rounds) > 1:
            print(f"\nover {len(rounds)} rounds: best / median (a shared machine: best = least disturbed)")
            print(
                f"{'config':<10} {'backend':<12} {'stations':>8} {'images/s':>15} {'x ref':>7} "
                f"{'x alone':>8} "
                f"{'p50 ms':>15} {'p99 ms':>15} {'lost+dup':>8}"
            )
            for key in table:
                rows = [r[key] for r in rounds]
                ratios = [
                    r[key]["ips"] / r[(ref_config, BackendKind.IN_PROCESS.value, key[2])]["ips"]
                    for r in rounds
                    if (ref_config, BackendKind.IN_PROCESS.value, key[2]) in r
                ]
                ips = [r["ips"] for r in rows]
                p50 = [r["p50"] for r in rows]
                p99 = [r["p99"] for r in rows]
                print(
                    f"{key[0]:<10} {key[1]:<12} {key[2]:>8} {max(ips):>7.1f} /{statistics.median(ips):>6.1f} "
                    f"{statistics.median(ratios) if ratios else float('nan'):>7.2f} "
                    f"{statistics.median([r['ips'] / r['alone_ips'] for r in rows]):>8.2f} "
                    f"{min(p50):>7.1f} /{statistics.median(p50):>6.1f} "
                    f"{min(p99):>7.1f} /{statistics.median(p99):>6.1f} "
                    f"{int(sum(r['lost'] + r['dup'] for r in rows)):>8}"
                )
        incomplete = sum(int(r[k]["lost"] + r[k]["dup"]) for r in rounds for k in r)
        if incomplete:
            print(f"WARNING: {incomplete} frames lost or answered twice; the figures above miss them")
        print(
            "targets on 2 cores (what 4 stations at line rate need): in_process >= 50 images/s; "
            "Triton within 20 % of in_process; "
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
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="an InferenceConfig field (all configs)",
    )
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="NAME:FIELD=VALUE,...",
        help="a config to compare (repeat; the first is the reference); default: one, the defaults",
    )
    parser.add_argument("--paced-s", type=float, default=4.0)
    parser.add_argument("--image-size", type=int, default=256, help="stand-in frames only")
    args, _ = parser.parse_known_args()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
