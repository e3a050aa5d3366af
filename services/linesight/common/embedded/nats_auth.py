"""Who may say what on the bus: one NATS user per service, with subject permissions, and the
installation's generated secrets (NATS passwords, S3 keys) kept in the state dir.

Without this anyone who reached NATS could publish a PASS for any part. Each service may publish
only the events it produces (the table in docs/messaging.md, checked against the code by
tests/unit/test_nats_permissions.py), the dead letters of what it consumes, and JetStream API
requests scoped to its streams (stream info; binding to the provisioner's durable consumers and
creating ordered ones on the streams it consumes); it may read only its own reply inbox
(`_INBOX.<user>.>`, see `bus.inbox_prefix`). Streams are created and
updated by the `provisioner` user alone (the embedded stack at `up`, the chart's Job), so a
compromised service cannot reshape or shadow the record; the provisioner also creates every
durable consumer with its settings (linesight.common.consumers).
NATS does not tell a consumer who published a message, so these permissions are what makes
`EventMeta.producer` trustworthy: the bus stamps it from the authenticated user on publish.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from linesight.common import subjects as subj
from linesight.common.bus import PROVISIONER_USER, inbox_prefix
from linesight.common.settings import Settings

CREDENTIALS_FILE = Path("auth") / "credentials.json"  # under the state dir, mode 0600

# Events each service publishes (producers in docs/messaging.md).
PUBLISHES: Mapping[str, tuple[str, ...]] = {
    "capture": (subj.FRAME_CAPTURED, subj.CAPTURE_ALARM, subj.DRIFT_ALERT),
    "inference": (
        subj.INSPECTION_RESULT,
        subj.INSPECTION_SHADOW,
        subj.MODEL_RECALIBRATED,
        subj.CAPTURE_ALARM,
        subj.DRIFT_ALERT,
    ),
    "training": (subj.MODEL_PUBLISHED, subj.TRAINING_PROGRESS, subj.DATASET_CREATED),
    "taxonomy": (subj.TAXONOMY_PUBLISHED,),
    "labeling": (subj.LABEL_SUBMITTED, subj.REVIEW_REQUESTED),
    "mes": (subj.MES_DISPATCHED, subj.CAPTURE_ALARM),
}
# Events each service consumes through JetStream (consumers in docs/messaging.md).
CONSUMES: Mapping[str, tuple[str, ...]] = {
    "capture": (),
    "inference": (
        subj.FRAME_CAPTURED,
        subj.LABEL_SUBMITTED,
        subj.MODEL_PUBLISHED,
        subj.MODEL_RECALIBRATED,
        subj.TAXONOMY_PUBLISHED,
    ),
    "training": (
        subj.LABEL_SUBMITTED,
        subj.TAXONOMY_PUBLISHED,
        subj.INSPECTION_RESULT,  # the shadow comparison: production's decisions
        subj.INSPECTION_SHADOW,  # and the shadow model's
    ),
    "taxonomy": (),
    "labeling": (subj.INSPECTION_RESULT, subj.TAXONOMY_PUBLISHED),
    "mes": (subj.INSPECTION_RESULT,),
}
SERVICE_USERS = tuple(PUBLISHES)
# People's tools (`linesight demo` watching training progress, `nats stream view`): read only.
OPERATOR_USER = "operator"
USERS = (*SERVICE_USERS, OPERATOR_USER, PROVISIONER_USER)

# JetStream API calls no service makes; refused so a compromised service cannot erase the record.
DENIED_JS_API = (
    "$JS.API.STREAM.DELETE.>",
    "$JS.API.STREAM.PURGE.>",
    "$JS.API.STREAM.MSG.DELETE.>",
)
# Stream layout is the provisioner's: services may neither create nor change a stream.
PROVISIONER_ONLY_JS_API = ("$JS.API.STREAM.CREATE.>", "$JS.API.STREAM.UPDATE.>")


def event_pattern(event: str) -> str:
    """The subject pattern of `event` across all plants (and stations)."""
    if event in subj.STATION_EVENTS:
        return subj.station_pattern(event)
    return subj.plant_pattern(event)


def permissions(user: str) -> dict[str, Any]:
    """NATS `permissions` block of `user` (see the module docstring)."""
    inbox = f"{inbox_prefix(user)}.>"
    if user == OPERATOR_USER:
        return {
            "publish": {
                "allow": [
                    "$JS.API.INFO",
                    "$JS.API.STREAM.NAMES",
                    "$JS.API.STREAM.LIST",
                    "$JS.API.STREAM.INFO.*",
                    "$JS.API.STREAM.MSG.GET.*",
                    "$JS.API.CONSUMER.NAMES.*",
                    "$JS.API.CONSUMER.LIST.*",
                    "$JS.API.CONSUMER.INFO.*.*",  # how far a service has read (the demo waits on it)
                ]
            },
            "subscribe": {"allow": [f"{subj.ROOT}.>", inbox]},
        }
    if user == PROVISIONER_USER:
        return {
            "publish": {
                "allow": [
                    "$JS.API.INFO",
                    "$JS.API.STREAM.NAMES",
                    "$JS.API.STREAM.LIST",
                    "$JS.API.STREAM.INFO.*",
                    "$JS.API.STREAM.CREATE.*",
                    "$JS.API.STREAM.UPDATE.*",
                    # Durable consumers (linesight.common.consumers): named create-or-update
                    # (CREATE.<stream>.<name>[.<filter>]) and reading them back.
                    "$JS.API.CONSUMER.CREATE.*.*",
                    "$JS.API.CONSUMER.CREATE.*.*.>",
                    "$JS.API.CONSUMER.INFO.*.*",
                ],
                "deny": list(DENIED_JS_API),
            },
            "subscribe": {"allow": [inbox]},
        }
    if user not in PUBLISHES:
        raise ValueError(f"unknown NATS user {user!r}; known: {', '.join(USERS)}")
    allow = [event_pattern(e) for e in PUBLISHES[user]]
    consumed = CONSUMES[user]
    allow += [f"{subj.DLQ_PREFIX}.{event_pattern(e)}" for e in consumed]
    streams = sorted({subj.stream_for_subject(event_pattern(e)).name for e in consumed})
    allow += [f"$JS.ACK.{s}.>" for s in streams] + [f"$JS.FC.{s}.>" for s in streams]
    # Read stream metadata (the start-up check that the provisioner's streams exist, finding a
    # subject's stream); consumers only on the streams it consumes: binding to the provisioner's
    # durable pull consumers (INFO, MSG.NEXT; never CREATE.<stream>.<name>, so no service can
    # rewrite another's consumer on a shared stream), creating unnamed ordered ones
    # (CREATE.<stream>; the server refuses a durable name there), and the last message of a
    # subject there (inference reads the newest model on start).
    allow += ["$JS.API.INFO", "$JS.API.STREAM.NAMES", "$JS.API.STREAM.INFO.*"]
    for s in streams:
        allow += [
            f"$JS.API.CONSUMER.CREATE.{s}",
            f"$JS.API.CONSUMER.INFO.{s}.*",
            f"$JS.API.CONSUMER.MSG.NEXT.{s}.*",
            f"$JS.API.STREAM.MSG.GET.{s}",
        ]
    return {
        "publish": {"allow": allow, "deny": [*DENIED_JS_API, *PROVISIONER_ONLY_JS_API]},
        "subscribe": {"allow": [inbox]},
    }


def permissions_document() -> dict[str, dict[str, Any]]:
    """Every user's permissions, as the Helm chart renders them into a NATS server's config
    (charts/linesight/files/nats-permissions.json, kept equal by a unit test)."""
    return {user: permissions(user) for user in USERS}


@dataclass(frozen=True)
class InstallationCredentials:
    """Secrets generated once per installation: a NATS password per user and the S3 key pair."""

    nats_passwords: Mapping[str, str]
    s3_access_key: str
    s3_secret_key: str

    def nats_password(self, user: str) -> str:
        try:
            return self.nats_passwords[user]
        except KeyError:
            raise ValueError(
                f"no NATS password for user {user!r} in the installation's credentials"
            ) from None


def _generate(existing: Mapping[str, Any] | None = None) -> dict[str, Any]:
    data = dict(existing or {})
    passwords = dict(data.get("nats", {}))
    for user in USERS:
        passwords.setdefault(user, secrets.token_urlsafe(24))
    data["nats"] = passwords
    data.setdefault("s3_access_key", "ls-" + secrets.token_hex(8))
    data.setdefault("s3_secret_key", secrets.token_urlsafe(30))
    return data


def _write_private(path: Path, text: str) -> None:
    """Write `text` to a new 0600 file next to `path`, then move it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".cred-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def load_or_create_credentials(state_dir: Path) -> InstallationCredentials:
    """The installation's secrets from `<state_dir>/auth/credentials.json`, generated on first use.

    A file missing a user (written by an older version) gets one added; existing secrets never
    change. Raises ValueError for a file that is not the expected JSON (it is never overwritten).
    """
    path = Path(state_dir).absolute() / CREDENTIALS_FILE
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    existing: dict[str, Any] | None = None
    if path.exists():
        try:
            existing = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON ({exc}); fix or delete it") from exc
        if not isinstance(existing, dict):
            raise ValueError(f"{path} does not hold a JSON object; fix or delete it")
    data = _generate(existing)
    if data != existing:
        _write_private(path, json.dumps(data, indent=2, sort_keys=True))
    return InstallationCredentials(
        nats_passwords=dict(data["nats"]),
        s3_access_key=str(data["s3_access_key"]),
        s3_secret_key=str(data["s3_secret_key"]),
    )


