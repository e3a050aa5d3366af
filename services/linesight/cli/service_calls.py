"""What the commands that call the training service (`linesight dataset`, `model`, `train`
following a job) share: who the caller is, a reply as plain JSON, and one way to end (a summary
on stdout, the JSON file, the same exit codes for the same failures)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# Refusals of the request as asked (not an outage): exit 2 like bad arguments.
_REFUSED = ("PERMISSION_DENIED", "FAILED_PRECONDITION", "UNAUTHENTICATED")


def add_caller_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", type=Path, help="state directory of the stack (LINESIGHT_STATE_DIR)")
    parser.add_argument("--token-file", type=Path, help="file holding a bearer token to call as")


def add_json_arg(parsers: Iterable[argparse.ArgumentParser]) -> None:
    for q in parsers:
        q.add_argument("--json", type=Path, help="also write the result as JSON to this file")


def token_source(args: argparse.Namespace, settings: Any) -> Callable[[], str]:
    """`--token-file`'s token, else the local user as engineer and QA owner of this plant, signed
    by the installation key in the state directory (only who holds that directory can)."""
    if getattr(args, "token_file", None) is not None:
        token = args.token_file.read_text().strip()
        return lambda: token
    from linesight.common.identity.config import AuthSettings
    from linesight.common.identity.installation import installation_signer
    from linesight.common.identity.model import Grant, Principal, Role

    user = getpass.getuser()
    grants = tuple(Grant(role, settings.plant) for role in (Role.ENGINEER, Role.QA_OWNER))
    principal = Principal(f"cli:{user}", user, "user", grants)
    signer = installation_signer(AuthSettings(), Path(settings.state_dir), ttl_s=3600)
    signed = signer.issue(principal).token
    return lambda: signed


def message_dict(message: Any, **json_fields: str) -> dict[str, Any]:
    """A reply as a dict with every field; `json_fields` maps a field holding JSON text to the
    key its parsed value goes under (counts_json="counts")."""
    from google.protobuf.json_format import MessageToDict

    out: dict[str, Any] = MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    for field, key in json_fields.items():
        if field in out:
            out[key] = json.loads(out.pop(field) or "{}")
    return out


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def settings_of(args: argparse.Namespace) -> Any:
    from linesight.common.embedded.config import embedded_settings

    overrides: dict[str, Any] = {}
    if getattr(args, "state_dir", None) is not None:
        overrides["state_dir"] = args.state_dir
    return embedded_settings(**overrides)


def run_command(
    command: str,
    args: argparse.Namespace,
    call: Callable[[Any], Coroutine[Any, Any, dict[str, Any]]],
    summary: Callable[[str, dict[str, Any]], str],
) -> int:
    """Run `call(settings)`, print `summary(action, result)` and write `--json`. Exit 2 for bad
    input, an unknown entity or a refusal (named on stderr), 1 for an unreachable or failing
    service."""
    from linesight.common.grpcutil import InvalidArgument, NotFound, ServiceError

    where = f"linesight {command} {args.action}"
    try:
        result = asyncio.run(call(settings_of(args)))
    except (InvalidArgument, NotFound) as exc:
        print(f"{where}: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except ServiceError as exc:
        print(f"{where}: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE if any(s in str(exc) for s in _REFUSED) else EXIT_FAILED
    except (OSError, ValueError) as exc:
        print(f"{where}: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    print(summary(args.action, result), flush=True)
    if getattr(args, "json", None) is not None:
        write_text(args.json, json.dumps(result, indent=2, default=str) + "\n")
    return EXIT_OK
