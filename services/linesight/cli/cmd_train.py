"""`linesight train`: train one model in this process and publish it through the stack.

    linesight train --dataset DIR [--product P] [--max-good N --max-per-class K --seed S]
    linesight train --from-labels [--product P] ...
    linesight train --version V [--incremental [--base-model M]]   (a job of the running service)
    linesight train --from-labels --incremental [--base-model M]    (a job of the running service)

Runs the training service's own code path (`linesight.training.service.train_once`) without
a running training service: it connects to the NATS, S3 and PostgreSQL that the LINESIGHT_*
variables name (the embedded stack's by default, see `linesight up`), trains on the dataset
(or on the labels confirmed in the labeling UI, frozen into a dataset), uploads
`models/<product>/<version>.tar.gz`, registers the model and announces it with ModelPublished.
This is what the Helm chart's training Job and nightly CronJob run.

With `--version` (a dataset version id from `linesight dataset import`) or `--incremental`, the
job runs in the training service instead (`linesight up`): it is queued, runs in a worker
process, and this command follows it with a progress bar (stage, percent, ETA); Ctrl-C cancels
it. `--incremental` extends the product's production model (or `--base-model`) with the
version's (with `--from-labels`: the newly confirmed labels') new classes.

The release gate (`<state dir>/release_gate.yaml`) decides the stage: `production` (inference
hot-swaps to it) or `candidate` (inference only shadow-scores it until the QA owner releases it
with the training service's PromoteModel RPC). Both are a successful run.

Exit codes: 0 model trained and registered (either stage); 1 the stack is unreachable (the
message names the server) or training failed; 2 bad arguments, settings, release gate file or
dataset.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from linesight.common.embedded.config import embedded_settings
from linesight.common.embedded.nats_auth import settings_as
from linesight.common.log import configure_logging

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class _Usage(Exception):  # noqa: N818 - internal: bad input, exit 2
    pass


def _non_negative(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _input_size(text: str) -> int:
    v = _non_negative(text)
    if v < 32:
        raise argparse.ArgumentTypeError(f"must be at least 32 pixels, got {v}")
    return v


def register(subparsers: Any) -> None:
    """Add `linesight train` to the CLI."""
    p = subparsers.add_parser(
        "train",
        help="train a model in-process against the configured stack (NATS, S3, PostgreSQL) and publish it",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", type=Path, help="dataset folder with manifest.csv (docs/data-model.md)")
    src.add_argument(
        "--from-labels",
        action="store_true",
        help="train on the labels confirmed in the labeling UI (the training schema's confirmed_labels)",
    )
    src.add_argument(
        "--version", help="a dataset version id: train it as a job of the running training service"
    )
    p.add_argument(
        "--incremental",
        action="store_true",
        help="extend the production model (a job of the running service)",
    )
    p.add_argument("--base-model", default="", help="with --incremental: the model to extend")
    p.add_argument("--token-file", type=Path, help="with --version/--incremental: a bearer token to call as")
    p.add_argument("--product", help="product the model is for (default LINESIGHT_PRODUCT)")
    p.add_argument("--max-good", type=_non_negative, help="cap on good images (seeded sample; default all)")
    p.add_argument(
        "--max-per-class", type=_non_negative, help="cap on images per defect class (seeded; default all)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the caps' sample, the holdout split, the model"
    )
    p.add_argument(
        "--input-size", type=_input_size, metavar="PX", help="square model input size (default: the engine's)"
    )
    p.add_argument(
        "--state-dir", type=Path, help="state directory holding release_gate.yaml (LINESIGHT_STATE_DIR)"
    )
    p.add_argument("--json", type=Path, help="also write the outcome as JSON to this file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of `linesight train`; see the module docstring for the exit codes."""
    from linesight.training.app.trainer import ReleaseGate, TrainingOptions
    from linesight.training.service import GATE_FILE

    def fail(code: int, message: str) -> int:
        print(f"linesight train: {message}", file=sys.stderr, flush=True)
        return code

    if args.version is not None or args.incremental:
        if args.dataset is not None:
            return fail(EXIT_USAGE, "--incremental trains through the service: give --version, not --dataset")
        return run_service_job(args)
    if args.base_model:
        return fail(EXIT_USAGE, "--base-model needs --incremental")
    # Everything that can be checked without the stack is checked first, and exits 2.
    try:
        overrides: dict[str, Any] = {}
        if args.state_dir is not None:
            overrides["state_dir"] = args.state_dir
        # It publishes the model as the training service would, so it connects as that NATS user.
        settings = settings_as(embedded_settings(**overrides), "training")
        product = settings.product if args.product is None else args.product.strip()
        if not product:
            raise _Usage("--product must not be empty")
        dataset = _check_dataset(args.dataset) if args.dataset is not None else None
        gate_path = Path(settings.state_dir) / GATE_FILE
        try:
            gate = ReleaseGate.load(gate_path)
        except Exception as exc:  # yaml errors, unknown keys, non-numbers
            raise _Usage(f"release gate {gate_path}: {exc}") from exc
    except (_Usage, ValueError) as exc:  # SettingsError, unreadable credentials
        return fail(EXIT_USAGE, str(exc))
    options = TrainingOptions(
        product=product,
        seed=args.seed,
        max_good=args.max_good,
        max_per_class=args.max_per_class,
        input_size=(args.input_size, args.input_size) if args.input_size else None,
    )
    configure_logging("training-run", settings.log_level, settings.log_json)
    source = str(dataset) if dataset is not None else "the confirmed labels"
    print(
        f"[train] training a {product} model on {source} (release gate: defect_recall >= "
        f"{gate.min_defect_recall}, false_reject_rate <= {gate.max_false_reject_rate})",
        file=sys.stderr,
        flush=True,
    )
    started = time.monotonic()
    with TrainingBar(sys.stderr) as bar:
        code, outcome = asyncio.run(_train(dataset, settings, product, options, gate, bar.update))
    if outcome is None:
        return code
    elapsed = time.monotonic() - started
    _print_outcome(outcome, elapsed)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**vars(outcome), "seconds": round(elapsed, 1)}, indent=2) + "\n")
    return EXIT_OK