def with_installation_credentials(settings: Settings) -> Settings:
    """`settings` with the installation's S3 keys, unless the S3 keys were set explicitly."""
    explicit = {"s3_access_key", "s3_secret_key"} & settings.model_fields_set
    if explicit:
        return settings
    creds = load_or_create_credentials(settings.state_dir)
    return settings.model_copy(
        update={"s3_access_key": creds.s3_access_key, "s3_secret_key": creds.s3_secret_key}
    )


def settings_as(settings: Settings, user: str) -> Settings:
    """`settings` for a process that connects to the embedded NATS as `user` (a child service, or
    the CLI acting as one), with the installation's S3 keys; explicit NATS credentials win."""
    settings = with_installation_credentials(settings)
    if settings.nats_user:
        return settings
    creds = load_or_create_credentials(settings.state_dir)
    return settings.model_copy(update={"nats_user": user, "nats_password": creds.nats_password(user)})


def nats_user_env(state_dir: Path, user: str) -> dict[str, str]:
    """The LINESIGHT_NATS_* variables that make a child process connect as `user`."""
    creds = load_or_create_credentials(state_dir)
    return {"LINESIGHT_NATS_USER": user, "LINESIGHT_NATS_PASSWORD": creds.nats_password(user)}


def server_authorization(creds: InstallationCredentials) -> dict[str, Any]:
    """The NATS server's `authorization` block: these users only, no anonymous access."""
    users = [
        {"user": user, "password": creds.nats_password(user), "permissions": permissions(user)}
        for user in USERS
    ]
    return {"users": users}
