"""`linesight dataset`: dataset versions through the training service (`linesight up` running).

    linesight dataset import DIR --product P [--reason R] [--parent V] [--json F] [--server-path]
    linesight dataset create --product P [--reason R] [--parent V] [--json F]   (confirmed labels)
    linesight dataset list [--product P] [--json F]
    linesight dataset show VERSION [--json F]
    linesight dataset diff BASE OTHER [--json F]
    linesight dataset report VERSION [--html F] [--json F] [--learning-curve]
    linesight dataset waive VERSION KIND --reason R            (QA owner)

`import` uploads DIR from this machine: manifest.csv, then the images and masks its rows name
(a progress bar on a terminal), and the service imports them as it would a folder of its own, so
DIR may lie anywhere the CLI can read. Always uploading is the one behaviour that works the same
whether the service runs on this host, in a container or in a cluster. With `--server-path`, DIR
is instead a folder the service reads itself, under its datasets root LINESIGHT_DATASETS_DIR
(relative to it, or absolute inside it): nothing is uploaded. Either way the images are stored in
S3, so the version survives the folder.

The caller is whoever `--token-file` names, else the local user acting as engineer and QA owner
of this plant with a token signed by the installation key in the state directory (only who holds
the state directory can do that).

Exit codes: 0 done; 1 the service is unreachable or failed; 2 bad arguments or input (the
message lists each bad manifest row with its reason), an unknown version, or a refusal.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from linesight.cli.service_calls import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    add_caller_args,
    add_json_arg,
    message_dict,
    run_command,
    token_source,
    write_text,
)

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "register", "run"]

IMPORT_TIMEOUT_S = 1800.0  # uploads and the hygiene report of a few thousand images


def register(subparsers: Any) -> None:
    """Add `linesight dataset` to the CLI."""
    p = subparsers.add_parser(
        "dataset",
        help="dataset versions: import, create from labels, list, show, diff, hygiene report, waive",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_caller_args(p)
    sub = p.add_subparsers(dest="action", required=True)
    imp = sub.add_parser("import", help="import a manifest folder as a dataset version")
    imp.add_argument("directory", type=Path)
    imp.add_argument(
        "--server-path", action="store_true",
        help="DIR is a folder under the service's datasets root (LINESIGHT_DATASETS_DIR) that the "
        "service reads itself; nothing is uploaded",
    )  # fmt: skip
    create = sub.add_parser("create", help="a dataset version from the confirmed labels")
    for q in (imp, create):
        q.add_argument("--product", required=True)
        q.add_argument("--reason", default="", help="why this version exists (recorded)")
        q.add_argument("--parent", default="", help="the version this one follows")
    lst = sub.add_parser("list", help="dataset versions, oldest first")
    lst.add_argument("--product", default="")
    show = sub.add_parser("show", help="one version's record")
    show.add_argument("version")
    diff = sub.add_parser("diff", help="images added, removed, relabelled between two versions")
    diff.add_argument("base")
    diff.add_argument("other")
    rep = sub.add_parser("report", help="a version's hygiene report")
    rep.add_argument("version")
    rep.add_argument("--html", type=Path, help="write the self-contained HTML page here")
    rep.add_argument(
        "--learning-curve", action="store_true",
        help="also the per-class learning curve with the predicted gain of more data "
        "(computed once per version, from its train and val splits; minutes on a large set)",
    )  # fmt: skip
    waive = sub.add_parser("waive", help="QA owner: accept a blocking finding with a reason")
    waive.add_argument("version")
    waive.add_argument("kind")
    waive.add_argument("--reason", required=True)
    add_json_arg((imp, create, lst, show, diff, rep, waive))
    p.set_defaults(func=run)


def _version_dict(v: Any) -> dict[str, Any]:
    return message_dict(v, counts_json="counts")


async def _run(args: argparse.Namespace, settings: Any) -> dict[str, Any]:
    from linesight.common.clients import TrainingClient

    timeout = IMPORT_TIMEOUT_S if args.action in ("import", "create", "report") else 60.0
    async with TrainingClient(settings.grpc_target("training"), timeout_s=timeout,
                              token=token_source(args, settings)) as client:  # fmt: skip
        if args.action == "import":
            started = time.monotonic()
            if args.server_path:
                v = await client.import_dataset(
                    args.product, str(args.directory), reason=args.reason, parent_version=args.parent
                )
            else:
                v = await _upload(client, args)
            return {**_version_dict(v), "seconds": round(time.monotonic() - started, 1)}
        if args.action == "create":
            v = await client.create_dataset_version(
                args.product, reason=args.reason, parent_version=args.parent
            )
            return _version_dict(v)
        if args.action == "list":
            return {"versions": [_version_dict(v) for v in await client.list_dataset_versions(args.product)]}
        if args.action == "show":
            return _version_dict(await client.get_dataset_version(args.version))
        if args.action == "diff":
            d = await client.diff_dataset_versions(args.base, args.other)
            delta = json.loads(d.counts_delta_json or "{}")
            return {"base": d.base, "other": d.other, "added": d.added, "removed": d.removed,
                             "relabelled": d.relabelled, "counts_delta": delta,
                             "examples": list(d.examples)}  # fmt: skip
        if args.action == "report":
            r = await client.dataset_report(
                args.version, html=args.html is not None, learning_curve=args.learning_curve
            )
            if args.html is not None:
                write_text(args.html, r.html)
            return {"version": r.version, **json.loads(r.report_json), "html_key": r.html_key}
        r = await client.waive_dataset_finding(args.version, args.kind, args.reason)
        return {"version": r.version, **json.loads(r.report_json)}


async def _upload(client: Any, args: argparse.Namespace) -> Any:
    """DIR's manifest and the files its rows name, streamed with a progress bar (a terminal only)."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    from linesight.training.app.uploads import MANIFEST, files_named

    folder = args.directory.expanduser()
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise ValueError(f"{folder}: no {MANIFEST} in the folder")
    files = [MANIFEST, *(n for n in files_named(manifest.read_bytes()) if n != MANIFEST)]
    total = sum((folder / n).stat().st_size for n in files if (folder / n).is_file())
    stream = sys.stderr
    with Progress(
        TextColumn("[upload]"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
        console=Console(file=stream), disable=not stream.isatty(), transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("upload", total=total)
        return await client.upload_dataset(
            args.product, folder, files, reason=args.reason, parent_version=args.parent,
            on_bytes=lambda n: bar.advance(task, n),
        )  # fmt: skip


def _summary(action: str, result: dict[str, Any]) -> str:
    if action in ("import", "create", "show"):
        state = "created" if result.get("created") else "existing"
        lines = [f"dataset {result['version']} ({state}): {result['images']} images, "
                 f"taxonomy v{result.get('taxonomy_version') or '-'}, blocking={result.get('blocking')}",
                 f"  split   {result.get('split_policy')}",
                 f"  classes {result['counts'].get('class')}",
                 f"  splits  {result['counts'].get('split')}"]  # fmt: skip
        lines += [f"  note    {n}" for n in result.get("input_notes", [])[:20]]
        return "\n".join(lines)
    if action == "list":
        rows = [
            f"{v['version']}  {v['images']:>6} images  {v['source']:<7} blocking={v['blocking']}  "
            f"{v.get('created_by', '')}"
            for v in result["versions"]
        ]
        return "\n".join(rows) or "no dataset versions"
    if action in ("report", "waive"):
        lines = [f"dataset {result['version']}: {result['images']} images, blocking={result['blocking']}"]
        for f in result["findings"]:
            shown = "; ".join(map(str, f["examples"][:2]))
            lines.append(f"  {f['severity']:<8} {f['kind']:<22} {f['count']:>5}  e.g. {shown}")
        if result.get("clean"):
            lines.append(f"  checked and clean: {', '.join(result['clean'])}")
        seeded = result.get("seeded_holdout") or {}
        if seeded.get("parts"):
            lines.append(f"  seeded known-defect parts in the holdout: {seeded['parts']} of "
                         f"{seeded['holdout_parts']} ({seeded['by_class']})")  # fmt: skip
        if result.get("learning_curve"):
            from linesight.training.app.learning import summary_rows as curve_rows

            lines.append("  learning curve (val error now -> predicted at twice the examples):")
            lines += [f"    {row}" for row in curve_rows(result["learning_curve"])]
        return "\n".join(lines)
    return json.dumps(result, indent=1)


def run(args: argparse.Namespace) -> int:
    """Entry point of `linesight dataset`; see the module docstring for the exit codes."""
    return run_command("dataset", args, lambda settings: _run(args, settings), _summary)
