"""The architecture rules in pyproject.toml [tool.importlinter] hold, and they cover every service.

The contracts are checked by import-linter itself (the same `lint-imports` that `make lint` runs),
so a broken rule fails here with the contract's name and the offending import lines.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "services" / "linesight"
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
CONTRACTS: list[dict[str, Any]] = CONFIG["contracts"]
_LAYERS = {"common", "vision", "cli"}  # linesight packages that are not services (cli has a __main__)


def _contract(contract_id: str) -> dict[str, Any]:
    return next(c for c in CONTRACTS if c["id"] == contract_id)


def _services() -> list[str]:
    """Every service package: a runnable linesight.<name> that is neither a library nor the cli."""
    return sorted(p.parent.name for p in PACKAGE.glob("*/__main__.py") if p.parent.name not in _LAYERS)


@pytest.fixture(scope="module")
def lint_imports() -> tuple[str, dict[str, str]]:
    """One `lint-imports` run: its output and each contract's verdict (KEPT / BROKEN) by name."""
    exe = Path(sys.executable).with_name("lint-imports")
    assert exe.exists(), f"{exe} missing: install the dev extras (pip install -e '.[dev]')"
    assert (PACKAGE / "common" / "pb" / "__init__.py").exists(), (
        "generate protobuf code first (tools/gen_proto.py)"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "services"), os.environ.get("PYTHONPATH", "")]),
        "COLUMNS": "1000",  # one line per contract and per import, however long
    }
    proc = subprocess.run(
        [str(exe), str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    verdicts = dict(re.findall(r"^(.+?) (KEPT|BROKEN)$", out, flags=re.MULTILINE))
    assert verdicts, f"lint-imports checked no contract (exit {proc.returncode}):\n{out}"
    return out, verdicts


def _broken_section(out: str, name: str, others: list[str]) -> str:
    """The paragraph lint-imports prints under 'Broken contracts' for one contract."""
    _, _, details = out.partition("Broken contracts")
    start = details.find(f"\n{name}\n")
    if start < 0:
        return out
    rest = details[start + len(name) + 2 :]
    ends = [i for i in (rest.find(f"\n{other}\n") for other in others if other != name) if i >= 0]
    return rest[: min(ends)] if ends else rest


@pytest.mark.parametrize("contract", CONTRACTS, ids=[c["id"] for c in CONTRACTS])
def test_contract_is_kept(contract: dict[str, Any], lint_imports: tuple[str, dict[str, str]]) -> None:
    out, verdicts = lint_imports
    name = contract["name"]
    assert name in verdicts, f"lint-imports did not report contract {name!r}:\n{out}"
    assert verdicts[name] == "KEPT", (
        f"architecture contract {contract['id']!r} ({name}) is BROKEN:\n"
        + _broken_section(out, name, list(verdicts))
    )


def test_independence_covers_every_service() -> None:
    """A new service is independent of the others from its first commit."""
    listed = {m.removeprefix("linesight.") for m in _contract("services-independent")["modules"]}
    assert set(_services()) == listed


def test_app_contract_forbids_every_grpc_api() -> None:
    """Every gRPC API in proto/ (a file with a `service`) has its messages and stubs forbidden in app/."""
    forbidden = set(_contract("app-no-transport")["forbidden_modules"])
    apis = [
        p.stem for p in (ROOT / "proto" / "linesight" / "v1").glob("*.proto")
        if re.search(r"^service\s", p.read_text(), flags=re.MULTILINE)
    ]  # fmt: skip
    assert apis
    missing = {
        f"linesight.common.pb.{api}{suffix}" for api in apis for suffix in ("_pb2", "_pb2_grpc")
    } - forbidden
    assert not missing, f"app-no-transport does not forbid {sorted(missing)}"


def test_app_contracts_reach_every_service() -> None:
    """The `linesight.*.app` wildcard only checks services that have an app/ package."""
    assert _contract("app-no-transport")["source_modules"] == ["linesight.*.app"]
    without_app = [s for s in _services() if not (PACKAGE / s / "app" / "__init__.py").exists()]
    assert not without_app, f"services without app/: {without_app}"
