"""`linesight model`: the model registry through the training service (`linesight up` running).

    linesight model list [--product P] [--json F]
    linesight model show VERSION [--json F]                  lineage, stage, gate verdict
    linesight model gate-report VERSION [--html F] [--json F]
    linesight model shadow VERSION [--reason R]              score it beside production (engineer, QA owner)
    linesight model shadow-report [VERSION] [--product P] [--json F]
    linesight model promote VERSION --reason R               QA owner: sign off for production
    linesight model rollback [VERSION] --product P --reason R   QA owner: back to an earlier production model
    linesight model archive VERSION [--reason R]
    linesight model gate --product P [--set FILE --reason R] [--version N]   show or set the release gate

Passing the release gate makes a model eligible; only `promote` (a QA owner's sign-off) makes it
production. `promote` prints the gate verdict and the shadow comparison, the evidence, before it
asks the service. The caller is whoever `--token-file` names, else the local user acting as
engineer and QA owner of this plant with a token signed by the installation key in the state
directory (only who holds the state directory can do that).

Exit codes: 0 done; 1 the service is unreachable or failed; 2 bad arguments, an unknown model,
or a refusal (not eligible, not allowed).
"""

from __future__ import annotations

import argparse
import json
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


def register(subparsers: Any) -> None:
    """Add `linesight model` to the CLI."""
    p = subparsers.add_parser(
        "model",
        help="model registry: list, show, gate report, shadow, shadow report, promote, rollback, gate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_caller_args(p)
    sub = p.add_subparsers(dest="action", required=True)
    lst = sub.add_parser("list", help="registered models, newest first")
    lst.add_argument("--product", default="")
    show = sub.add_parser("show", help="one model: stage, lineage, gate verdict")
    show.add_argument("version")
    rep = sub.add_parser("gate-report", help="the release gate applied to the model's holdout evaluation")
    rep.add_argument("version")
    rep.add_argument("--html", type=Path, help="write the self-contained HTML page here")
    shadow = sub.add_parser(
        "shadow", help="put a candidate in shadow: scored on live frames, never dispatched"
    )
    shadow.add_argument("version")
    shadow.add_argument("--reason", default="")
    archive = sub.add_parser("archive", help="retire a candidate or shadow model")
    archive.add_argument("version")
    archive.add_argument("--reason", default="")
    srep = sub.add_parser("shadow-report", help="the shadow model's decisions against production's")
    srep.add_argument("version", nargs="?", default="")
    srep.add_argument("--product", default="")
    promote = sub.add_parser("promote", help="QA owner: sign a model off for production")
    promote.add_argument("version")
    promote.add_argument("--reason", required=True)
    rollback = sub.add_parser("rollback", help="QA owner: production back to an earlier production model")
    rollback.add_argument("version", nargs="?", default="", help="empty: the previous production model")
    rollback.add_argument("--product", default="")
    rollback.add_argument("--reason", required=True)
    gate = sub.add_parser("gate", help="show the product's release gate, or set a new version (QA owner)")
    gate.add_argument("--product", required=True)
    gate.add_argument("--set", type=Path, dest="gate_file", help="YAML file of the new gate")
    gate.add_argument("--reason", default="")
    gate.add_argument("--version", type=int, default=0, help="show this version (0: the one in force)")
    add_json_arg((lst, show, rep, shadow, archive, srep, promote, rollback, gate))
    p.set_defaults(func=run)


def _entry(m: Any) -> dict[str, Any]:
    return message_dict(m, lineage_json="lineage")


def _shadow(r: Any) -> dict[str, Any]:
    return {**json.loads(r.report_json or "{}"), "model_version": r.model_version}


async def _run(args: argparse.Namespace, settings: Any) -> dict[str, Any]:
    from linesight.common.clients import TrainingClient
    from linesight.common.grpcutil import NotFound

    async with TrainingClient(settings.grpc_target("training"), timeout_s=120.0,
                              token=token_source(args, settings)) as client:  # fmt: skip
        a = args.action
        if a == "list":
            return {"models": [_entry(m) for m in await client.list_models(args.product)]}
        if a == "show":
            return _entry(await client.get_model(args.version))
        if a == "gate-report":
            r = await client.gate_report(args.version, html=args.html is not None)
            if args.html is not None:
                write_text(args.html, r.html)
            return {**json.loads(r.report_json), "html_key": r.html_key}
        if a in ("shadow", "archive"):
            stage = "shadow" if a == "shadow" else "archived"
            return _entry(await client.set_model_stage(args.version, stage, reason=args.reason))
        if a == "shadow-report":
            return _shadow(await client.shadow_report(args.version, product=args.product))
        if a == "promote":
            # The evidence first: the gate verdict and, when there is one, the shadow comparison.
            evidence = _entry(await client.get_model(args.version))
            try:
                shadow: dict[str, Any] | None = _shadow(await client.shadow_report(args.version))
            except NotFound:
                shadow = None
            print(_summary("show", evidence), flush=True)
            if shadow is not None and shadow.get("frames"):
                print(_summary("shadow-report", shadow), flush=True)
            entry = _entry(await client.promote_model(args.version, reason=args.reason))
            return {**entry, "shadow": shadow}
        if a == "rollback":
            return _entry(
                await client.rollback_model(
                    product=args.product, model_version=args.version, reason=args.reason
                )
            )
        if args.gate_file is not None:
            g = await client.set_release_gate(args.product, args.gate_file.read_text(), reason=args.reason)
        else:
            g = await client.get_release_gate(args.product, args.version)
        return _entry(g)


def _summary(action: str, r: dict[str, Any]) -> str:
    if action == "list":
        rows = [
            f"{m['model_version']}  {m['product']:<14} {m['stage']:<10} "
            f"{'gate failed' if m['gate_failures'] else 'gate passed':<11} {m.get('stage_changed_by', '')}"
            for m in r["models"]
        ]
        return "\n".join(rows) or "no models"
    if action in ("show", "shadow", "archive", "promote", "rollback"):
        verdict = (
            "eligible" if r.get("eligible") else "NOT eligible: " + "; ".join(r.get("gate_failures", []))
        )
        lineage = r.get("lineage") or {}
        lines = [
            f"model {r['model_version']} ({r['product']}): {r['stage']}",
            f"  gate     v{r.get('gate_version', 0)}: {verdict}",
            f"  dataset  {r.get('dataset_version') or '-'}  taxonomy v{r.get('taxonomy_version') or '-'}",
            f"  code     {lineage.get('code_version', '-')}",
            f"  changed  by {r.get('stage_changed_by') or '-'}: {r.get('stage_reason') or '-'}",
        ]
        return "\n".join(lines)
    if action == "gate-report":
        lines = [f"model {r['model_version']}: gate v{r['gate_version']} "
                 f"{'passed' if r['passed'] else 'FAILED'}"]  # fmt: skip
        for c in r["checks"]:
            value = "n/a" if c["value"] is None else f"{c['value']:.4f}"
            lines.append(
                f"  {'ok  ' if c['passed'] else 'FAIL'} {c['name']:<22} {value} {c['op']} {c['threshold']}"
            )
        return "\n".join(lines)
    if action == "shadow-report":
        return (
            f"shadow {r['model_version']} vs production {', '.join(r.get('production_versions') or ['-'])}: "
            f"{r['frames']} frames, agreement {r['agreement']:.1%}; would reject {r['would_reject']} "
            f"production passed, would pass {r['would_pass']} production stopped; flips {r.get('flips')}"
        )
    if action == "gate":
        return (
            f"release gate of {r['product']} v{r.get('version', 0)} ({r.get('author') or 'default'}):\n"
            + r.get("gate_yaml", "")
        )
    return json.dumps(r, indent=1)


def run(args: argparse.Namespace) -> int:
    """Entry point of `linesight model`; see the module docstring for the exit codes."""
    return run_command("model", args, lambda settings: _run(args, settings), _summary)
