"""Settings for the embedded stack, with unknown `LINESIGHT_*` variables reported as errors.

pydantic-settings silently ignores environment variables it has no field for, even with
extra="forbid", so a typo such as LINESIGHT_NATS_PROT would quietly fall back to a default. The
stack checks the environment itself and refuses to start instead.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from linesight.common.settings import LIBRARY_SETTINGS, SCOPED_PREFIXES, Settings

PREFIX = "LINESIGHT_"


class SettingsError(ValueError):
    """Bad or unknown LINESIGHT_* configuration; the message names the variable and the fix."""


def known_env_vars() -> list[str]:
    return sorted(PREFIX + name.upper() for name in Settings.model_fields)


def unknown_env_vars(environ: Mapping[str, str] | None = None) -> list[str]:
    """LINESIGHT_* names that nothing reads (same rules as settings.check_environment).

    Library variables (LIBRARY_SETTINGS) and LINESIGHT_<SERVICE>_* (validated by that service's own
    settings class) are known.
    """
    env = os.environ if environ is None else environ
    known = set(known_env_vars()) | set(LIBRARY_SETTINGS)
    scoped = SCOPED_PREFIXES
    return sorted(
        k
        for k in env
        if k.upper().startswith(PREFIX) and k.upper() not in known and not k.upper().startswith(scoped)
    )


def load_settings(**overrides: Any) -> Settings:
    """Settings from os.environ plus explicit overrides (command-line flags win).

    Raises SettingsError for unknown LINESIGHT_* variables or values that do not validate.
    """
    unknown = unknown_env_vars()
    if unknown:
        known = known_env_vars()
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name.upper(), known, n=1)
            hints.append(f"  {name}" + (f" (did you mean {close[0]}?)" if close else ""))
        raise SettingsError(
            "unknown LINESIGHT_ environment variable(s):\n"
            + "\n".join(hints)
            + "\nUnset or rename them. Known variables: "
            + ", ".join(known)
        )
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{PREFIX}{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
        )
        raise SettingsError(f"invalid settings: {problems}") from None


def embedded_settings(*, triton: bool = False, **overrides: Any) -> Settings:
    """load_settings() for the embedded stack: endpoints not set explicitly follow the server ports.

    E.g. LINESIGHT_PG_PORT=25432 alone also moves pg_dsn to port 25432, so services find the server
    the stack starts. With `triton`, an empty triton_url points at the embedded Triton's gRPC port.
    """
    base = load_settings(**overrides)
    derived: dict[str, Any] = {}
    if "nats_url" not in base.model_fields_set:
        derived["nats_url"] = f"nats://{base.host}:{base.nats_port}"
    if "pg_dsn" not in base.model_fields_set:
        derived["pg_dsn"] = f"postgresql://linesight@{base.host}:{base.pg_port}/linesight"
    if "s3_endpoint" not in base.model_fields_set:
        derived["s3_endpoint"] = f"{base.host}:{base.s3_port}"
    if triton and not base.triton_url:
        derived["triton_url"] = f"{base.host}:{base.triton_grpc_port}"
    return load_settings(**overrides, **derived) if derived else base


def settings_env(settings: Settings) -> dict[str, str]:
    """The LINESIGHT_* variables that reproduce `settings` in a child process."""
    out: dict[str, str] = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if isinstance(value, dict | list):
            text = json.dumps(value)
        elif isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, Path):
            text = str(value.absolute())
        else:
            text = str(value)
        out[PREFIX + name.upper()] = text
    return out


def child_env(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ with every Settings variable replaced by the value in `settings`.

    Library and service-scoped LINESIGHT_* variables pass through unchanged.
    """
    fields = set(known_env_vars())
    env = {k: v for k, v in (os.environ if base is None else base).items() if k.upper() not in fields}
    env.update(settings_env(settings))
    return env