def run_service_job(args: argparse.Namespace) -> int:
    """Queue a job in the running training service and follow it to the end (Ctrl-C cancels)."""
    from linesight.cli.service_calls import token_source
    from linesight.common.grpcutil import InvalidArgument, NotFound, ServiceError

    settings = embedded_settings(**({"state_dir": args.state_dir} if args.state_dir is not None else {}))
    product = settings.product if args.product is None else args.product.strip()

    async def follow() -> int:
        from linesight.common.clients import TrainingClient

        async with TrainingClient(
            settings.grpc_target("training"), token=token_source(args, settings)
        ) as client:
            job = await client.start_training(
                product, args.version or "", incremental=args.incremental, base_model=args.base_model
            )
            print(f"[train] job {job.job_id} ({job.mode}) queued", file=sys.stderr, flush=True)
            if not job.production_eligible:
                print(f"[train] {job.ineligible_reason}", file=sys.stderr, flush=True)
            try:
                with TrainingBar(sys.stderr) as bar:
                    while job.state in ("queued", "running"):
                        bar.update(job.progress_stage or job.state, job.percent / 100, "")
                        await asyncio.sleep(1.0)
                        job = await client.get_job(job.job_id)
                    bar.update(job.state, job.percent / 100, "")
            except (KeyboardInterrupt, asyncio.CancelledError):
                job = await client.cancel_job(job.job_id)
                print(f"[train] job {job.job_id} {job.state}", file=sys.stderr, flush=True)
                return EXIT_FAILED
            if job.state != "succeeded":
                print(
                    f"linesight train: job {job.job_id} {job.state}: {job.error}", file=sys.stderr, flush=True
                )
                return EXIT_FAILED
            metrics = ", ".join(f"{k}={v:.3g}" for k, v in sorted(job.metrics.items()))
            print(
                f"model {job.model_version} for {product}: {job.stage} (job {job.job_id})\n"
                f"  metrics  {metrics}"
            )
            for f in job.gate_failures:
                print(f"    - {f}")
            if args.json:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps({
                    "job_id": job.job_id, "model_version": job.model_version, "stage": job.stage,
                    "metrics": dict(job.metrics), "gate_failures": list(job.gate_failures),
                }, indent=2) + "\n")  # fmt: skip
            return EXIT_OK

    try:
        return asyncio.run(follow())
    except (InvalidArgument, NotFound) as exc:
        print(f"linesight train: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except ServiceError as exc:
        print(f"linesight train: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE if "PERMISSION_DENIED" in str(exc) else EXIT_FAILED


def _check_dataset(path: Path) -> Path:
    """The dataset folder, validated as training will read it (ManifestError names the rows)."""
    from linesight.vision.data.manifest import ManifestError, load_manifest

    root = path.expanduser().resolve()
    if not root.is_dir():
        raise _Usage(f"--dataset {path}: not a directory")
    if not (root / "manifest.csv").is_file():
        raise _Usage(f"--dataset {path}: no manifest.csv in {root} (layout: docs/data-model.md)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            samples = load_manifest(root, unknown_columns="ignore")
    except ManifestError as exc:
        raise _Usage(f"--dataset {path}: invalid dataset: {exc}") from exc
    if not samples:
        raise _Usage(f"--dataset {path}: the manifest lists no images")
    return root


class TrainingBar:
    """Progress of a training run: a rich progress bar (stage, percent, ETA) on a terminal, one
    line per stage otherwise (logs, CI). `update` may be called from the training thread."""

    def __init__(self, stream: Any) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.stream = stream
        self.last_stage = ""
        self.progress = Progress(
            TextColumn("[train] {task.description:<12}"), BarColumn(), TaskProgressColumn(),
            TimeRemainingColumn(), console=Console(file=stream), disable=not self.tty, transient=False,
        )  # fmt: skip
        self.task = self.progress.add_task("starting", total=100)

    def __enter__(self) -> TrainingBar:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, stage: str, fraction: float, message: str) -> None:
        self.progress.update(self.task, description=stage, completed=round(100 * fraction, 1))
        if not self.tty and stage != self.last_stage:
            print(f"[train] {stage} {100 * fraction:.0f}% {message}".rstrip(), file=self.stream, flush=True)
        self.last_stage = stage


async def _train(
    dataset: Path | None, settings: Any, product: str, options: Any, gate: Any, progress: Any = None
) -> tuple[int, Any]:
    """(exit code, TrainingOutcome or None)."""
    from linesight.common.bus import BusUnavailable
    from linesight.common.db import DatabaseUnavailable, MigrationError
    from linesight.common.storage import StorageUnavailable
    from linesight.training.service import train_once

    def fail(code: int, message: str) -> tuple[int, None]:
        print(f"linesight train: {message}", file=sys.stderr, flush=True)
        return code, None

    try:
        outcome = await train_once(
            dataset, settings, product=product, options=options, gate=gate, progress=progress
        )
    except (BusUnavailable, StorageUnavailable, DatabaseUnavailable) as exc:
        return fail(EXIT_FAILED, f"the stack is unreachable: {exc}")
    except MigrationError as exc:
        return fail(EXIT_FAILED, f"the training schema could not be migrated: {exc}")
    except ValueError as exc:  # ManifestError, SplitError, ImageError, no confirmed labels, too few images
        return fail(EXIT_USAGE, f"cannot train on {dataset or 'the confirmed labels'}: {exc}")
    except Exception as exc:
        return fail(EXIT_FAILED, f"training failed: {type(exc).__name__}: {exc}")
    return EXIT_OK, outcome


def _print_outcome(outcome: Any, elapsed: float) -> None:
    metrics = ", ".join(f"{k}={v:.3g}" for k, v in sorted(outcome.metrics.items()))
    lines = [
        f"model {outcome.model_version} for {outcome.product}: {outcome.stage} "
        f"(job {outcome.job_id}, dataset {outcome.dataset_version}, {elapsed:.0f} s)",
        f"  metrics  {metrics or 'none'}",
    ]
    if outcome.gate_failures:
        lines.append("  the release gate does not make it eligible for production:")
        lines += [f"    - {f}" for f in outcome.gate_failures]
    else:
        lines.append("  the release gate makes it eligible for production")
    lines.append(
        f"  only a QA owner releases it: linesight model promote {outcome.model_version} --reason R "
        "(after `linesight model shadow` and `shadow-report` if it should be compared on live frames)"
    )
    print("\n".join(lines), flush=True)
