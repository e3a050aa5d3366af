"""Training jobs through the training service on an embedded stack (NATS, PostgreSQL, S3): the
time of a full job and of an incremental job (a new defect class from a few examples), each from
a recorded dataset version and run in a worker process, and the old classes' recall before and
after the incremental update (on the incremental version's val rows of old classes, which neither
job trains on; the job says so, or that the figure is in-sample).

    python -m tests.bench.bench_training [--dataset magnetic_tile] [--new-class fray] [--quick]

Default: ../shared/datasets/magnetic_tile, base = every class but `--new-class` (capped at
`--max-good` good and `--max-per-class` per class), incremental = `--new-examples` of the new
class plus fresh images of the old classes. `--quick` (or no dataset on disk): a 64 px synthetic
set, which measures the plumbing, not the model. Times include the worker's start (imports), the
dataset download from S3, the fit and the registration; they are never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DATASETS = (REPO.parent / "shared" / "datasets").resolve()


def _subset(src: Path, rows: list[dict[str, str]], out: Path) -> Path:
    """A manifest folder holding copies of `rows` (in a temporary directory, never the repo)."""
    (out / "images").mkdir(parents=True)
    kept = []
    for r in rows:
        name = f"images/{r['label']}_{Path(r['image']).name}"
        shutil.copyfile(src / r["image"], out / name)
        kept.append({"image": name, "label": r["label"], "part_id": r["part_id"], "batch": r.get("batch", ""),
                     "station": r.get("station", "")})  # fmt: skip
    with (out / "manifest.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(kept[0]))
        w.writeheader()
        w.writerows(kept)
    return out


def make_sets(args: argparse.Namespace, root: Path) -> tuple[str, str, str]:
    """(base folder, incremental folder, description) under `root` (the service's datasets root)."""
    src = DATASETS / args.dataset
    if args.quick or not (src / "manifest.csv").is_file():
        from linesight.vision.data.synth import generate_dataset

        why = "--quick" if args.quick else f"{src} not found"
        generate_dataset(root / "base", n_good=40, per_class=12, seed=1, size=64, classes=("scratch", "pit"),
                         n_batches=2, n_stations=1)  # fmt: skip
        generate_dataset(root / "extra", n_good=4, per_class=12, seed=9, size=64,
                         classes=("scratch", "pit", "crack"), n_batches=1, n_stations=1)  # fmt: skip
        # The incremental set: the new class, plus fresh images of the old ones (for recall).
        with (root / "extra" / "manifest.csv").open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        _subset(root / "extra", rows, root / "inc")
        return "base", "inc", f"synthetic 64 px ({why}): base scratch+pit, new class crack"
    with (src / "manifest.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    rng = random.Random(args.seed)
    rng.shuffle(rows)
    new = args.new_class
    if new not in {r["label"] for r in rows}:
        raise SystemExit(f"--new-class {new!r} is not a class of {src}")
    by_label: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_label.setdefault(r["label"], []).append(r)
    base, inc = [], []
    for label, items in sorted(by_label.items()):
        if label == new:
            inc += items[: args.new_examples]
            continue
        cap = args.max_good if label == "good" else args.max_per_class
        base += items[:cap]
        fresh = [r for r in items[cap:] if r["part_id"] not in {b["part_id"] for b in base}]
        inc += fresh[: args.old_examples]
    _subset(src, base, root / "base")
    _subset(src, inc, root / "inc")
    counts = {k: sum(1 for r in inc if r["label"] == k) for k in sorted({r["label"] for r in inc})}
    return (
        "base",
        "inc",
        (
            f"{args.dataset}: base {len(base)} images (good <= {args.max_good}, "
            f"<= {args.max_per_class}/class, "
            f"without {new}); incremental {len(inc)} images {counts}"
        ),
    )


def _state_dir() -> Path:
    """Where the servers keep their state; PostgreSQL (as its own user when we are root) must reach it."""
    from linesight.common.embedded.postgres import SYSTEM_USER, ensure_system_user, ensure_traversable

    tmp = Path(tempfile.mkdtemp(prefix="bench-training-"))
    tmp.chmod(0o711)
    if os.geteuid() == 0:
        ensure_system_user(SYSTEM_USER)
        ensure_traversable(tmp / "x")
    return tmp


async def run(args: argparse.Namespace) -> int:
    import grpc

    from linesight.common.embedded import NatsServer, PostgresServer, SeaweedS3
    from linesight.common.embedded.process import free_port
    from linesight.common.embedded.seaweed import SeaweedPorts
    from linesight.common.identity.config import AuthSettings
    from linesight.common.identity.grpc import bearer_interceptors
    from linesight.common.identity.installation import installation_signer
    from linesight.common.identity.model import Grant, Principal
    from linesight.common.pb import training_pb2, training_pb2_grpc
    from linesight.common.service import service_running
    from linesight.common.settings import SERVICE_PORTS, Settings
    from linesight.training.app.job_config import JobsConfig
    from linesight.training.app.trainer import ReleaseGate, TrainingOptions
    from linesight.training.service import TrainingServiceOptions, make_setup

    tmp = _state_dir()
    ports: list[int] = []
    while len(ports) < 5:
        p = free_port(also_free=(10000,))
        if p not in ports and p + 10000 < 65536:
            ports.append(p)
    nats = NatsServer(tmp / "nats", free_port(also_free=(4000,)))
    pg = PostgresServer(tmp / "pg", free_port(), durable=False)
    s3 = SeaweedS3(tmp / "s3", SeaweedPorts(*ports), "bench", "bench-secret")
    servers: list[Any] = [nats, pg, s3]
    try:
        for s in servers:
            s.start()
        root = tmp / "datasets"
        base_dir, inc_dir, desc = make_sets(args, root)
        settings = Settings(
            nats_url=nats.url, pg_dsn=pg.dsn, s3_endpoint=s3.endpoint, s3_access_key="bench",
            s3_secret_key="bench-secret", state_dir=tmp / "state", datasets_dir=str(root), log_json=False,
            log_level="WARNING", grpc_ports={n: free_port() for n in SERVICE_PORTS},
            http_ports={n: free_port() for n in SERVICE_PORTS},
        )  # fmt: skip
        signer = installation_signer(AuthSettings(), settings.state_dir, ttl_s=3600)
        token = signer.issue(Principal("bench", "bench", "user", (Grant.parse("engineer@*/*"),))).token
        size = (64, 64) if "synthetic" in desc else None
        setup = make_setup(TrainingServiceOptions(
            gate=ReleaseGate(min_defect_recall=0.0, max_false_reject_rate=1.0),
            defaults=TrainingOptions(product=args.product, input_size=size, seed=args.seed), consume=False,
            jobs=JobsConfig(poll_s=0.25, auto_update=False),
        ))  # fmt: skip
        threads = os.environ.get("LINESIGHT_TORCH_THREADS", "unset")
        print(f"training benchmark: {desc}\n  load avg {os.getloadavg()[0]:.1f}; "
              f"LINESIGHT_TORCH_THREADS={threads}", flush=True)  # fmt: skip
        async with (
            service_running("training", setup, settings=settings) as svc,
            grpc.aio.insecure_channel(
                settings.grpc_target("training"), interceptors=bearer_interceptors(lambda: token)
            ) as channel,
        ):
            stub = training_pb2_grpc.TrainingServiceStub(channel)
            figures: dict[str, Any] = {}
            for name, folder, incremental in (("full", base_dir, False), ("incremental", inc_dir, True)):
                t = time.perf_counter()
                version = await stub.ImportDataset(
                    training_pb2.ImportDatasetRequest(product=args.product, directory=folder, reason="bench")
                )
                imported = time.perf_counter() - t
                t = time.perf_counter()
                job = await stub.StartTraining(training_pb2.StartTrainingRequest(
                    product=args.product, dataset_version=version.version, incremental=incremental,
                ))  # fmt: skip
                last = ""
                while job.state in ("queued", "running"):
                    await asyncio.sleep(0.5)
                    job = await stub.GetTrainingJob(training_pb2.GetTrainingJobRequest(job_id=job.job_id))
                    if args.verbose and job.progress_stage != last:
                        last = job.progress_stage
                        eta = f"{job.eta_seconds:.0f}" if job.eta_seconds >= 0 else "?"
                        print(f"    {name}: {job.progress_stage} {job.percent:.0f}% eta {eta} s", flush=True)
                seconds = time.perf_counter() - t
                if job.state != "succeeded":
                    print(f"{name} job {job.job_id} {job.state}: {job.error}")
                    return 1
                run = await svc.app.get_run(job.job_id)
                figures[name] = {"seconds": seconds, "import_s": imported, "images": version.images,
                                 "worker_s": (run.result or {}).get("seconds", float("nan")),
                                 "metrics": dict(job.metrics)}  # fmt: skip
        full, inc = figures["full"], figures["incremental"]
        print(f"\n{'job':<12} {'images':>6} {'import s':>9} {'job s':>7} {'in worker s':>12}")
        for name in ("full", "incremental"):
            f = figures[name]
            print(
                f"{name:<12} {f['images']:>6} {f['import_s']:>9.1f} {f['seconds']:>7.1f} "
                f"{f['worker_s']:>12.1f}"
            )
        m = inc["metrics"]
        how = "learned by the update: in-sample" if m.get("old_class_recall_in_sample") else (
            "val rows the update never learned")  # fmt: skip
        print(
            f"\nincremental / full job time: {inc['seconds'] / full['seconds']:.2f}\n"
            f"old-class recall on {m.get('old_class_images_measured', float('nan')):.0f} fresh images "
            f"({how}): "
            f"before {m.get('old_class_recall_before', float('nan')):.3f}, "
            f"after {m.get('old_class_recall_after', float('nan')):.3f}; new class recall on its examples "
            f"{m.get('new_class_recall_after', float('nan')):.3f}\n"
            f"good frames of the incremental set flagged: "
            f"before {m.get('good_flagged_before', float('nan')):.3f}, "
            f"after {m.get('good_flagged_after', float('nan')):.3f} (in-sample: the recalibration saw them)\n"
            "incremental job seconds by step: "
            + ", ".join(f"{k[8:]} {v:.1f}" for k, v in sorted(m.items()) if k.startswith("seconds_"))
            + f" (rest: worker start, download, export, upload, registration)\n"
            f"full job holdout: defect_recall {full['metrics'].get('defect_recall', float('nan')):.3f}, "
            f"false_reject_rate {full['metrics'].get('false_reject_rate', float('nan')):.3f}, "
            f"near-duplicate links merged {full['metrics'].get('near_duplicate_links', 0):.0f}"
        )
        return 0
    finally:
        for s in reversed(servers):
            try:
                s.stop()
            except Exception as exc:
                print(f"stopping {type(s).__name__}: {exc}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="magnetic_tile", help="folder under ../shared/datasets")
    parser.add_argument("--new-class", default="fray", help="the class the incremental job adds")
    parser.add_argument("--new-examples", type=int, default=20)
    parser.add_argument("--old-examples", type=int, default=10, help="fresh images per old class (recall)")
    parser.add_argument("--max-good", type=int, default=150)
    parser.add_argument("--max-per-class", type=int, default=30)
    parser.add_argument("--product", default="bench-tile")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a 64 px synthetic set (plumbing only)")
    parser.add_argument("--verbose", action="store_true", help="print each progress stage")
    args, _ = parser.parse_known_args()  # run_all passes its own arguments to every bench
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
